"""MTA-STS (RFC 8461): a recipient domain's policy, found through DNS, fetched over
verified HTTPS, cached in memory and on disk.

The steps of RFC 8461 5.1, per domain and one at a time:
- the TXT record ``_mta-sts.<domain>`` (``v=STSv1; id=...``) says a policy exists and
  which version; exactly one such record, or none counts as published;
- a cached policy, not past its ``max_age``, with the same id is used as it is, and
  fetched again after a day so that ``max_age`` keeps being renewed;
- otherwise ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` is fetched: certificate
  verified against the configured CAs, no redirects (3.3), 64 KiB at most, a deadline
  for the whole fetch, ``text/plain``, status 200;
- a fetch that fails, or a TXT record that disappeared, leaves a valid cached policy in
  force: an attacker who blocks the HTTPS host or the DNS record gains nothing (5.1);
  after a failure the domain is not fetched again for five minutes.

The cache survives restarts (one JSON file per domain, written atomically), so that a
restart is no window for a downgrade.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import dns.asyncresolver
import httpx

from gateway.dns_lookup import LookupFailed, lookup, txt_text
from keys.safeio import atomic_write

log = logging.getLogger("sealpost.mta_sts")

Mode = Literal["enforce", "testing", "none"]
MAX_AGE_CEILING = 31_557_600  # one year (RFC 8461 3.2)
MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3
REFRESH_AFTER = 86_400.0  # refetch an unchanged policy daily to renew its max_age
RETRY_AFTER_FAILURE = 300.0
WELL_KNOWN = "/.well-known/mta-sts.txt"
_MODES: dict[str, Mode] = {"enforce": "enforce", "testing": "testing", "none": "none"}

_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})+")
_MX_PATTERN = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})+")


class PolicyError(Exception):
    """No usable policy: the fetch or the text failed; the message says which and why."""


@dataclass(frozen=True)
class Policy:
    mode: Mode
    mx: tuple[str, ...]
    max_age: int

    def allows(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)


@dataclass(frozen=True)
class Cached:
    id: str
    policy: Policy
    fetched_at: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.policy.max_age


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the TXT strings at ``_mta-sts.<domain>``, or None when there is
    no single valid STSv1 record (RFC 8461 3.1)."""
    candidates = [r for r in records if r.startswith("v=STSv1;") or r == "v=STSv1"]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if not part.strip():
            continue
        if not sep:
            return None
        fields.setdefault(key, value)
    found = fields.get("id", "")
    return found if _ID.fullmatch(found) else None


def parse_policy(text: str) -> Policy:
    """The policy file of RFC 8461 3.2; raises PolicyError saying what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise PolicyError(f"malformed line {line[:80]!r}")
        if key == "mx":
            pattern = value.lower().rstrip(".")
            if not _MX_PATTERN.fullmatch(pattern):
                raise PolicyError(f"malformed mx pattern {value[:80]!r}")
            mx.append(pattern)
        else:
            fields.setdefault(key, value)  # unknown keys are ignored (3.2)
    if fields.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = _MODES.get(fields.get("mode", ""))
    if mode is None:
        raise PolicyError(f"mode must be enforce, testing or none, not {fields.get('mode')!r}")
    age = fields.get("max_age", "")
    if not age.isascii() or not age.isdigit() or len(age) > 10:
        raise PolicyError(f"max_age must be a number of seconds, not {age[:20]!r}")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without any mx")
    return Policy(mode, tuple(mx), min(int(age), MAX_AGE_CEILING))


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: exact, or ``*.`` standing for exactly one leftmost label."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def ascii_domain(domain: str) -> str | None:
    """The domain as DNS spells it (A-labels), or None if it is not a domain name."""
    try:
        name = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    return name if _DOMAIN.fullmatch(name) else None


# -- fetching ---------------------------------------------------------------------------


class HttpsFetcher:
    """GETs a domain's policy. The host ``mta-sts.<domain>`` is resolved through the
    delivery resolver; the certificate is checked against that name whatever the address."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        context: ssl.SSLContext,
        timeout: float,
        *,
        port: int = 443,  # other than 443 only in tests
    ) -> None:
        self._resolver = resolver
        self._context = context
        self._timeout = timeout
        self._port = port

    async def __call__(self, domain: str) -> Policy:
        host = f"mta-sts.{domain}"
        try:
            async with asyncio.timeout(self._timeout):
                address = await self._address(host)
                body = await self._get(host, address)
        except TimeoutError:
            raise PolicyError(f"{host}: no policy within {self._timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise PolicyError(f"{host}: {type(exc).__name__}: {exc}") from exc
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"{host}: policy is not UTF-8") from None
        return parse_policy(text)

    async def _address(self, host: str) -> str:
        for rdtype in ("A", "AAAA"):
            try:
                found = await lookup(self._resolver, host, rdtype)
            except LookupFailed as exc:
                raise PolicyError(str(exc)) from exc
            if found.records:
                address = found.records[0].to_text()
                return f"[{address}]" if ":" in address else address
        raise PolicyError(f"{host} has no address")

    async def _get(self, host: str, address: str) -> bytes:
        authority = host if self._port == 443 else f"{host}:{self._port}"
        async with (
            httpx.AsyncClient(
                verify=self._context,
                follow_redirects=False,  # RFC 8461 3.3
                timeout=self._timeout,
                trust_env=False,
            ) as client,
            client.stream(
                "GET",
                f"https://{address}:{self._port}{WELL_KNOWN}",
                headers={"Host": authority, "Accept": "text/plain"},
                extensions={"sni_hostname": host},
            ) as response,
        ):
            if response.status_code != 200:
                raise PolicyError(f"{host} answered HTTP {response.status_code}")
            media_type = response.headers.get("content-type", "").partition(";")[0].strip()
            if media_type.lower() != "text/plain":
                raise PolicyError(f"{host} served {media_type or 'no media type'}, not text/plain")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_SIZE:
                    raise PolicyError(f"{host}: policy larger than {MAX_POLICY_SIZE} octets")
        return bytes(body)


# -- the cache --------------------------------------------------------------------------


class PolicyCache:
    """Policies by domain, in memory and as ``<directory>/<domain>.json``."""

    def __init__(self, directory: Path, *, persist: bool = True) -> None:
        self.directory = directory
        self._persist = persist  # False: read the files, never write them (the CLI)
        self._memory: dict[str, Cached | None] = {}

    def get(self, domain: str) -> Cached | None:
        if domain not in self._memory:
            self._memory[domain] = self._read(domain)
        return self._memory[domain]

    def put(self, domain: str, cached: Cached) -> None:
        self._memory[domain] = cached
        if not self._persist:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            data = json.dumps(asdict(cached), sort_keys=True).encode()
            atomic_write(self.directory / f"{domain}.json", data, 0o644)
        except OSError as exc:
            log.warning("event=mta_sts_cache_unwritable domain=%s error=%s", domain, exc)

    def _read(self, domain: str) -> Cached | None:
        path = self.directory / f"{domain}.json"
        try:
            raw = json.loads(path.read_bytes())
            p = raw["policy"]
            policy = Policy(_MODES[p["mode"]], tuple(map(str, p["mx"])), int(p["max_age"]))
            return Cached(str(raw["id"]), policy, float(raw["fetched_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("event=mta_sts_cache_unreadable path=%s error=%s", path, exc)
            return None


Fetcher = Callable[[str], Awaitable[Policy]]


class MtaSts:
    """The policy in force for a domain, by the steps in the module's docstring."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        cache: PolicyCache,
        fetcher: Fetcher,
        *,
        on_fetch: Callable[[str], None] = lambda result: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolver = resolver
        self._cache = cache
        self._fetch = fetcher
        self._on_fetch = on_fetch
        self._clock = clock
        self._retry_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The policy to apply to ``domain``, None when there is none (or mode none)."""
        name = ascii_domain(domain)
        if name is None:
            return None
        async with self._locks.setdefault(name, asyncio.Lock()):
            found = await self._current(name)
        return found.policy if found is not None and found.policy.mode != "none" else None

    async def _current(self, domain: str) -> Cached | None:
        now = self._clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expired(now):
            cached = None
        try:
            found = await lookup(self._resolver, f"_mta-sts.{domain}", "TXT")
        except LookupFailed as exc:
            log.info("event=mta_sts_txt_failed domain=%s error=%s", domain, exc)
            return cached
        policy_id = parse_txt([txt_text(r) for r in found.records])
        if policy_id is None:
            return cached
        fresh = cached is not None and now < cached.fetched_at + REFRESH_AFTER
        if cached is not None and cached.id == policy_id and fresh:
            return cached
        if now < self._retry_at.get(domain, 0.0):
            return cached
        try:
            policy = await self._fetch(domain)
        except Exception as exc:  # whatever a remote host breaks: the cached policy holds
            self._retry_at[domain] = now + RETRY_AFTER_FAILURE
            self._on_fetch("failed")
            reason = str(exc) if isinstance(exc, PolicyError) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "event=mta_sts_fetch_failed domain=%s cached=%s error=%s",
                domain,
                cached.id if cached else "none",
                reason,
            )
            return cached
        self._retry_at.pop(domain, None)
        self._on_fetch("fetched")
        fetched = Cached(policy_id, policy, now)
        self._cache.put(domain, fetched)
        log.info(
            "event=mta_sts_policy domain=%s id=%s mode=%s mx=%s max_age=%d",
            domain,
            policy_id,
            policy.mode,
            ",".join(policy.mx),
            policy.max_age,
        )
        return fetched

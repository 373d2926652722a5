"""DKIM DNS records: the TXT values (RFC 6376 3.6.1, RFC 8463), the zone-file lines ops
publish, and the `--check-dns` lookup that compares what DNS serves with the keys."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from keys.lifecycle import IN_DNS, DkimKey, Domain, State

# A TXT record is a sequence of character-strings of at most 255 bytes each (RFC 1035 3.3).
MAX_STRING = 255
DEFAULT_TIMEOUT = 5.0
# Explicit, so the lines paste into any zone (with or without $TTL); an hour bounds how long
# resolvers keep serving a key after it is revoked or replaced.
TTL = 3600


class DnsCheckFailed(Exception):
    """DNS does not serve the expected record for at least one key."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def public_value(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The p= value: RSA as DER SubjectPublicKeyInfo, Ed25519 as the raw 32 bytes (RFC 8463)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(der).decode("ascii")


def public_sha256(value: str) -> str:
    return hashlib.sha256(base64.b64decode(value)).hexdigest()


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def txt_value(key: DkimKey) -> str:
    """What must be published for `key` now; a revoked key keeps its record with an empty
    p=, which tells verifiers the key is revoked (RFC 6376 3.6.1)."""
    public = "" if key.state == State.REVOKED else key.public_key
    return f"v=DKIM1; k={key.algorithm}; p={public}"


def split_strings(value: str) -> list[str]:
    """Splits a TXT value into character-strings of at most 255 bytes; verifiers
    concatenate them without separator (RFC 6376 3.6.2.2). The values are ASCII."""
    data = value.encode("ascii")
    return [data[i : i + MAX_STRING].decode("ascii") for i in range(0, len(data), MAX_STRING)]


def zone_line(domain: str, key: DkimKey) -> str:
    strings = " ".join(f'"{part}"' for part in split_strings(txt_value(key)))
    return f"{record_name(domain, key.selector)}. {TTL} IN TXT {strings}"


def published_keys(domain: Domain) -> list[DkimKey]:
    return [key for g in domain.generations for key in g.dkim if key.state in IN_DNS]


def zone_lines(domain: Domain) -> list[str]:
    """Exactly what must be in DNS now for `domain`, one commented record per key."""
    lines = [f"; DKIM records for {domain.name}: publish exactly these, remove any other"]
    for key in published_keys(domain):
        lines.append(f"; {key.selector}: {key.algorithm}, {key.state} since {_time(key)}")
        lines.append(zone_line(domain.name, key))
    return lines


def _time(key: DkimKey) -> str:
    return key.since.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_tags(value: str) -> dict[str, str]:
    """A DKIM tag=value list (RFC 6376 3.2); whitespace inside values is not significant
    for p=, so it is removed."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        name, sep, content = part.partition("=")
        if not sep:
            raise ValueError(f"malformed tag {part.strip()!r}")
        tags[name.strip()] = "".join(content.split())
    return tags


@dataclass(frozen=True)
class Resolver:
    address: str
    port: int = 53


def parse_resolver(text: str) -> Resolver:
    """IP, IP:PORT, or [IPv6]:PORT."""
    host, port = text.strip(), 53
    if host.startswith("["):
        inside, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed resolver address {text!r}")
        host = inside
        if rest:
            port = _port(rest[1:], text)
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = _port(port_text, text)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"resolver {text!r} is not an IP address[:port]") from exc
    return Resolver(host, port)


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"malformed port in resolver address {text!r}")
    return int(value)


def _lookup(resolver: dns.resolver.Resolver, name: str) -> list[str] | str:
    """The TXT values at `name` (strings joined), or a description of why there are none."""
    try:
        answer = resolver.resolve(name, "TXT", search=False)
    except dns.resolver.NXDOMAIN:
        return f"{name} does not exist (NXDOMAIN)"
    except dns.resolver.NoAnswer:
        return f"{name} has no TXT record"
    except dns.exception.Timeout:
        return f"no answer for {name} within {resolver.lifetime:g} s"
    except dns.exception.DNSException as exc:
        return f"lookup of {name} failed: {exc}"
    values = []
    for rdata in answer:
        strings: Iterable[bytes] = getattr(rdata, "strings", ())
        values.append(b"".join(strings).decode("ascii", "replace"))
    return values


def check_published(
    domain: str,
    keys: Iterable[DkimKey],
    resolver: Resolver | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Raises DnsCheckFailed unless DNS serves, for every key, a TXT record with the same
    k= and p=. `resolver` None means the system's resolver."""
    if resolver is None:
        client = dns.resolver.Resolver()
    else:
        client = dns.resolver.Resolver(configure=False)
        client.nameservers = [resolver.address]
        client.port = resolver.port
    client.lifetime = timeout
    problems = []
    for key in keys:
        name = record_name(domain, key.selector)
        found = _lookup(client, name)
        if isinstance(found, str):
            problems.append(found)
            continue
        if not any(_matches(value, key) for value in found):
            problems.append(
                f"{name} serves {len(found)} TXT record(s) but none with k={key.algorithm} "
                f"and the p= of {key.selector} (sha256 {public_sha256(key.public_key)[:16]}...)"
            )
    if problems:
        raise DnsCheckFailed(problems)


def _matches(value: str, key: DkimKey) -> bool:
    try:
        tags = parse_tags(value)
    except ValueError:
        return False
    return (
        tags.get("v", "DKIM1") == "DKIM1"
        and tags.get("k", "rsa") == key.algorithm
        and tags.get("p") == key.public_key
    )

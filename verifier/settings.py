"""Verifier settings: defaults, then environment overrides, validated once at start-up.

Components receive plain values (a `Limits`, a directory), never the environment.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "SEALPOST_VERIFIER_"
# Room for the multipart framing around a file of the maximum size: what a form upload
# may hold in memory beyond `max_upload_bytes`.
FORM_OVERHEAD = 64 * 1024


class SettingsError(ValueError):
    """A setting has a value we cannot use."""


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_mime_depth: int = 12
    max_mime_parts: int = 200
    max_documents: int = 50
    # How many forwards we open to find the fund's message inside.
    max_forward_depth: int = 3
    # Time bounds on uploads, as Apache's mod_reqtimeout "header=20 body=10,MinRate=1000":
    # a connection that trickles bytes must not hold a slot (and memory) for ever.
    header_timeout_seconds: int = 20
    body_timeout_seconds: int = 10
    body_min_rate: int = 1000  # bytes/s; each such amount received extends the deadline 1 s
    # Upload bytes held at once in one process, reserved before a body is read.
    # Three uploads of the largest size at once: a slow client cannot hold much more.
    upload_memory_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    archive_dir: Path = Path("var/public")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    rate_limit_per_minute: int = 30  # 0 turns the limit off (benchmarks, trusted networks)
    # An organisation's API clients (Bearer token) share this quota instead.
    org_rate_limit_per_minute: int = 600
    orgs_registry: Path = Path("var/orgs/registry.sqlite")
    # Peers whose X-Forwarded-For / Forwarded header names the client (networks, CIDR).
    trusted_proxies: tuple[str, ...] = ()
    proxy_header: str = "x-forwarded-for"
    # Where the worker processes share their rate-limit windows and metrics; "" is a
    # private directory the launcher makes and removes.
    runtime_dir: str = ""
    metrics_listen: str = "127.0.0.1:9190"
    limits: Limits = field(default_factory=Limits)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} is not a whole number") from exc
    if value < minimum:
        raise SettingsError(f"{ENV_PREFIX}{name} must be at least {minimum}")
    return value


PROXY_HEADERS = ("x-forwarded-for", "forwarded")


def networks(text: str, name: str = "TRUSTED_PROXIES") -> tuple[str, ...]:
    """Comma-separated addresses or networks, each as its network in CIDR form."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as exc:
            problem = f"{ENV_PREFIX}{name}: {item!r} is not an address or network"
            raise SettingsError(problem) from exc
    return tuple(found)


def proxy_header(text: str) -> str:
    value = text.strip().lower()
    if value not in PROXY_HEADERS:
        raise SettingsError(f"{ENV_PREFIX}PROXY_HEADER must be one of {', '.join(PROXY_HEADERS)}")
    return value


def listen_address(text: str) -> str:
    """`host:port` (`[v6]:port`), or "" for off."""
    if text == "":
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"{ENV_PREFIX}METRICS_LISTEN={text!r} is not host:port (or empty)")
    return text


def split_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from SEALPOST_VERIFIER_* variables, each falling back to its default."""
    env = os.environ if env is None else env
    base = Settings()
    lim = Limits()
    settings = Settings(
        archive_dir=Path(env.get(ENV_PREFIX + "ARCHIVE_DIR") or base.archive_dir),
        host=env.get(ENV_PREFIX + "HOST") or base.host,
        port=_int(env, "PORT", base.port, 0),
        workers=_int(env, "WORKERS", base.workers, 1),
        rate_limit_per_minute=_int(env, "RATE_LIMIT", base.rate_limit_per_minute, 0),
        org_rate_limit_per_minute=_int(env, "ORG_RATE_LIMIT", base.org_rate_limit_per_minute, 0),
        orgs_registry=Path(env.get(ENV_PREFIX + "ORGS_REGISTRY") or base.orgs_registry),
        trusted_proxies=networks(env.get(ENV_PREFIX + "TRUSTED_PROXIES", "")),
        proxy_header=proxy_header(env.get(ENV_PREFIX + "PROXY_HEADER") or base.proxy_header),
        runtime_dir=env.get(ENV_PREFIX + "RUNTIME_DIR", base.runtime_dir),
        metrics_listen=listen_address(env.get(ENV_PREFIX + "METRICS_LISTEN", base.metrics_listen)),
        limits=Limits(
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", lim.max_upload_bytes, 1024),
            max_mime_depth=_int(env, "MAX_MIME_DEPTH", lim.max_mime_depth, 1),
            max_mime_parts=_int(env, "MAX_MIME_PARTS", lim.max_mime_parts, 1),
            max_documents=_int(env, "MAX_DOCUMENTS", lim.max_documents, 1),
            max_forward_depth=_int(env, "MAX_FORWARD_DEPTH", lim.max_forward_depth, 0),
            header_timeout_seconds=_int(env, "HEADER_TIMEOUT", lim.header_timeout_seconds, 1),
            body_timeout_seconds=_int(env, "BODY_TIMEOUT", lim.body_timeout_seconds, 1),
            body_min_rate=_int(env, "BODY_MIN_RATE", lim.body_min_rate, 1),
            upload_memory_bytes=_int(env, "UPLOAD_MEMORY_BYTES", lim.upload_memory_bytes, 0),
        ),
    )
    _check_upload_memory(settings.limits)
    return settings


def _check_upload_memory(lim: Limits) -> None:
    # A smaller budget would answer 503 to every upload of the maximum size, for ever.
    needed = lim.max_upload_bytes + FORM_OVERHEAD
    if lim.upload_memory_bytes < needed:
        raise SettingsError(
            f"{ENV_PREFIX}UPLOAD_MEMORY_BYTES must be at least {needed} "
            f"({ENV_PREFIX}MAX_UPLOAD_BYTES plus {FORM_OVERHEAD} for the form around it)"
        )


def to_env(settings: Settings) -> dict[str, str]:
    """The inverse of `from_env`: how the launcher hands settings to uvicorn's workers."""
    lim = settings.limits
    values = {
        "ARCHIVE_DIR": str(settings.archive_dir),
        "HOST": settings.host,
        "PORT": str(settings.port),
        "WORKERS": str(settings.workers),
        "RATE_LIMIT": str(settings.rate_limit_per_minute),
        "ORG_RATE_LIMIT": str(settings.org_rate_limit_per_minute),
        "ORGS_REGISTRY": str(settings.orgs_registry),
        "TRUSTED_PROXIES": ",".join(settings.trusted_proxies),
        "PROXY_HEADER": settings.proxy_header,
        "RUNTIME_DIR": settings.runtime_dir,
        "METRICS_LISTEN": settings.metrics_listen,
        "MAX_UPLOAD_BYTES": str(lim.max_upload_bytes),
        "MAX_MIME_DEPTH": str(lim.max_mime_depth),
        "MAX_MIME_PARTS": str(lim.max_mime_parts),
        "MAX_DOCUMENTS": str(lim.max_documents),
        "MAX_FORWARD_DEPTH": str(lim.max_forward_depth),
        "HEADER_TIMEOUT": str(lim.header_timeout_seconds),
        "BODY_TIMEOUT": str(lim.body_timeout_seconds),
        "BODY_MIN_RATE": str(lim.body_min_rate),
        "UPLOAD_MEMORY_BYTES": str(lim.upload_memory_bytes),
    }
    return {ENV_PREFIX + k: v for k, v in values.items()}

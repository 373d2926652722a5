"""The gateway's settings: one TOML file, environment overrides, validated once at start-up.

Precedence: built-in defaults, then the TOML file (``--config FILE``), then environment
variables. Every setting has a default, so no file at all gives the embedded default that
``make run`` starts (key store ``var/keys``, spool ``var/spool``, delivery into the
Maildir ``var/outbox``, relay on 127.0.0.1:2525 for loopback, submission on
127.0.0.1:2587, metrics on 127.0.0.1:9125).

Environment overrides (for containers): ``SEALPOST_GATEWAY_<SECTION>_<KEY>`` sets ``key``
in ``[section]``; section names contain no underscore, so the first underscore after the
section ends it (``SEALPOST_GATEWAY_LIMITS_MAX_RECIPIENTS=50``,
``SEALPOST_GATEWAY_RELAY_LISTEN=0.0.0.0:25``). Integers, decimals and booleans
(true/false/yes/no/on/off/1/0) are written plainly; lists are comma-separated. The
``[[clients]]`` array cannot be set from the environment. An unknown variable with the
prefix is an error, so a typo never silently leaves a default in place.

Relative paths are relative to the working directory. Client passwords are stored only
as scrypt hashes (see `hash_password`), never in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from keys.dns import parse_resolver

ENV_PREFIX = "SEALPOST_GATEWAY_"
DEFAULT_DOMAIN = "caisses.example"
MAX_LINE_LENGTH = 998  # RFC 5322 2.1.1, without the CRLF

# scrypt cost: about 50 ms and 16 MiB per check on this kind of machine, which makes a
# stolen config expensive to brute-force while staying cheap for a handful of logins.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024

LOG_LEVELS = ("debug", "info", "warning", "error")
DELIVERY_ROUTES = ("maildir", "smarthost", "mx")
SMARTHOST_TLS = ("required", "opportunistic")
ORGS_UNREGISTERED = ("refuse", "warn")
_SECRET_WORDS = ("password", "passphrase", "secret")

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem found, one per line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class GatewaySettings:
    hostname: str = ""  # banner and EHLO name; "" means this machine's host name
    log_level: str = "info"
    shutdown_grace: float = 30.0  # seconds sessions may take to finish on SIGTERM
    # SMTP processes sharing the listening ports, one per core (gateway/lanes.py).
    lanes: int = 1


@dataclass(frozen=True)
class ListenerSettings:
    listen: str = ""  # "host:port"; "" turns the listener off
    # Expect a PROXY protocol header (HAProxy) within this many seconds; 0 means no PROXY.
    proxy_protocol_timeout: float = 0.0


@dataclass(frozen=True)
class TlsSettings:
    certificate: str = "var/tls/cert.pem"
    key: str = "var/tls/key.pem"
    # When neither file exists, make a self-signed pair there (the embedded default).
    self_signed: bool = True


@dataclass(frozen=True)
class LimitsSettings:
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_ip: int = 100
    command_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: at least 5 minutes
    data_timeout: float = 600.0  # for the whole DATA transfer, RFC 5321 4.5.3.2.6
    max_line_length: int = MAX_LINE_LENGTH
    # NOOP, RSET, VRFY, EXPN, HELP, EHLO, HELO, STARTTLS and refused MAIL/RCPT allowed per
    # message (Postfix's smtpd_junk_command_limit); past it, 421 4.7.0 and a close.
    max_junk_commands: int = 100
    # 4xx/5xx replies allowed before a message is accepted (Postfix's
    # smtpd_hard_error_limit); past it, 421 4.7.0 and a close. 0: no limit.
    max_errors: int = 20
    # Seconds a client has to finish its TLS handshake: on smtps from accept (the
    # connection counts against max_connections from then), after STARTTLS from the 220.
    tls_handshake_timeout: float = 30.0
    auth_failure_delay: float = 1.0  # seconds before a failed AUTH is answered
    auth_max_failures_per_ip: int = 5
    auth_max_failures_per_user: int = 10
    auth_lockout: float = 900.0  # seconds an IP or user stays locked out


@dataclass(frozen=True)
class KeysSettings:
    store: str = "var/keys"
    public_archive: str = "var/public"
    # Initialise the store for this domain on first start when it is absent; "" never does.
    init_domain: str = DEFAULT_DOMAIN
    # The store's passphrase comes from keys/ (SEALPOST_KEYS_PASSPHRASE, or its file), never
    # from this file.


@dataclass(frozen=True)
class SealingSettings:
    workers: int = 2  # sealing processes; 0 seals inline in the SMTP process
    content_types: tuple[str, ...] = ("application/pdf",)
    filename_globs: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpoolSettings:
    path: str = "var/spool"


@dataclass(frozen=True)
class DeliverySettings:
    route: str = "maildir"  # maildir | smarthost | mx
    maildir: str = "var/outbox"
    smarthost: str = ""  # "host:port"
    smarthost_tls: str = "required"  # required | opportunistic
    smarthost_username: str = ""
    smarthost_password: str = ""
    # Destination domains (e.g. the insurers') that get verified TLS or no delivery at all.
    tls_required_domains: tuple[str, ...] = ()
    first_retry: float = 60.0
    max_retry_interval: float = 3600.0
    max_lifetime: float = 5 * 86400.0
    concurrency_per_destination: int = 10
    # A next hop failing at the connection level gets one probe connection this often;
    # the rest of its queue waits for it (Postfix's dead-destination throttle).
    probe_interval: float = 60.0
    # A pooled SMTP session idle this long is closed with QUIT.
    idle_timeout: float = 30.0
    # On the mx route: MTA-STS (RFC 8461) and DANE (RFC 7672) policies (gateway/tls_policy.py).
    mta_sts: bool = True
    dane: bool = True
    # Where fetched MTA-STS policies are kept across restarts; "" means <spool.path>/mta-sts.
    mta_sts_cache: str = ""
    mta_sts_fetch_timeout: float = 10.0
    # CA certificates (PEM) for every verified TLS: MTA-STS fetches, MX hosts under an MTA-STS
    # policy, tls_required_domains, a required smarthost; "" means the system's.
    tls_ca_file: str = ""
    # DNS resolver for MX, address, TLSA and MTA-STS lookups, "IP[:port]"; "" means the
    # system's. DANE trusts its AD bit: make it a validating resolver on this host.
    resolver: str = ""


@dataclass(frozen=True)
class LogSettings:
    """This node's statement log (tlog/): every seal gets an entry, committed with the
    message; delivery waits until a published checkpoint covers it."""

    # The log's private key (`sealpost-keys log-key`); "" turns the log off.
    key: str = "var/log.key"
    # Integrate waiting entries and publish a checkpoint at most this often (seconds).
    interval: float = 0.25
    # Keep a checkpoint (checkpoints/<size>) and have it timestamped at most this often.
    stamp_interval: float = 10.0
    # An RFC 3161 Time-Stamp Authority for every checkpoint; "" for none.
    tsa_url: str = ""
    tsa_timeout: float = 10.0


@dataclass(frozen=True)
class OrgsSettings:
    """The registry of insurers (orgs/, `sealpost-orgs`), read for every transaction."""

    # Its file, shared with `sealpost-orgs` (same default); "" turns the insurer rules off.
    registry: str = "var/orgs/registry.sqlite"
    # A statement to an insurer's domain but not to its registered mailboxes, or mail to an
    # ended insurer's mailboxes: "refuse" (550 5.7.1) or "warn" (deliver, log, count).
    unregistered: str = "refuse"


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1:9125"  # "" turns the metrics endpoint off


@dataclass(frozen=True)
class ClientSettings:
    """One internal system allowed to send through the gateway."""

    name: str
    # scrypt hash from `sealpost-gateway hash-password`; "" means this client cannot AUTH.
    password_hash: str = ""
    # Networks (CIDR) from which this client may relay without AUTH.
    networks: tuple[str, ...] = ()
    # Domains this client may use in the envelope sender and the From header.
    sender_domains: tuple[str, ...] = ()


def _default_clients() -> tuple[ClientSettings, ...]:
    return (
        ClientSettings(
            name="loopback",
            networks=("127.0.0.0/8", "::1/128"),
            sender_domains=(DEFAULT_DOMAIN,),
        ),
    )


@dataclass(frozen=True)
class Settings:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    relay: ListenerSettings = field(default_factory=lambda: ListenerSettings("127.0.0.1:2525"))
    submission: ListenerSettings = field(default_factory=lambda: ListenerSettings("127.0.0.1:2587"))
    smtps: ListenerSettings = field(default_factory=ListenerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    keys: KeysSettings = field(default_factory=KeysSettings)
    sealing: SealingSettings = field(default_factory=SealingSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    log: LogSettings = field(default_factory=LogSettings)
    orgs: OrgsSettings = field(default_factory=OrgsSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    clients: tuple[ClientSettings, ...] = field(default_factory=_default_clients)


# ---------------------------------------------------------------------------- loading


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the file, then the environment; raises ConfigError listing every
    problem."""
    raw: dict[str, Any] = {}
    errors: list[str] = []
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    _apply_environment(raw, os.environ if environ is None else environ, errors)
    settings = _build(Settings, raw, "", errors)
    if settings is not None:
        errors.extend(validate(settings))
    if errors or settings is None:
        raise ConfigError(errors)
    return settings


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Settings)
    return {f.name: hints[f.name] for f in fields(Settings) if is_dataclass(hints[f.name])}


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str], errors: list[str]) -> None:
    sections = _section_types()
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections:
            errors.append(f"{name}: no section [{section}] (sections: {', '.join(sections)})")
            continue
        hints = get_type_hints(sections[section])
        if key not in hints:
            errors.append(f"{name}: [{section}] has no setting {key!r}")
            continue
        try:
            value = _parse_env_value(environ[name], hints[key])
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
            continue
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            errors.append(f"{name}: [{section}] in the file is not a table")
            continue
        target[key] = value


def _parse_env_value(text: str, kind: Any) -> object:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if get_origin(kind) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _describe(kind: Any) -> str:
    if get_origin(kind) is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, str(kind)
    )


def _convert(
    value: object, kind: Any, where: str, errors: list[str], base: object = None
) -> object:
    if is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a table")
            return None
        return _build(kind, value, where, errors, base)
    if get_origin(kind) is tuple:
        (item_kind, _ellipsis) = get_args(kind)
        if not isinstance(value, list):
            errors.append(f"{where}: expected {_describe(kind)}, got {value!r}")
            return None
        items = [_convert(item, item_kind, f"{where}[{i}]", errors) for i, item in enumerate(value)]
        return tuple(items)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        errors.append(f"{where}: expected an integer, got {value!r}")
        return None
    if isinstance(kind, type) and isinstance(value, kind):
        return value
    errors.append(f"{where}: expected {_describe(kind)}, got {value!r}")
    return None


def _field_default(f: Field[Any]) -> object:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def _build(
    cls: type[T], data: dict[str, Any], where: str, errors: list[str], base: object = None
) -> T | None:
    """`cls` from a table; keys the table leaves out keep their value in `base` (the field's
    own default, so `[relay]` with only a timeout keeps the relay's default address) or,
    without a base, the class default."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    before = len(errors)
    for key in data:
        if key not in names:
            place = f"{where}.{key}" if where else key
            errors.append(f"{place}: unknown setting")
    values: dict[str, object] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        place = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            values[f.name] = _convert(data[f.name], hints[f.name], place, errors, _field_default(f))
        elif f.default is MISSING and f.default_factory is MISSING:
            errors.append(f"{place}: required")
    if len(errors) > before:
        return None
    if isinstance(base, cls):
        return replace(base, **values)  # type: ignore[type-var]
    return cls(**values)


# ---------------------------------------------------------------------------- validation


def parse_listen(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def validate(settings: Settings) -> list[str]:
    """Checks across values; each problem is one readable line."""
    errors: list[str] = []
    s = settings
    if s.gateway.log_level not in LOG_LEVELS:
        errors.append(f"gateway.log_level: one of {', '.join(LOG_LEVELS)}")
    if s.gateway.shutdown_grace < 0:
        errors.append("gateway.shutdown_grace: must be 0 or more")
    if not 1 <= s.gateway.lanes <= 64:
        errors.append("gateway.lanes: from 1 to 64")
    listeners = {"relay": s.relay, "submission": s.submission, "smtps": s.smtps}
    for name, listener in listeners.items():
        if listener.listen:
            _check(errors, f"{name}.listen", parse_listen, listener.listen)
        if listener.proxy_protocol_timeout < 0:
            errors.append(f"{name}.proxy_protocol_timeout: must be 0 (off) or more")
    if not any(listener.listen for listener in listeners.values()):
        errors.append("relay, submission, smtps: at least one listener must be on")
    if s.metrics.listen:
        _check(errors, "metrics.listen", parse_listen, s.metrics.listen)
    if not 0.05 <= s.log.interval <= 60:
        errors.append("log.interval: from 0.05 to 60 seconds (recipients wait for it)")
    if not 1 <= s.log.stamp_interval <= 86400:
        errors.append("log.stamp_interval: from 1 to 86400 seconds")
    if s.log.tsa_timeout <= 0:
        errors.append("log.tsa_timeout: must be more than 0 seconds")
    if s.log.tsa_url and not s.log.tsa_url.startswith(("http://", "https://")):
        errors.append("log.tsa_url: an http:// or https:// URL")
    tls_needed = bool(s.submission.listen or s.smtps.listen)
    if tls_needed and not s.tls.self_signed:
        for name, value in (("certificate", s.tls.certificate), ("key", s.tls.key)):
            if not Path(value).is_file():
                errors.append(f"tls.{name}: no file {value!r} (and tls.self_signed is false)")
    for name in (
        "max_message_size",
        "max_recipients",
        "max_connections",
        "max_connections_per_ip",
        "auth_max_failures_per_ip",
        "auth_max_failures_per_user",
        "max_junk_commands",
    ):
        if getattr(s.limits, name) < 1:
            errors.append(f"limits.{name}: must be 1 or more")
    if s.limits.max_errors < 0:
        errors.append("limits.max_errors: must be 0 (no limit) or more")
    for name in ("command_timeout", "data_timeout", "auth_lockout", "tls_handshake_timeout"):
        if getattr(s.limits, name) <= 0:
            errors.append(f"limits.{name}: must be more than 0 seconds")
    if s.limits.auth_failure_delay < 0:
        errors.append("limits.auth_failure_delay: must be 0 or more")
    if not 78 <= s.limits.max_line_length <= MAX_LINE_LENGTH:
        errors.append(f"limits.max_line_length: must be from 78 to {MAX_LINE_LENGTH}")
    if s.limits.max_connections_per_ip > s.limits.max_connections:
        errors.append("limits.max_connections_per_ip: cannot exceed limits.max_connections")
    if s.sealing.workers < 0:
        errors.append("sealing.workers: must be 0 (seal inline) or more")
    if not s.sealing.content_types and not s.sealing.filename_globs:
        errors.append("sealing: content_types and filename_globs are both empty")
    if s.delivery.route not in DELIVERY_ROUTES:
        errors.append(f"delivery.route: one of {', '.join(DELIVERY_ROUTES)}")
    if s.delivery.route == "smarthost":
        if not s.delivery.smarthost:
            errors.append("delivery.smarthost: required when delivery.route is smarthost")
        else:
            _check(errors, "delivery.smarthost", parse_listen, s.delivery.smarthost)
    if s.delivery.smarthost_tls not in SMARTHOST_TLS:
        errors.append(f"delivery.smarthost_tls: one of {', '.join(SMARTHOST_TLS)}")
    if s.delivery.smarthost_password and not s.delivery.smarthost_username:
        errors.append("delivery.smarthost_password: set, but smarthost_username is empty")
    for name in (
        "first_retry",
        "max_retry_interval",
        "max_lifetime",
        "probe_interval",
        "idle_timeout",
    ):
        if getattr(s.delivery, name) <= 0:
            errors.append(f"delivery.{name}: must be more than 0 seconds")
    if s.orgs.unregistered not in ORGS_UNREGISTERED:
        errors.append(f"orgs.unregistered: one of {', '.join(ORGS_UNREGISTERED)}")
    if s.delivery.concurrency_per_destination < 1:
        errors.append("delivery.concurrency_per_destination: must be 1 or more")
    if s.delivery.mta_sts_fetch_timeout <= 0:
        errors.append("delivery.mta_sts_fetch_timeout: must be more than 0 seconds")
    if s.delivery.resolver:
        _check(errors, "delivery.resolver", parse_resolver, s.delivery.resolver)
    if s.delivery.tls_ca_file and not Path(s.delivery.tls_ca_file).is_file():
        errors.append(f"delivery.tls_ca_file: no file {s.delivery.tls_ca_file!r}")
    errors.extend(_validate_clients(s.clients))
    return errors


def _validate_clients(clients: tuple[ClientSettings, ...]) -> list[str]:
    errors: list[str] = []
    seen: set[str] = set()
    for i, client in enumerate(clients):
        where = f"clients[{i}] ({client.name or 'no name'})"
        if not client.name or any(ch.isspace() or ch == ":" for ch in client.name):
            errors.append(f"{where}.name: a non-empty name without spaces or ':'")
        if client.name in seen:
            errors.append(f"{where}.name: used twice")
        seen.add(client.name)
        if not client.password_hash and not client.networks:
            errors.append(f"{where}: needs a password_hash, networks, or both")
        if client.password_hash:
            _check(errors, f"{where}.password_hash", parse_password_hash, client.password_hash)
        for network in client.networks:
            _check(errors, f"{where}.networks", _parse_network, network)
        if not client.sender_domains:
            errors.append(f"{where}.sender_domains: at least one domain")
    return errors


def _parse_network(text: str) -> object:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"not a network in CIDR form: {exc}") from None


def _check(errors: list[str], where: str, parse: Any, value: str) -> None:
    try:
        parse(value)
    except ValueError as exc:
        errors.append(f"{where}: {exc}")


# ---------------------------------------------------------------------------- passwords


@dataclass(frozen=True)
class PasswordHash:
    """``scrypt$<n>$<r>$<p>$<salt, base64>$<key, base64>`` (standard base64, 32-byte key)."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def parse_password_hash(text: str) -> PasswordHash:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected scrypt$N$r$p$salt$key (from sealpost-gateway hash-password)")
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("malformed scrypt hash (numbers or base64)") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or len(salt) < 16 or len(key) < 16:
        raise ValueError("scrypt parameters or lengths out of range")
    if 128 * n * r > _SCRYPT_MAXMEM // 2:
        raise ValueError("scrypt parameters need too much memory")
    return PasswordHash(n, r, p, salt, key)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = _scrypt(password.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, 32)
    encoded = [base64.b64encode(part).decode("ascii") for part in (salt, key)]
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encoded[0]}${encoded[1]}"


def verify_password(stored: PasswordHash, password: bytes) -> bool:
    """CPU-bound (about 50 ms): callers in the event loop run it in a thread."""
    key = _scrypt(password, stored.salt, stored.n, stored.r, stored.p, len(stored.key))
    return hmac.compare_digest(key, stored.key)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=length)


# ---------------------------------------------------------------------------- display


def render(settings: Settings) -> str:
    """The effective settings as TOML, secrets masked."""
    lines: list[str] = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            for client in value:
                lines.extend(["", f"[[{f.name}]]", *_render_table(client)])
        else:
            lines.extend(["", f"[{f.name}]", *_render_table(value)])
    return "\n".join(lines).lstrip("\n") + "\n"


def _render_table(table: Any) -> list[str]:
    out = []
    for f in fields(table):
        value = getattr(table, f.name)
        if value and any(word in f.name for word in _SECRET_WORDS):
            value = "********"
        out.append(f"{f.name} = {_render_value(value)}")
    return out


def _render_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_render_value(item) for item in value) + "]"
    # A JSON string of printable text is also a TOML basic string.
    return json.dumps(value, ensure_ascii=False)


__all__ = [
    "ClientSettings",
    "ConfigError",
    "Settings",
    "hash_password",
    "load",
    "parse_listen",
    "parse_password_hash",
    "render",
    "validate",
    "verify_password",
]

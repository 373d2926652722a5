"""Verifier settings: defaults, then environment overrides, validated once at start-up.

Components receive plain values (a `Limits`, a directory), never the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "SEALPOST_VERIFIER_"


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


@dataclass(frozen=True)
class Settings:
    archive_dir: Path = Path("var/public")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    rate_limit_per_minute: int = 30  # 0 turns the limit off (benchmarks, trusted networks)
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


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from SEALPOST_VERIFIER_* variables, each falling back to its default."""
    env = os.environ if env is None else env
    base = Settings()
    lim = Limits()
    return Settings(
        archive_dir=Path(env.get(ENV_PREFIX + "ARCHIVE_DIR") or base.archive_dir),
        host=env.get(ENV_PREFIX + "HOST") or base.host,
        port=_int(env, "PORT", base.port, 0),
        workers=_int(env, "WORKERS", base.workers, 1),
        rate_limit_per_minute=_int(env, "RATE_LIMIT", base.rate_limit_per_minute, 0),
        limits=Limits(
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", lim.max_upload_bytes, 1024),
            max_mime_depth=_int(env, "MAX_MIME_DEPTH", lim.max_mime_depth, 1),
            max_mime_parts=_int(env, "MAX_MIME_PARTS", lim.max_mime_parts, 1),
            max_documents=_int(env, "MAX_DOCUMENTS", lim.max_documents, 1),
            max_forward_depth=_int(env, "MAX_FORWARD_DEPTH", lim.max_forward_depth, 0),
        ),
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
        "MAX_UPLOAD_BYTES": str(lim.max_upload_bytes),
        "MAX_MIME_DEPTH": str(lim.max_mime_depth),
        "MAX_MIME_PARTS": str(lim.max_mime_parts),
        "MAX_DOCUMENTS": str(lim.max_documents),
        "MAX_FORWARD_DEPTH": str(lim.max_forward_depth),
    }
    return {ENV_PREFIX + k: v for k, v in values.items()}

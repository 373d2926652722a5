"""The registry's audit log: one JSON line per operation, in the key store's format (`at`,
`operation`, `outcome` ok|refused|failed, `user`, `pid`, then identifiers). Never a token:
a token's id names it."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_MODE = 0o600


def audit_path(registry: Path) -> Path:
    """`registry.sqlite` -> `registry.audit.log`, beside it."""
    return registry.with_suffix(".audit.log")


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def append(path: Path, operation: str, outcome: str, **details: Any) -> None:
    """Appends one line; O_APPEND keeps lines whole when two commands write at once."""
    record = {
        "at": format_time(dt.datetime.now(dt.UTC)),
        "operation": operation,
        "outcome": outcome,
        "user": _user(),
        "pid": os.getpid(),
        **details,
    }
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Record:
    """What an operation adds to its audit line as it learns it (a new token's id)."""

    details: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def audited(
    path: Path, operation: str, expected: tuple[type[Exception], ...], **details: Any
) -> Iterator[Record]:
    """Writes `ok` after the block, `refused` when it raises one of `expected` (a rule said
    no: the message is the reason), `failed` with the exception's type otherwise."""
    record = Record(dict(details))
    try:
        yield record
    except expected as exc:
        append(path, operation, "refused", error=str(exc), **record.details)
        raise
    except Exception as exc:
        append(path, operation, "failed", error=type(exc).__name__, **record.details)
        raise
    append(path, operation, "ok", **record.details)

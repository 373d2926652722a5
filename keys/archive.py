"""The public archive: every public key and certificate the fund ever used, with its history.

`keys` writes it (keys/export.py) after every change; the verifier reads it with
`load_archive`. It holds no private material. Format (``archive.json``, UTF-8)::

    {
      "format": "sealpost-public-archive/1",
      "generated_at": "2026-11-23T10:00:00Z",
      "roots": [{"pem": "-----BEGIN CERTIFICATE-----...", "sha256": "<hex of DER>"}],
      "dkim_keys": [{
          "domain": "caisses.example", "selector": "s202611r", "generation": "202611",
          "algorithm": "rsa" | "ed25519",          # the DKIM k= tag
          "public_key": "<base64, exactly the p= value published in DNS>",
          "sha256": "<hex of the decoded p= bytes>",
          "history": [{"state": "pending", "at": "..."}, {"state": "active", "at": "..."}],
          "revocation": null | {"compromised_at": "...", "reason": "...", "revoked_at": "..."}
      }],
      "certificates": [{
          "domain": "caisses.example", "serial": "<lower-case hex>", "generation": "202611",
          "pem": "...", "sha256": "<hex of DER>",
          "not_before": "...", "not_after": "...",
          "history": [...], "revocation": null | {...}
      }],
      "logs": [{                                    # absent before the statement log
          "origin": "caisses.example/statements/gw1", "key": "<C2SP signed-note verifier key>",
          "started_at": "...", "path": "log/<directory, relative to this file's>"
      }],
      "tsa_roots": ["-----BEGIN CERTIFICATE-----..."], # Time-Stamp Authorities trusted
      "witnesses": ["<C2SP verifier key>"]             # whose cosignatures are checked
    }

Times are UTC, ISO 8601 with a ``Z``. States: pending, active, retired, withdrawn, revoked.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "sealpost-public-archive/1"
ARCHIVE_FILE = "archive.json"
ROOT_FILE = "root.pem"


class ArchiveError(Exception):
    """The archive is missing or not in the expected format."""


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StateChange:
    state: str
    at: dt.datetime


@dataclass(frozen=True)
class Revocation:
    compromised_at: dt.datetime
    reason: str
    revoked_at: dt.datetime


@dataclass(frozen=True)
class _Tracked:
    domain: str
    generation: str
    history: tuple[StateChange, ...]
    revocation: Revocation | None

    @property
    def state(self) -> str:
        return self.history[-1].state

    def entered(self, state: str) -> dt.datetime | None:
        """When this key first entered `state`, or None if it never did."""
        return next((change.at for change in self.history if change.state == state), None)


@dataclass(frozen=True)
class PublicDkimKey(_Tracked):
    selector: str
    algorithm: str
    public_key: str
    sha256: str

    def dns_txt(self) -> str:
        """The TXT record value as published (RFC 6376 3.6.1)."""
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key}"


@dataclass(frozen=True)
class PublicCertificate(_Tracked):
    serial: str
    pem: str
    sha256: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class Root:
    pem: str
    sha256: str


@dataclass(frozen=True)
class PublicLog:
    """A gateway node's statement log (C2SP tlog-tiles under `path`, relative to the
    archive's directory; checkpoints signed by `key`, a C2SP signed-note verifier key)."""

    origin: str
    key: str
    started_at: dt.datetime
    path: str


@dataclass(frozen=True)
class PublicArchive:
    generated_at: dt.datetime
    roots: tuple[Root, ...]
    dkim_keys: tuple[PublicDkimKey, ...]
    certificates: tuple[PublicCertificate, ...]
    logs: tuple[PublicLog, ...] = ()
    tsa_roots: tuple[str, ...] = ()  # PEM
    witnesses: tuple[str, ...] = ()  # C2SP signed-note verifier keys

    @property
    def log_started_at(self) -> dt.datetime | None:
        """Since when every seal must be in a statement log."""
        return min((log.started_at for log in self.logs), default=None)

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(key.domain for key in self.dkim_keys)

    def dkim_key(self, domain: str, selector: str) -> PublicDkimKey | None:
        domain = domain.lower().rstrip(".")
        return next(
            (k for k in self.dkim_keys if k.domain == domain and k.selector == selector), None
        )

    def certificate(self, sha256: str) -> PublicCertificate | None:
        return next((c for c in self.certificates if c.sha256 == sha256.lower()), None)


def _history(raw: list[dict[str, str]]) -> tuple[StateChange, ...]:
    if not raw:
        raise ArchiveError("an entry has an empty history")
    return tuple(StateChange(state=h["state"], at=parse_time(h["at"])) for h in raw)


def parse_revocation(raw: dict[str, str] | None) -> Revocation | None:
    if raw is None:
        return None
    return Revocation(
        compromised_at=parse_time(raw["compromised_at"]),
        reason=raw["reason"],
        revoked_at=parse_time(raw["revoked_at"]),
    )


def parse_log(raw: dict[str, str]) -> PublicLog:
    return PublicLog(
        origin=raw["origin"],
        key=raw["key"],
        started_at=parse_time(raw["started_at"]),
        path=raw["path"],
    )


def log_json(log: PublicLog) -> dict[str, str]:
    """A log as the archive (and the key store's state) write it."""
    return {
        "origin": log.origin,
        "key": log.key,
        "started_at": format_time(log.started_at),
        "path": log.path,
    }


def parse_archive(document: dict[str, Any]) -> PublicArchive:
    if document.get("format") != FORMAT:
        raise ArchiveError(f"unknown archive format {document.get('format')!r}")
    try:
        return PublicArchive(
            generated_at=parse_time(document["generated_at"]),
            roots=tuple(Root(pem=r["pem"], sha256=r["sha256"]) for r in document["roots"]),
            dkim_keys=tuple(
                PublicDkimKey(
                    domain=k["domain"],
                    generation=k["generation"],
                    history=_history(k["history"]),
                    revocation=parse_revocation(k["revocation"]),
                    selector=k["selector"],
                    algorithm=k["algorithm"],
                    public_key=k["public_key"],
                    sha256=k["sha256"],
                )
                for k in document["dkim_keys"]
            ),
            certificates=tuple(
                PublicCertificate(
                    domain=c["domain"],
                    generation=c["generation"],
                    history=_history(c["history"]),
                    revocation=parse_revocation(c["revocation"]),
                    serial=c["serial"],
                    pem=c["pem"],
                    sha256=c["sha256"],
                    not_before=parse_time(c["not_before"]),
                    not_after=parse_time(c["not_after"]),
                )
                for c in document["certificates"]
            ),
            logs=tuple(parse_log(g) for g in document.get("logs", [])),
            tsa_roots=tuple(document.get("tsa_roots", [])),
            witnesses=tuple(document.get("witnesses", [])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"malformed archive: {exc!r}") from exc


def load_archive(directory: Path) -> PublicArchive:
    path = directory / ARCHIVE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArchiveError(f"no public archive at {path}") from exc
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"cannot read {path}: {exc}") from exc
    return parse_archive(document)


class ArchiveWatcher:
    """Serves the newest archive in `directory`, re-reading it when the file changes on disk,
    so a running verifier picks up an export without a restart. Writers replace the file by
    rename, so a changed (inode, mtime) means a complete new file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp: tuple[int, int] | None = None
        self._archive: PublicArchive | None = None

    def get(self) -> PublicArchive:
        try:
            st = (self.directory / ARCHIVE_FILE).stat()
        except FileNotFoundError as exc:
            raise ArchiveError(f"no public archive at {self.directory / ARCHIVE_FILE}") from exc
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._archive is None or stamp != self._stamp:
            self._archive = load_archive(self.directory)
            self._stamp = stamp
        return self._archive

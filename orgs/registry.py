"""The registry of insurers ("organismes complémentaires"): who they are, the mailboxes
their avenant lists (at most five, each with its label), and their API tokens.

One SQLite file (WAL, synchronous=FULL, mode 0600) shared by the `sealpost-orgs` command
that changes it and the long-running gateway and verifier that read it. Readers keep the
whole registry in memory (a few hundred rows at most) and reload it when another process
has committed a change: `PRAGMA data_version` tells them, for the cost of one statement,
so a change is seen at the next lookup, without a restart, and a lookup stays a dict access.

The rules live in the database as well as in the code, so no writer can break them: a
mailbox address is a primary key (one organisation each), and a trigger refuses a sixth.
Every change is one IMMEDIATE transaction and one line of the audit log beside the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import os
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orgs import audit, tokens
from orgs.address import AddressError, address_domain, normalise_domain, parse_address

MAX_MAILBOXES = 5  # the avenant has five lines
MAX_NAME = 200
MAX_LABEL = 100
SCHEMA_VERSION = 1
FILE_MODE = 0o600
DIR_MODE = 0o700
BUSY_TIMEOUT_S = 5.0
ACTIVE = "active"
ENDED = "ended"

_CODE = re.compile(r"[A-Z0-9](?:[A-Z0-9_-]{0,30}[A-Z0-9])?")
# The in-memory index of tokens is keyed by the first 8 bytes of their hash and the whole
# hash compared in constant time: the lookup's timing depends only on bytes an attacker
# cannot steer, the comparison's on none. 64 bits make a collision between two real
# tokens (which would only make one of them fail) vanishingly unlikely.
_TOKEN_INDEX = 8

_SCHEMA = (
    f"""CREATE TABLE organisations (
        code TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('{ACTIVE}', '{ENDED}')),
        created TEXT NOT NULL,
        ended TEXT
    ) STRICT""",
    """CREATE TABLE mailboxes (
        key TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        label TEXT NOT NULL,
        code TEXT NOT NULL REFERENCES organisations (code),
        added TEXT NOT NULL
    ) STRICT""",
    "CREATE INDEX mailboxes_by_code ON mailboxes (code)",
    # MAX_MAILBOXES, enforced by the file itself against any writer.
    """CREATE TRIGGER mailboxes_at_most_5 BEFORE INSERT ON mailboxes
    WHEN (SELECT count(*) FROM mailboxes WHERE code = NEW.code) >= 5
    BEGIN SELECT RAISE(ABORT, 'at most 5 mailboxes per organisation'); END""",
    """CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        code TEXT NOT NULL REFERENCES organisations (code),
        hash BLOB NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created TEXT NOT NULL,
        revoked TEXT
    ) STRICT""",
    "CREATE INDEX tokens_by_code ON tokens (code)",
)


class RegistryError(Exception):
    """The registry file cannot be opened or is not a registry."""


class RegistryBusy(RegistryError):
    """Another process held the registry's write lock for longer than the busy timeout."""


class Refused(Exception):
    """A rule of the registry forbids the change; the message says which."""


class NotFound(LookupError):
    """No such organisation, mailbox or token."""


@dataclass(frozen=True)
class Mailbox:
    address: str
    label: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True)
class Organisation:
    code: str
    name: str
    state: str  # ACTIVE or ENDED
    mailboxes: tuple[Mailbox, ...] = ()
    created: str = ""
    ended: str | None = None

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(m.domain for m in self.mailboxes)


@dataclass(frozen=True)
class Token:
    """A token as listed: never the token itself, which only its holder has."""

    id: str
    code: str
    created: str
    hint: str
    revoked: str | None = None

    @property
    def state(self) -> str:
        return "revoked" if self.revoked else ACTIVE


@dataclass(frozen=True)
class _Snapshot:
    organisations: dict[str, Organisation]
    by_mailbox: dict[str, str]  # mailbox key -> code
    by_domain: dict[str, tuple[str, ...]]  # domain -> codes
    # An unrevoked token's hash, found by its first bytes: (whole hash, code).
    by_token: dict[bytes, tuple[bytes, str]]


def normalise_code(text: str) -> str:
    code = text.strip().upper()
    if not _CODE.fullmatch(code):
        raise Refused(
            f"{text!r} is not an organisation code: 1 to 32 letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return code


def _text(value: str, what: str, limit: int) -> str:
    text = " ".join(value.split())
    if not text:
        raise Refused(f"the {what} is empty")
    if len(text) > limit:
        raise Refused(f"the {what} is longer than {limit} characters")
    if any(unicodedata.category(c) in {"Cc", "Cf"} for c in text):
        raise Refused(f"the {what} holds control or format characters")
    return text


def _now() -> str:
    return audit.format_time(dt.datetime.now(dt.UTC))


def _create_private(path: Path) -> None:
    """Creates the empty file 0600 (and its directory 0700) before SQLite opens it, so the
    database, and the -wal and -shm files SQLite gives the same mode, are never readable
    by others, whatever the umask."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=DIR_MODE, parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class View:
    """The registry as of one moment (`Registry.view`): its lookups see no later change,
    and cost no look at the file, so a mail transaction can make them all on one."""

    _snapshot: _Snapshot

    def mailbox_owner(self, address: str) -> Organisation | None:
        """The organisation (active or ended) that registered `address`, or None."""
        snapshot = self._snapshot
        try:
            # Most recipients are at domains without a mailbox: no need to parse them.
            if address_domain(address) not in snapshot.by_domain:
                return None
            key = parse_address(address).key
        except AddressError:
            return None
        code = snapshot.by_mailbox.get(key)
        return None if code is None else snapshot.organisations[code]

    def domain_owners(self, domain: str) -> list[Organisation]:
        """The organisations (active or ended) with a registered mailbox at `domain`."""
        try:
            name = normalise_domain(domain)
        except AddressError:
            return []
        snapshot = self._snapshot
        return [snapshot.organisations[code] for code in snapshot.by_domain.get(name, ())]


class Registry:
    """The registry at `path`, created if absent. Safe to share between threads; open one
    per process (an SQLite connection must not cross a fork)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.audit_path = audit.audit_path(path)
        with contextlib.suppress(FileExistsError):
            _create_private(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{path} is not a usable registry: {exc}") from None
        self._version: int | None = None
        self._snapshot = _Snapshot({}, {}, {}, {})

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path} has schema {version}, newer than this program's {SCHEMA_VERSION}"
            )
        with self._transaction():
            # Re-read inside the write lock: another process may have created it meanwhile.
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version == 0:
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken at BEGIN, so the checks made
        inside it still hold at COMMIT."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise RegistryBusy(
                f"{self.path} is locked by another process ({exc}); nothing was done: try again"
            ) from None
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- reading --------------------------------------------------------------------

    def _current(self) -> _Snapshot:
        """The snapshot, reloaded when a commit (by any connection) has changed the file."""
        with self._lock:
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
            if version != self._version:
                self._snapshot = self._load()
                self._version = version
            return self._snapshot

    def _load(self) -> _Snapshot:
        # One read transaction, so the three tables are seen at the same commit.
        self._db.execute("BEGIN")
        try:
            org_rows = self._db.execute(
                "SELECT code, name, state, created, ended FROM organisations ORDER BY code"
            ).fetchall()
            mailbox_rows = self._db.execute(
                "SELECT code, key, address, domain, label FROM mailboxes ORDER BY rowid"
            ).fetchall()
            token_rows = self._db.execute(
                "SELECT hash, code FROM tokens WHERE revoked IS NULL"
            ).fetchall()
        finally:
            self._db.execute("COMMIT")
        mailboxes: dict[str, list[Mailbox]] = {}
        by_mailbox: dict[str, str] = {}
        by_domain: dict[str, list[str]] = {}
        for code, key, address, domain, label in mailbox_rows:
            mailboxes.setdefault(code, []).append(Mailbox(address, label))
            by_mailbox[key] = code
            owners = by_domain.setdefault(domain, [])
            if code not in owners:
                owners.append(code)
        organisations = {
            code: Organisation(code, name, state, tuple(mailboxes.get(code, ())), created, ended)
            for code, name, state, created, ended in org_rows
        }
        return _Snapshot(
            organisations,
            by_mailbox,
            {domain: tuple(codes) for domain, codes in by_domain.items()},
            {bytes(d)[:_TOKEN_INDEX]: (bytes(d), code) for d, code in token_rows},
        )

    def organisations(self) -> list[Organisation]:
        """Every organisation, active and ended, by code."""
        return list(self._current().organisations.values())

    def organisation(self, code: str) -> Organisation | None:
        try:
            key = normalise_code(code)
        except Refused:
            return None
        return self._current().organisations.get(key)

    def view(self) -> View:
        """The registry as it is now, for lookups that belong together."""
        return View(self._current())

    def mailbox_owner(self, address: str) -> Organisation | None:
        """The organisation (active or ended) that registered `address`, or None."""
        return self.view().mailbox_owner(address)

    def domain_owners(self, domain: str) -> list[Organisation]:
        """The organisations (active or ended) with a registered mailbox at `domain`."""
        return self.view().domain_owners(domain)

    def mailbox_domains(self) -> frozenset[str]:
        """Every domain holding a registered mailbox."""
        return frozenset(self._current().by_domain)

    def token_owner(self, token: str) -> Organisation | None:
        """The active organisation holding `token`; None when the token is unknown,
        revoked, or its organisation has ended."""
        if not tokens.looks_like_token(token):
            return None
        digest = tokens.token_hash(token)
        snapshot = self._current()
        entry = snapshot.by_token.get(digest[:_TOKEN_INDEX])
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        code = entry[1]
        organisation = snapshot.organisations[code]
        return organisation if organisation.active else None

    def tokens(self, code: str) -> list[Token]:
        """The tokens of an organisation, oldest first; NotFound for an unknown code."""
        key = self._known(code)
        rows = self._db_read(
            "SELECT id, code, created, hint, revoked FROM tokens WHERE code = ? "
            "ORDER BY created, rowid",
            (key,),
        )
        return [Token(*row) for row in rows]

    def _db_read(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def _known(self, code: str) -> str:
        key = normalise_code(code)
        if key not in self._current().organisations:
            raise NotFound(f"no organisation {key} in the registry")
        return key

    # --- changing -------------------------------------------------------------------

    @contextlib.contextmanager
    def _change(self, operation: str, **details: Any) -> Iterator[audit.Record]:
        """An audited change in one transaction. The snapshot is dropped after it: this
        connection's own commits do not move its data_version."""
        expected = (Refused, NotFound, AddressError, RegistryError)
        with audit.audited(self.audit_path, operation, expected, **details) as record, self._lock:
            try:
                with self._transaction():
                    yield record
            finally:
                self._version = None

    def _require_active(self, code: str) -> None:
        row = self._db.execute("SELECT state FROM organisations WHERE code = ?", (code,)).fetchone()
        if row is None:
            raise NotFound(f"no organisation {code} in the registry")
        if row[0] != ACTIVE:
            raise Refused(f"organisation {code} has ended: its registration can no longer change")

    def _get(self, code: str) -> Organisation:
        organisation = self.organisation(code)
        assert organisation is not None  # just committed
        return organisation

    def add(self, code: str, name: str) -> Organisation:
        """Registers a new organisation, active and without mailboxes."""
        with self._change("add", code=code.strip()) as record:
            key = normalise_code(code)
            record.details["code"] = key
            text = _text(name, "name", MAX_NAME)
            if self._db.execute("SELECT 1 FROM organisations WHERE code = ?", (key,)).fetchone():
                raise Refused(f"organisation {key} is already registered")
            self._db.execute(
                "INSERT INTO organisations (code, name, state, created) VALUES (?, ?, ?, ?)",
                (key, text, ACTIVE, _now()),
            )
        return self._get(key)

    def add_mailbox(self, code: str, address: str, label: str) -> Mailbox:
        """Adds one of the avenant's mailboxes. Refused: a malformed address, a sixth
        mailbox, an address already registered (to this or another organisation)."""
        with self._change("mailbox-add", code=code.strip(), address=address.strip()) as record:
            key = normalise_code(code)
            record.details["code"] = key
            self._require_active(key)
            parsed = parse_address(address)
            record.details["address"] = parsed.address
            text = _text(label, "label", MAX_LABEL)
            holder = self._db.execute(
                "SELECT code, address FROM mailboxes WHERE key = ?", (parsed.key,)
            ).fetchone()
            if holder is not None:
                whose = "this organisation" if holder[0] == key else f"organisation {holder[0]}"
                raise Refused(f"{holder[1]} is already registered to {whose}")
            (count,) = self._db.execute(
                "SELECT count(*) FROM mailboxes WHERE code = ?", (key,)
            ).fetchone()
            if count >= MAX_MAILBOXES:
                raise Refused(
                    f"organisation {key} already has {MAX_MAILBOXES} mailboxes, the most the "
                    "avenant allows: remove one first"
                )
            try:
                self._db.execute(
                    "INSERT INTO mailboxes (key, address, domain, label, code, added) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (parsed.key, parsed.address, parsed.domain, text, key, _now()),
                )
            except sqlite3.IntegrityError as exc:
                # Only reachable if another writer slipped past the checks above.
                raise Refused(f"{parsed.address} cannot be added: {exc}") from None
        return Mailbox(parsed.address, text)

    def remove_mailbox(self, code: str, address: str) -> Mailbox:
        with self._change("mailbox-remove", code=code.strip(), address=address.strip()) as record:
            key = normalise_code(code)
            record.details["code"] = key
            self._require_active(key)
            parsed = parse_address(address)
            row = self._db.execute(
                "SELECT address, label FROM mailboxes WHERE key = ? AND code = ?",
                (parsed.key, key),
            ).fetchone()
            if row is None:
                raise NotFound(f"{parsed.address} is not a mailbox of organisation {key}")
            record.details["address"] = row[0]
            self._db.execute("DELETE FROM mailboxes WHERE key = ?", (parsed.key,))
        return Mailbox(row[0], row[1])

    def end(self, code: str) -> Organisation:
        """Ends an organisation's convention: its tokens stop working, mail to its
        mailboxes is refused, and nothing about it can change any more. Its mailboxes stay
        registered, so a statement cannot reach them under another name."""
        with self._change("end", code=code.strip()) as record:
            key = normalise_code(code)
            record.details["code"] = key
            self._require_active(key)
            self._db.execute(
                "UPDATE organisations SET state = ?, ended = ? WHERE code = ?",
                (ENDED, _now(), key),
            )
        return self._get(key)

    def create_token(self, code: str) -> tuple[Token, str]:
        """A new token for an active organisation: its listing and the token itself, which
        is not kept and cannot be shown again."""
        with self._change("token-create", code=code.strip()) as record:
            key = normalise_code(code)
            record.details["code"] = key
            self._require_active(key)
            secret = tokens.new_token()
            token = Token(tokens.new_token_id(), key, _now(), tokens.hint(secret))
            record.details["token"] = token.id
            self._db.execute(
                "INSERT INTO tokens (id, code, hash, hint, created) VALUES (?, ?, ?, ?, ?)",
                (token.id, key, tokens.token_hash(secret), token.hint, token.created),
            )
        return token, secret

    def revoke_token(self, code: str, token_id: str) -> Token:
        """Revokes a token at once. Allowed for an ended organisation too: it only takes
        access away. Revoking a revoked token is refused, so a typo is not silent."""
        with self._change("token-revoke", code=code.strip(), token=token_id.strip()) as record:
            key = normalise_code(code)
            record.details["code"] = key
            row = self._db.execute(
                "SELECT id, code, created, hint, revoked FROM tokens WHERE id = ? AND code = ?",
                (token_id.strip(), key),
            ).fetchone()
            if row is None:
                raise NotFound(f"organisation {key} has no token {token_id.strip()}")
            if row[4] is not None:
                raise Refused(f"token {row[0]} was already revoked at {row[4]}")
            revoked = _now()
            self._db.execute("UPDATE tokens SET revoked = ? WHERE id = ?", (revoked, row[0]))
        return Token(row[0], row[1], row[2], row[3], revoked)

"""The durable queue between the SMTP side and delivery.

Choice: one SQLite database (``<spool dir>/spool.sqlite3``) in WAL mode with
``synchronous=FULL``, rather than one file per message with fsync + rename.

- What survives SIGKILL: every transaction whose COMMIT returned. In WAL mode a commit
  appends the changed pages to the ``-wal`` file; the next opener replays it. A
  transaction cut short by the kill was never acknowledged and simply is not there.
- What a power loss does: ``synchronous=FULL`` makes COMMIT fsync the WAL before it
  returns, so an acknowledged message survives power loss too (given a disk that honours
  fsync). ``NORMAL`` would lose the last commits on power loss, which would break the
  promise behind ``250 Queued``.
- Cost per message: about 28 KB appended to the WAL (7-8 pages) plus a handful of index
  pages, and later a second write when a checkpoint copies the pages into the database
  file. The fsync is shared: a file-per-message spool pays a file fsync, a rename and a
  directory fsync for every message, SQLite pays one fsync per *transaction*.
- Group commit: every write (puts from many SMTP sessions, and the scheduler's
  per-recipient updates) is queued to a single writer task. While the writer's thread
  runs one transaction and its fsync, new writes pile up; the writer then commits them
  all in the next transaction, each inside its own SAVEPOINT so that one failing write
  does not undo the others. ``put`` resolves only once its transaction has committed.
- Per-recipient state is a row (queued, deferred, delivered, bounced) updated in place,
  and the queue tool can read and change the database while the gateway runs: WAL lets a
  second process read, and writers from both take turns on SQLite's lock.
- Unreadable entries are set aside, never fatal: each message carries the SHA-256 of
  its data; a row that fails the check or cannot be decoded is moved to the ``corrupt``
  table and logged. A database file SQLite cannot open at all is moved into
  ``<spool dir>/corrupt/`` and a new spool is started.

``Spool.open(path)`` is a plain (synchronous) classmethod; every other method is a
coroutine. All SQLite work runs on one dedicated thread, so the event loop never blocks
on the disk.

The delivery hot path (``load_due``): a message's bytes, once committed by ``put``, are
also kept in memory (at most ``held_bytes`` of them, oldest dropped first) until its first
attempt, so that attempt neither reads 28 KB back from SQLite nor hashes it again: the
bytes are the very ones hashed and committed. Later attempts, a restart and anything
dropped from memory read the disk, with the SHA-256 check. The scheduler's due query,
its messages and the time of the next due one come in one call to the spool's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from gateway.mail_params import NO_PARAMS, MailParams, body_of

log = logging.getLogger("sealpost.spool")

T = TypeVar("T")

DB_NAME: Final = "spool.sqlite3"
BUSY_TIMEOUT_MS: Final = 10_000
# Freshly put messages kept for their first attempt, per spool (per lane): the few hundred
# ms between the 250 and the statement log's release, at a lane's rate, with room to spare.
HELD_BYTES: Final = 8 * 1024 * 1024
# What a held message costs besides its bytes (its objects, its dict slot): counted, so
# that many small messages cannot take far more than the bound.
HELD_OVERHEAD: Final = 512

# "logging": accepted, waiting for its statement-log entry to be in a published checkpoint
# before anyone can receive it (so no recipient ever reads a statement the log lacks).
State = Literal["logging", "queued", "deferred", "delivered", "bounced"]
PENDING_STATES: Final = ("queued", "deferred")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    client TEXT NOT NULL,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    data BLOB NOT NULL,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX IF NOT EXISTS recipients_pending ON recipients (next_attempt)
    WHERE state IN ('queued', 'deferred');
CREATE TABLE IF NOT EXISTS log_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    entry BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS log_state (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS corrupt (
    id TEXT NOT NULL,
    set_aside_at REAL NOT NULL,
    reason TEXT NOT NULL,
    sender TEXT,
    recipients TEXT,
    data BLOB
);
"""


class SpoolError(Exception):
    """The spool could not commit or read: the caller must not acknowledge the message."""


class CorruptEntry(SpoolError):
    """A stored message could not be read; it has been moved to the corrupt table."""


@dataclass(frozen=True)
class Envelope:
    """One message as accepted from a client: ``data`` is the sealed message."""

    sender: str  # "" is the null sender
    recipients: list[str]
    data: bytes
    client: str = ""
    received_at: float = field(default_factory=time.time)
    # The statement-log entry of its seals: committed with the message, in the same
    # transaction; its recipients wait in "logging" until a checkpoint covers it.
    log_entry: bytes | None = None
    # The client's MAIL parameters (SMTPUTF8, BODY), which delivery passes on.
    params: MailParams = NO_PARAMS

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Recipient:
    idx: int
    address: str
    state: State
    attempts: int
    next_attempt: float
    last_reply: str

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES


@dataclass(frozen=True)
class StoredMessage:
    id: str
    sender: str
    client: str
    received_at: float
    size: int
    recipients: tuple[Recipient, ...]
    data: bytes = b""  # empty when listed without the data
    params: MailParams = NO_PARAMS

    def due(self, now: float) -> list[Recipient]:
        return [r for r in self.recipients if r.pending and r.next_attempt <= now]


@dataclass(frozen=True)
class DueBatch:
    """What the scheduler may start now, read in one call to the spool's thread."""

    messages: list[StoredMessage]  # with their data, ready for an attempt
    # Due, but not readable as part of the batch: each goes through ``load``, which sets
    # it aside if it is corrupt (or finds it gone).
    unread: list[str]
    # When the earliest pending recipient of any other message not excluded is due.
    next_due: float | None


@dataclass(frozen=True)
class Update:
    """A delivery attempt's result for one recipient (by its index in the envelope)."""

    idx: int
    state: State
    reply: str = ""
    next_attempt: float = 0.0
    # False when no connection was tried (the destination is known to be down): the
    # recipient's attempt count, which drives its back-off, stays as it was.
    attempted: bool = True


@dataclass(frozen=True)
class LogEntry:
    seq: int
    message_id: str
    entry: bytes


@dataclass(frozen=True)
class CorruptRecord:
    id: str
    set_aside_at: float
    reason: str


def new_queue_id() -> str:
    """Time-ordered and unique: 13 hex digits of microseconds, then 24 random bits."""
    return f"{time.time_ns() // 1000:013X}{secrets.token_hex(3).upper()}"


class Spool:
    def __init__(
        self,
        path: Path,
        executor: concurrent.futures.ThreadPoolExecutor,
        held_bytes: int = HELD_BYTES,
    ) -> None:
        self.path = path
        self._executor = executor
        # Committed messages awaiting their first attempt, oldest first (dicts keep order).
        self._held: dict[str, StoredMessage] = {}
        self._held_size = 0
        self._held_limit = held_bytes
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def open(cls, path: Path, held_bytes: int = HELD_BYTES) -> Spool:
        """Open (creating if needed) the spool in directory ``path``. Synchronous.
        ``held_bytes`` bounds the messages kept in memory for their first attempt."""
        path.mkdir(parents=True, exist_ok=True)
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sealpost-spool")
        spool = cls(path, executor, held_bytes)
        try:
            spool._conn = executor.submit(_connect_or_set_aside, path).result()
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return spool

    async def close(self) -> None:
        """Commit what is queued, then close. Idempotent."""
        if self._closed:
            return
        if self._writer is not None:
            # Writes are committed in order: once this no-op is, every earlier one is too.
            with contextlib.suppress(SpoolError):
                await self._write(lambda conn: None)
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait([self._writer])  # never swallows our caller's cancellation
        conn = self._conn
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    # -- writing -----------------------------------------------------------------

    async def put(self, envelope: Envelope, *, log_queued: bool = True) -> str:
        """Store the message; returns its queue id once the commit is on stable storage.
        ``log_queued=False`` when the caller writes the message's ``event=queued`` line
        itself (the SMTP handler's, with every field of this one and more)."""
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")
        queue_id = new_queue_id()
        at = envelope.received_at

        state = "queued" if envelope.log_entry is None else "logging"

        def insert(conn: sqlite3.Connection) -> None:
            # Hashed here, on the spool's thread (hashlib lets go of the GIL for it), not
            # on the event loop's, the lane's busiest.
            digest = hashlib.sha256(envelope.data).hexdigest()
            conn.execute(
                "INSERT INTO messages (id, sender, client, received_at, size, sha256, data,"
                " smtputf8, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (queue_id, envelope.sender, envelope.client, at, envelope.size, digest,
                 envelope.data, int(envelope.params.smtputf8), envelope.params.body),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO recipients (message_id, idx, address, state, next_attempt)"
                " VALUES (?, ?, ?, ?, ?)",
                [(queue_id, i, rcpt, state, at) for i, rcpt in enumerate(envelope.recipients)],
            )
            if envelope.log_entry is not None:
                conn.execute(
                    "INSERT INTO log_entries (message_id, entry) VALUES (?, ?)",
                    (queue_id, envelope.log_entry),
                )

        try:
            await self._write(insert)
        except sqlite3.Error as exc:
            raise SpoolError(f"message not stored: {exc}") from exc
        self._hold(
            StoredMessage(
                queue_id, envelope.sender, envelope.client, at, envelope.size, (),
                envelope.data, envelope.params,
            )
        )  # fmt: skip
        if log_queued:
            log.info(
                "event=queued id=%s client=%s sender=<%s> nrcpt=%d size=%d",
                queue_id, envelope.client, envelope.sender, len(envelope.recipients),
                envelope.size,
            )  # fmt: skip
        return queue_id

    async def record(self, queue_id: str, updates: Sequence[Update]) -> bool:
        """Store one attempt's per-recipient results. Returns True when the message is done
        (no recipient left to try), in which case it has been removed from the spool."""

        def apply(conn: sqlite3.Connection) -> bool:
            conn.executemany(
                "UPDATE recipients SET state = ?, attempts = attempts + ?, next_attempt = ?,"
                " last_reply = ? WHERE message_id = ? AND idx = ?",
                [
                    (u.state, int(u.attempted), u.next_attempt, u.reply[:2000], queue_id, u.idx)
                    for u in updates
                ],
            )
            return _remove_if_done(conn, queue_id)

        done = bool(await self._write(apply))
        if done:
            self._unhold(queue_id)
        return done

    async def retry(self, queue_id: str, now: float | None = None) -> bool:
        """Make every pending recipient of one message due now. False if no such message."""
        at = time.time() if now is None else now

        def apply(conn: sqlite3.Connection) -> bool:
            exists = conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone()
            conn.execute(
                "UPDATE recipients SET next_attempt = ? WHERE message_id = ?"
                " AND state IN ('queued', 'deferred')",
                (at, queue_id),
            )
            return exists is not None

        return bool(await self._write(apply))

    async def flush(self, now: float | None = None) -> int:
        """Make every pending recipient due now; returns how many messages that touches."""
        at = time.time() if now is None else now

        def apply(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(
                "SELECT COUNT(DISTINCT message_id) FROM recipients"
                " WHERE state IN ('queued', 'deferred')"
            ).fetchone()
            conn.execute(
                "UPDATE recipients SET next_attempt = ? WHERE state IN ('queued', 'deferred')",
                (at,),
            )
            return int(count)

        return int(await self._write(apply))

    async def delete(self, queue_id: str) -> bool:
        def apply(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
            conn.execute("DELETE FROM recipients WHERE message_id = ?", (queue_id,))
            return cursor.rowcount > 0

        deleted = bool(await self._write(apply))
        self._unhold(queue_id)
        if deleted:
            log.info("event=deleted id=%s", queue_id)
        return deleted

    async def log_published(self, upto: int, size: int, now: float | None = None) -> int:
        """Entries up to `upto` are in a published checkpoint of a log of `size` entries:
        their messages may now be delivered. Returns how many messages that releases."""
        at = time.time() if now is None else now

        def apply(conn: sqlite3.Connection) -> int:
            released = conn.execute(
                "UPDATE recipients SET state = 'queued', next_attempt = ?"
                " WHERE state = 'logging' AND message_id IN"
                " (SELECT message_id FROM log_entries WHERE seq <= ?)",
                (at, upto),
            ).rowcount
            conn.execute("DELETE FROM log_entries WHERE seq <= ?", (upto,))
            conn.execute(
                "INSERT INTO log_state (name, value) VALUES ('size', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (size,),
            )
            return int(released)

        return int(await self._write(apply))

    # -- reading -----------------------------------------------------------------

    async def log_entries(self, limit: int) -> list[LogEntry]:
        """Entries not yet in a published checkpoint, in the order they were committed."""

        def query(conn: sqlite3.Connection) -> list[LogEntry]:
            rows = conn.execute(
                "SELECT seq, message_id, entry FROM log_entries ORDER BY seq LIMIT ?", (limit,)
            )
            return [LogEntry(int(q), str(m), bytes(e)) for q, m, e in rows]

        return await self._read(query)

    async def log_size(self) -> int:
        """The size of the log as of its last published checkpoint, as the spool knows it."""

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM log_state WHERE name = 'size'").fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(query)

    async def due(self, now: float, limit: int, exclude: Iterable[str] = ()) -> list[str]:
        """Ids of messages with a recipient due at ``now``, earliest first."""
        skip = set(exclude)

        def query(conn: sqlite3.Connection) -> list[str]:
            found: list[str] = []
            for queue_id, _ in _pending_in_order(conn, now):
                if queue_id not in skip and queue_id not in found:
                    found.append(queue_id)
                    if len(found) >= limit:
                        break
            return found

        return await self._read(query)

    async def next_due(self, exclude: Iterable[str] = ()) -> float | None:
        """When the earliest pending recipient (of a message not excluded) is due."""
        skip = set(exclude)

        def query(conn: sqlite3.Connection) -> float | None:
            for queue_id, at in _pending_in_order(conn, None):
                if queue_id not in skip:
                    return at
            return None

        return await self._read(query)

    async def load(self, queue_id: str) -> StoredMessage | None:
        """The message with its data, checked against its digest; None if it is gone.
        Raises CorruptEntry (after setting the entry aside) when it cannot be read."""
        try:
            return await self._read(lambda conn: _load(conn, queue_id, with_data=True))
        except (_Unreadable, sqlite3.DatabaseError, ValueError, TypeError) as exc:
            reason = str(exc) or type(exc).__name__
            self._unhold(queue_id)
            await self._write(lambda conn: _set_aside(conn, queue_id, reason))
            log.error("event=set_aside id=%s reason=%s", queue_id, reason)
            raise CorruptEntry(f"{queue_id}: {reason}") from exc

    async def load_due(self, now: float, limit: int, exclude: Iterable[str] = ()) -> DueBatch:
        """Up to ``limit`` messages with a recipient due at ``now`` (earliest first, none
        of ``exclude``), with their data: from memory for a first attempt (see the module's
        docstring), else from disk, checked against its digest."""
        skip = set(exclude)
        # Looked up from the spool's thread while this loop may add and drop entries: one
        # dict.get is atomic, and either answer is right (a message is held only once
        # committed, and its bytes never change), so no copy of a dict that can be large.
        held = self._held

        def query(conn: sqlite3.Connection) -> DueBatch:
            ids, next_due = _due_ids(conn, now, limit, skip)
            messages: list[StoredMessage] = []
            unread: list[str] = []
            for queue_id in ids:
                kept = held.get(queue_id)
                try:
                    if kept is None:
                        found = _load(conn, queue_id, with_data=True)
                    else:
                        found = _with_recipients(conn, kept)
                except (_Unreadable, sqlite3.DatabaseError, ValueError, TypeError):
                    found = None
                if found is None:
                    unread.append(queue_id)
                else:
                    messages.append(found)
            return DueBatch(messages, unread, next_due)

        batch = await self._read(query)
        for message in batch.messages:
            self._unhold(message.id)  # a later attempt reads the disk
        for queue_id in batch.unread:
            self._unhold(queue_id)
        return batch

    @property
    def held_bytes(self) -> int:
        """The memory the messages kept for their first attempt take, as counted against
        the bound: their bytes plus ``HELD_OVERHEAD`` each."""
        return self._held_size

    def _hold(self, message: StoredMessage) -> None:
        if message.size + HELD_OVERHEAD > self._held_limit:
            return
        self._unhold(message.id)
        self._held[message.id] = message
        self._held_size += message.size + HELD_OVERHEAD
        while self._held_size > self._held_limit:
            self._unhold(next(iter(self._held)))

    def _unhold(self, queue_id: str) -> None:
        message = self._held.pop(queue_id, None)
        if message is not None:
            self._held_size -= message.size + HELD_OVERHEAD

    async def messages(self) -> list[StoredMessage]:
        """Every queued message with its recipients, without the data, oldest first."""

        def query(conn: sqlite3.Connection) -> list[StoredMessage]:
            ids = [r[0] for r in conn.execute("SELECT id FROM messages ORDER BY received_at, id")]
            found = (_load(conn, i, with_data=False) for i in ids)
            return [m for m in found if m is not None]

        return await self._read(query)

    async def get(self, queue_id: str) -> StoredMessage | None:
        """One message with its data, unchecked (for the queue tool)."""
        return await self._read(lambda conn: _load(conn, queue_id, with_data=True, check=False))

    async def present(self, queue_ids: Iterable[str]) -> set[str]:
        """Which of ``queue_ids`` are still in the spool (one query per 500)."""
        wanted = list(queue_ids)

        def query(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT id FROM messages WHERE id IN ({marks})", chunk)  # noqa: S608
                found.update(str(row[0]) for row in rows)
            return found

        return await self._read(query)

    async def depth(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

        return await self._read(query)

    async def corrupt_entries(self) -> list[CorruptRecord]:
        def query(conn: sqlite3.Connection) -> list[CorruptRecord]:
            rows = conn.execute("SELECT id, set_aside_at, reason FROM corrupt ORDER BY rowid")
            return [CorruptRecord(str(r[0]), float(r[1]), str(r[2])) for r in rows]

        return await self._read(query)

    # -- the one thread that touches SQLite ----------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._conn is None:
            raise SpoolError("spool is closed")
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise SpoolError("spool is closed")
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write_loop(), name="sealpost-spool-writer")
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        assert self._wake is not None
        assert self._conn is not None
        loop = asyncio.get_running_loop()
        conn = self._conn
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await loop.run_in_executor(
                        self._executor, _commit, conn, [fn for fn, _ in batch]
                    )
                except Exception as exc:
                    log.error("event=commit_failed writes=%d error=%s", len(batch), exc)
                    error = SpoolError(f"commit failed: {exc}")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), (ok, value) in zip(batch, results, strict=True):
                    if future.done():  # the caller went away; the write stands
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)


class _Unreadable(Exception):
    pass


def _commit(
    conn: sqlite3.Connection, writes: list[Callable[[sqlite3.Connection], Any]]
) -> list[tuple[bool, Any]]:
    """One transaction, one fsync, for every write in the batch."""
    results: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for write in writes:
            conn.execute("SAVEPOINT w")
            try:
                value = write(conn)
            except Exception as exc:
                conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
                results.append((False, exc))
            else:
                conn.execute("RELEASE w")
                results.append((True, value))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return results


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.create_function("_is_ascii", 1, lambda text: str(text).isascii(), deterministic=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"{db}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.executescript(_SCHEMA)
        _migrate(conn)
        conn.execute("SELECT COUNT(*) FROM messages").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a spool written by an older version up to this schema, in one transaction
    (CREATE TABLE IF NOT EXISTS leaves an existing table as it was)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "smtputf8" in columns and "body" in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: the queue tool may have migrated meanwhile.
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        if "smtputf8" not in columns:
            conn.execute("ALTER TABLE messages ADD COLUMN smtputf8 INTEGER NOT NULL DEFAULT 0")
            # The flag was not kept before; a message with a non-ASCII address cannot go
            # out without SMTPUTF8, so it must have come with it.
            for (queue_id,) in conn.execute(
                "SELECT id FROM messages m WHERE NOT _is_ascii(m.sender) OR EXISTS"
                " (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
                " AND NOT _is_ascii(r.address))"
            ).fetchall():
                conn.execute("UPDATE messages SET smtputf8 = 1 WHERE id = ?", (queue_id,))
        if "body" not in columns:
            conn.execute("ALTER TABLE messages ADD COLUMN body TEXT NOT NULL DEFAULT ''")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    added = sorted({"smtputf8", "body"} - columns)
    if added:
        log.info("event=spool_migrated added=%s", ",".join(added))


def _connect_or_set_aside(path: Path) -> sqlite3.Connection:
    db = path / DB_NAME
    try:
        return _connect(db)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise
        aside = path / "corrupt"
        aside.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            part = path / (DB_NAME + suffix)
            if part.exists():
                part.rename(aside / f"{DB_NAME}{suffix}.{stamp}")
        log.error("event=set_aside_database path=%s reason=%s moved_to=%s", db, exc, aside)
        return _connect(db)


def _load(
    conn: sqlite3.Connection, queue_id: str, *, with_data: bool, check: bool = True
) -> StoredMessage | None:
    columns = "sender, client, received_at, size, sha256, smtputf8, body" + (
        ", data" if with_data else ""
    )
    row = conn.execute(f"SELECT {columns} FROM messages WHERE id = ?", (queue_id,)).fetchone()  # noqa: S608
    if row is None:
        return None
    sender, client, received_at, size, digest, smtputf8, body = row[:7]
    data = bytes(row[7]) if with_data else b""
    if with_data and check and hashlib.sha256(data).hexdigest() != digest:
        raise _Unreadable("data does not match its SHA-256")
    recipients = _recipients(conn, queue_id)
    if not recipients:
        raise _Unreadable("no recipients")
    params = MailParams(bool(smtputf8), body_of(body))
    return StoredMessage(
        str(queue_id), str(sender), str(client), float(received_at), int(size), recipients, data,
        params,
    )  # fmt: skip


def _with_recipients(conn: sqlite3.Connection, kept: StoredMessage) -> StoredMessage | None:
    """A message kept in memory, with its recipients as stored now; None when it has none
    (gone, or not readable: ``load`` tells which)."""
    recipients = _recipients(conn, kept.id)
    if not recipients:
        return None
    return StoredMessage(
        kept.id, kept.sender, kept.client, kept.received_at, kept.size, recipients, kept.data,
        kept.params,
    )  # fmt: skip


def _recipients(conn: sqlite3.Connection, queue_id: str) -> tuple[Recipient, ...]:
    return tuple(
        Recipient(int(i), str(a), _state(s), int(n), float(t), str(r))
        for i, a, s, n, t, r in conn.execute(
            "SELECT idx, address, state, attempts, next_attempt, last_reply FROM recipients"
            " WHERE message_id = ? ORDER BY idx",
            (queue_id,),
        )
    )


def _due_ids(
    conn: sqlite3.Connection, now: float, limit: int, skip: set[str]
) -> tuple[list[str], float | None]:
    """Up to ``limit`` ids of messages due at ``now`` not in ``skip``, earliest first, and
    when the first pending recipient of any other message not in ``skip`` is due."""
    found: dict[str, None] = {}
    with contextlib.closing(_pending_in_order(conn, None)) as pending:
        for queue_id, at in pending:
            if queue_id in skip or queue_id in found:
                continue
            if at > now or len(found) >= limit:
                return list(found), at
            found[queue_id] = None
    return list(found), None


def _pending_in_order(
    conn: sqlite3.Connection, until: float | None
) -> Generator[tuple[str, float], None, None]:
    """Pending recipients' (message id, next attempt), earliest first, read lazily off the
    partial index: callers stop early, so a deep queue costs no more than a shallow one."""
    cursor = conn.execute(
        "SELECT message_id, next_attempt FROM recipients"
        " WHERE state IN ('queued', 'deferred') AND next_attempt <= ? ORDER BY next_attempt",
        (math.inf if until is None else until,),
    )
    try:
        for queue_id, at in cursor:
            yield str(queue_id), float(at)
    finally:
        cursor.close()


def _state(value: object) -> State:
    if value == "logging":
        return "logging"
    if value == "queued":
        return "queued"
    if value == "deferred":
        return "deferred"
    if value == "delivered":
        return "delivered"
    if value == "bounced":
        return "bounced"
    raise _Unreadable(f"unknown recipient state {value!r}")


def _remove_if_done(conn: sqlite3.Connection, queue_id: str) -> bool:
    left = conn.execute(
        "SELECT 1 FROM recipients WHERE message_id = ? AND state IN ('queued', 'deferred') LIMIT 1",
        (queue_id,),
    ).fetchone()
    if left is not None:
        return False
    conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
    conn.execute("DELETE FROM recipients WHERE message_id = ?", (queue_id,))
    return True


def _set_aside(conn: sqlite3.Connection, queue_id: str, reason: str) -> None:
    rcpts = "\n".join(
        f"{a} {s}"
        for a, s in conn.execute(
            "SELECT address, state FROM recipients WHERE message_id = ? ORDER BY idx", (queue_id,)
        )
    )
    row = conn.execute("SELECT sender, data FROM messages WHERE id = ?", (queue_id,)).fetchone()
    sender, data = (row[0], row[1]) if row is not None else (None, None)
    conn.execute(
        "INSERT INTO corrupt (id, set_aside_at, reason, sender, recipients, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (queue_id, time.time(), reason, sender, rcpts, data),
    )
    conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
    conn.execute("DELETE FROM recipients WHERE message_id = ?", (queue_id,))

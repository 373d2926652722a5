"""What the verifier's worker processes on one host share: the request times behind the
rate limits and the metrics' counters, in one SQLite database under the runtime directory.

A limit counted per process lets a client through N times over with N workers, and a
scrape of one worker sees a fraction of the traffic. SQLite in WAL mode gives every
process the same figures and needs nothing running besides the verifier. Nothing in it
outlives the verifier's run: the launcher starts it empty, and the durability of a
counter is not worth an fsync (`synchronous=OFF`).

Every write is one statement (`execute`), never BEGIN ... COMMIT around several. The
write lock is shared by the processes and SQLite waits for it by polling (a sleep of
1 ms, then 2, 5, 10 ...), on the event loop's thread; a multi-statement transaction held
it across each statement's GIL hand-back, which waits for a check thread to let go (up
to the 5 ms switch interval), and the other worker's event loop slept meanwhile (9-13%
of a loop's wall time on a busy host, bench/README.md). One statement holds the lock only
inside SQLite's own step, with the GIL released: tens of microseconds.

Nothing from an upload is ever written here: client addresses, organisation codes,
verdicts and reasons only.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

DATABASE = "shared.sqlite"
LOCK = "verifier.lock"
# A writer holds the lock for one statement; waiting longer means something is wrong with
# the disk, and the request fails rather than hang.
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (bucket TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS hits_by_bucket ON hits (bucket, at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (name, labels)
);
CREATE TABLE IF NOT EXISTS gauges (
    name TEXT NOT NULL, pid INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (name, pid)
);
"""


class SharedState:
    """One connection per process; safe to use from several threads of it."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.executescript(_SCHEMA)

    @classmethod
    def in_memory(cls) -> SharedState:
        """For one process that nobody launched with workers (an app embedded in tests)."""
        return cls(":memory:")

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> int:
        """One statement, atomic on its own (SQLite's autocommit); the rows it changed."""
        with self._lock:
            return self._db.execute(sql, parameters).rowcount

    def read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RuntimeDirError(RuntimeError):
    """The runtime directory cannot be made ours: in use by another verifier, or not
    writable."""


def prepare(directory: Path) -> tuple[Path, int]:
    """Makes `directory` (0700) ours for this run: locked against a second verifier, and
    with an empty database. Returns the database path and the lock's descriptor, which the
    caller keeps open for as long as it runs."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise RuntimeDirError(f"runtime directory {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        database = directory / DATABASE
        for stale in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            stale.unlink(missing_ok=True)
        SharedState(database).close()  # the schema, before any worker races to make it
    except BlockingIOError:
        os.close(fd)
        raise RuntimeDirError(f"{directory} is in use by another verifier") from None
    except (OSError, sqlite3.Error) as exc:
        os.close(fd)
        raise RuntimeDirError(f"runtime directory {directory}: {exc}") from exc
    return database, fd

"""Rate limits on verifications: a sliding window of request times per bucket (a client
address, or an organisation), kept in the state all worker processes of the host share,
so that N workers let a client through as often as one would.

Times come from the monotonic clock, which every process of the host reads alike; the
shared state starts empty with the verifier, so a reboot cannot mix two clocks' times.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable

from verifier.shared import SharedState

WINDOW = 60.0


class RateLimiter:
    def __init__(
        self, state: SharedState, per_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self._state = state
        self._clock = clock
        self._purged = clock()

    def take(self, bucket: str, count: int = 1) -> int:
        """0 when `count` verifications of `bucket` may go ahead (and counts them all),
        else the seconds until they may (nothing is counted then). `count` must not
        exceed the limit."""
        if self.per_minute <= 0:
            return 0
        now = self._clock()
        with self._state.transaction() as db:
            self._forget(db, bucket, now)
            (used,) = db.execute("SELECT count(*) FROM hits WHERE bucket = ?", (bucket,)).fetchone()
            excess = used + count - self.per_minute
            if excess > 0:
                # The request fits once the `excess` oldest times have left the window.
                (oldest,) = db.execute(
                    "SELECT at FROM hits WHERE bucket = ? ORDER BY at LIMIT 1 OFFSET ?",
                    (bucket, min(excess, used) - 1),
                ).fetchone()
                return max(1, math.ceil(float(oldest) + WINDOW - now))
            db.executemany("INSERT INTO hits (bucket, at) VALUES (?, ?)", [(bucket, now)] * count)
        return 0

    def wait(self, bucket: str) -> int:
        """0 when one more verification of `bucket` would go ahead, else the seconds until
        it would; counts nothing (a batch looks before it reads its body)."""
        if self.per_minute <= 0:
            return 0
        now = self._clock()
        rows = self._state.read(
            "SELECT at FROM hits WHERE bucket = ? AND at > ? ORDER BY at",
            (bucket, now - WINDOW),
        )
        if len(rows) < self.per_minute:
            return 0
        at = rows[len(rows) - self.per_minute][0]
        assert isinstance(at, float)
        oldest = at
        return max(1, math.ceil(oldest + WINDOW - now))

    def _forget(self, db: sqlite3.Connection, bucket: str, now: float) -> None:
        db.execute("DELETE FROM hits WHERE bucket = ? AND at <= ?", (bucket, now - WINDOW))
        # Buckets that never come back (a flood of distinct addresses) go once a window.
        if now - self._purged > WINDOW:
            db.execute("DELETE FROM hits WHERE at <= ?", (now - WINDOW,))
            self._purged = now

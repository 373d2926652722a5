"""Rate limits on verifications: a sliding window of request times per bucket (a client
address, or an organisation), kept in the state all worker processes of the host share,
so that N workers let a client through as often as one would.

Times come from the monotonic clock, which every process of the host reads alike; the
shared state starts empty with the verifier, so a reboot cannot mix two clocks' times.
"""

from __future__ import annotations

import math
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
        self._forget(now)
        # The check and the insert are one statement: SQLite runs it under the write lock
        # as a whole, so two workers cannot both take the last place in a window.
        taken = self._state.execute(
            _TAKE, (count, bucket, now, bucket, now - WINDOW, count, self.per_minute)
        )
        if taken:
            return 0
        return self._until_room(bucket, now, count)

    def wait(self, bucket: str) -> int:
        """0 when one more verification of `bucket` would go ahead, else the seconds until
        it would; counts nothing (a batch looks before it reads its body)."""
        if self.per_minute <= 0:
            return 0
        return self._until_room(bucket, self._clock(), 1)

    def _until_room(self, bucket: str, now: float, count: int) -> int:
        """The seconds until `count` more fit in `bucket`'s window, 0 if they do now. Read
        outside the take: a Retry-After may be a second off under a race, a quota never."""
        rows = self._state.read(
            "SELECT at FROM hits WHERE bucket = ? AND at > ? ORDER BY at",
            (bucket, now - WINDOW),
        )
        # The request fits once the `excess` oldest times have left the window.
        excess = len(rows) + count - self.per_minute
        if excess <= 0:
            return 0
        at = rows[min(excess, len(rows)) - 1][0]
        assert isinstance(at, float)
        return max(1, math.ceil(at + WINDOW - now))

    def _forget(self, now: float) -> None:
        """Times out of the window count for nothing (every query reads `at > now -
        WINDOW`); they are deleted once a window, all buckets at once, so that a flood of
        distinct addresses does not grow the table."""
        if now - self._purged > WINDOW:
            self._state.execute("DELETE FROM hits WHERE at <= ?", (now - WINDOW,))
            self._purged = now


# `count` rows of (bucket, now), inserted only if the window leaves room for all of them.
# The subquery does not depend on the rows inserted: SQLite evaluates it once, before any.
# It starts with INSERT, not WITH, so that sqlite3 knows it for a write and counts its rows.
_TAKE = """
INSERT INTO hits (bucket, at)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
SELECT ?, ? FROM n
WHERE (SELECT count(*) FROM hits WHERE bucket = ? AND at > ?) + ? <= ?
"""

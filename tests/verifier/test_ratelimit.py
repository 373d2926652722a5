"""The sliding window per bucket, shared by every connection to the host's state."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import Clock
from verifier.ratelimit import WINDOW, RateLimiter
from verifier.shared import SharedState, prepare


def test_the_limit_holds_per_bucket_and_frees_up_after_a_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(SharedState.in_memory(), 3, clock)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    clock.now += 10
    assert limiter.take("a") == 50  # the first request leaves the window in 50 s
    assert limiter.take("b") == 0
    clock.now += 50
    assert limiter.take("a") == 0


def test_zero_means_no_limit() -> None:
    limiter = RateLimiter(SharedState.in_memory(), 0)
    assert all(limiter.take("a") == 0 for _ in range(1000))
    assert limiter.wait("a") == 0


def test_a_batch_is_counted_whole_or_not_at_all() -> None:
    clock = Clock()
    limiter = RateLimiter(SharedState.in_memory(), 5, clock)
    assert limiter.take("org:A", 3) == 0
    clock.now += 20
    assert limiter.take("org:A", 1) == 0
    # 4 used: 3 more need the first three times gone, at 1000 + 60.
    assert limiter.take("org:A", 3) == 40
    assert limiter.take("org:A", 1) == 0  # the refused batch took nothing
    assert limiter.take("org:A", 1) == 40


def test_looking_counts_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(SharedState.in_memory(), 2, clock)
    assert limiter.wait("a") == 0
    assert limiter.take("a") == 0
    assert limiter.wait("a") == 0
    assert limiter.take("a") == 0
    clock.now += 15
    assert limiter.wait("a") == 45
    assert limiter.wait("b") == 0


def test_two_connections_to_the_same_state_share_the_window(tmp_path: Path) -> None:
    """What two worker processes do: each has its own connection to the database."""
    database, _lock = prepare(tmp_path / "run")
    clock = Clock()
    first = RateLimiter(SharedState(database), 4, clock)
    second = RateLimiter(SharedState(database), 4, clock)
    assert [first.take("ip:192.0.2.1"), second.take("ip:192.0.2.1")] == [0, 0]
    assert [first.take("ip:192.0.2.1"), second.take("ip:192.0.2.1")] == [0, 0]
    assert first.take("ip:192.0.2.1") == 60
    assert second.take("ip:192.0.2.1") == 60


def test_buckets_that_never_return_are_forgotten() -> None:
    clock = Clock()
    state = SharedState.in_memory()
    limiter = RateLimiter(state, 5, clock)
    for i in range(2000):
        limiter.take(f"ip:10.0.{i // 256}.{i % 256}")
    clock.now += WINDOW + 1
    limiter.take("ip:192.0.2.9")
    assert state.read("SELECT count(*) FROM hits") == [(1,)]


class _FormerLimiter:
    """verifier/ratelimit.py as it was (commit 3dcad89): BEGIN IMMEDIATE, delete, count,
    insert, COMMIT. The one-statement take must answer exactly as it did."""

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._db = sqlite3.connect(":memory:", isolation_level=None)
        self._db.execute("CREATE TABLE hits (bucket TEXT NOT NULL, at REAL NOT NULL)")

    def take(self, bucket: str, count: int = 1) -> int:
        now = self._clock()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM hits WHERE bucket = ? AND at <= ?", (bucket, now - WINDOW))
            (used,) = db.execute("SELECT count(*) FROM hits WHERE bucket = ?", (bucket,)).fetchone()
            excess = used + count - self.per_minute
            if excess > 0:
                (oldest,) = db.execute(
                    "SELECT at FROM hits WHERE bucket = ? ORDER BY at LIMIT 1 OFFSET ?",
                    (bucket, min(excess, used) - 1),
                ).fetchone()
                return max(1, math.ceil(float(oldest) + WINDOW - now))
            db.executemany("INSERT INTO hits (bucket, at) VALUES (?, ?)", [(bucket, now)] * count)
        finally:
            db.execute("COMMIT")
        return 0

    def wait(self, bucket: str) -> int:
        now = self._clock()
        rows = self._db.execute(
            "SELECT at FROM hits WHERE bucket = ? AND at > ? ORDER BY at", (bucket, now - WINDOW)
        ).fetchall()
        if len(rows) < self.per_minute:
            return 0
        oldest: float = rows[len(rows) - self.per_minute][0]
        return max(1, math.ceil(oldest + WINDOW - now))


@given(
    per_minute=st.integers(1, 6),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.5, 1.0, 7.25, 30.0, 59.5, 60.0, 61.0, 200.0]),
            st.sampled_from(["ip:a", "ip:b", "org:C"]),
            st.sampled_from(["take", "wait"]),
            st.integers(1, 6),
        ),
        max_size=40,
    ),
)
@settings(max_examples=300, deadline=None)
def test_every_answer_is_the_one_the_former_limiter_gave(
    per_minute: int, steps: list[tuple[float, str, str, int]]
) -> None:
    clock = Clock()
    ours, former = (
        RateLimiter(SharedState.in_memory(), per_minute, clock),
        _FormerLimiter(per_minute, clock),
    )
    for advance, bucket, action, count in steps:
        clock.now += advance
        if action == "wait":
            assert ours.wait(bucket) == former.wait(bucket)
        else:
            count = min(count, per_minute)
            assert ours.take(bucket, count) == former.take(bucket, count)


def _take_all(database: str, per_minute: int, tries: int, count: int) -> int:
    limiter = RateLimiter(SharedState(database), per_minute)
    return sum(count for _ in range(tries) if limiter.take("org:SHARED", count) == 0)


def test_workers_taking_at_once_never_exceed_the_quota(tmp_path: Path) -> None:
    """Four processes (as many workers) race for one organisation's 60 a minute, singly and
    in batches of 3: exactly 60 get through, whatever the interleaving."""
    database, _lock = prepare(tmp_path / "run")
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        jobs = [(str(database), 60, 40, 1 + 2 * (i % 2)) for i in range(4)]
        admitted = sum(pool.starmap(_take_all, jobs))
    assert admitted == 60
    assert SharedState(database).read("SELECT count(*) FROM hits") == [(60,)]

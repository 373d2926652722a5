"""The sliding window per bucket, shared by every connection to the host's state."""

from __future__ import annotations

from pathlib import Path

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

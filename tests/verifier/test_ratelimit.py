"""The per-client sliding window."""

from __future__ import annotations

from verifier.ratelimit import MAX_CLIENTS, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_holds_per_client_and_frees_up_after_a_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(3, clock)
    assert [limiter.check("a") for _ in range(3)] == [0, 0, 0]
    clock.now += 10
    assert limiter.check("a") == 50  # the first request leaves the window in 50 s
    assert limiter.check("b") == 0
    clock.now += 50
    assert limiter.check("a") == 0


def test_zero_means_no_limit() -> None:
    limiter = RateLimiter(0)
    assert all(limiter.check("a") == 0 for _ in range(1000))


def test_a_flood_of_addresses_does_not_grow_memory_without_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(5, clock)
    for i in range(MAX_CLIENTS + 500):
        limiter.check(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._seen) <= MAX_CLIENTS

"""Per-client rate limit on verifications: a sliding window of request times per address.

The state lives in the process; with several uvicorn workers each enforces the limit on its
own share of the connections, which is why the default is per worker and conservative.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW = 60.0
# Bounds the memory a flood of distinct addresses can take; idle entries go first.
MAX_CLIENTS = 10_000


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> int:
        """0 when `client` may go ahead (and counts it), else seconds until it may retry."""
        if self.per_minute <= 0:
            return 0
        now = self._clock()
        with self._lock:
            times = self._seen.get(client)
            if times is None:
                if len(self._seen) >= MAX_CLIENTS:
                    self._forget_idle(now)
                times = self._seen[client] = deque()
            while times and times[0] <= now - WINDOW:
                times.popleft()
            if len(times) >= self.per_minute:
                return max(1, math.ceil(times[0] + WINDOW - now))
            times.append(now)
            return 0

    def _forget_idle(self, now: float) -> None:
        idle = [c for c, t in self._seen.items() if not t or t[-1] <= now - WINDOW]
        for client in idle:
            del self._seen[client]
        if len(self._seen) >= MAX_CLIENTS:
            self._seen.clear()  # under a flood, forgetting beats growing without bound

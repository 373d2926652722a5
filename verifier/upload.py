"""Reading an upload's body, bounded in size, in time and in the memory all uploads share.

Time follows Apache's mod_reqtimeout "body=T,MinRate=R": the body must start within T
seconds, and each R bytes received extend the deadline by one second, so a large upload
on a slow but steady line passes while a trickle is cut. No pause between two chunks may
last longer than T either. Memory: a request reserves the
bytes it may hold before its body is read, from one budget per process, so that many
slow uploads cannot together exhaust the verifier's memory.

Nothing here looks at, logs or keeps the bytes beyond handing them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from starlette.types import Receive

from verifier.settings import Limits

# After the size limit we keep reading (and dropping) this much more so the client, still
# sending, gets to read our 413 instead of a reset connection.
_DRAIN_FACTOR = 4


class TooLarge(Exception):
    pass


class TimedOut(Exception):
    pass


class Disconnected(Exception):
    pass


@dataclass(frozen=True)
class Pace:
    timeout: float  # seconds for the first bytes, and the base of the deadline
    min_rate: int  # bytes per second of extension

    @classmethod
    def of(cls, limits: Limits) -> Pace:
        return cls(float(limits.body_timeout_seconds), limits.body_min_rate)

    def deadline(self, start: float, received: int) -> float:
        return start + self.timeout + received / self.min_rate


async def read_body(receive: Receive, declared: str, limit: int, pace: Pace) -> bytes:
    """The body, at most `limit` bytes, read at `pace`. `declared` is the Content-Length
    header ("" when chunked). Raises TooLarge, TimedOut or Disconnected."""
    too_large = declared.isdigit() and int(declared) > limit
    body = bytearray()
    received = drained = 0
    start = anyio.current_time()
    more = True
    while more:
        # One timeout per receive, recomputed from the bytes so far: a read never waits
        # past the point where the average rate would fall below the minimum, nor longer
        # than `timeout` (Apache's core Timeout does the same per read): bytes sent fast
        # and then held would otherwise keep their memory for hours.
        now = anyio.current_time()
        wait = min(pace.deadline(start, received) - now, pace.timeout)
        if wait <= 0:
            raise TimedOut
        with anyio.move_on_after(wait) as scope:
            message = await receive()
        if scope.cancelled_caught:
            raise TimedOut
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        received += len(chunk)
        if too_large:
            drained += len(chunk)
            if drained > limit * _DRAIN_FACTOR:
                break
            continue
        body.extend(chunk)
        if len(body) > limit:
            too_large = True
            body.clear()
    if too_large:
        raise TooLarge
    return bytes(body)


def reservation(declared: str, ceiling: int) -> int:
    """Bytes a request may come to hold: its Content-Length, the most we ever hold when
    it has none (chunked), nothing when it is over the limit (drained, never kept)."""
    if not declared.isdigit():
        return ceiling
    size = int(declared)
    return size if size <= ceiling else 0


class MemoryBudget:
    """Upload bytes held at once in this process. One event loop uses it, so the check
    and the reservation happen with no await between them and need no lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0

    def take(self, size: int) -> bool:
        """Reserves `size` bytes if they fit; the caller gives them back, whatever happens."""
        if self.in_use + size > self.capacity:
            return False
        self.in_use += size
        return True

    def give_back(self, size: int) -> None:
        self.in_use -= size

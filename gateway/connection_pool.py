"""Idle SMTP sessions kept for reuse, each closed (QUIT) once it has sat idle too long.

A session handed back after a transaction waits here, per destination, for the next
message. It is closed ``idle_timeout`` seconds later by a timer of its own, without
waiting for a next message to find it stale: an idle session holds a slot on the peer,
whose own timeout (RFC 5321 4.5.3.2.7: at least 5 minutes) would otherwise end it
rudely. The caller checks a session it takes back (RSET) before reusing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class Session(Protocol):
    @property
    def is_connected(self) -> bool: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Session)
K = TypeVar("K", bound=Hashable)


@dataclass(eq=False)  # found again by identity
class _Idle(Generic[S]):
    session: S
    timer: asyncio.TimerHandle | None = None


class IdlePool(Generic[K, S]):
    def __init__(self, idle_timeout: float, quit: Callable[[S], Coroutine[Any, Any, None]]) -> None:
        self._timeout = idle_timeout
        self._quit = quit
        self._idle: dict[K, list[_Idle[S]]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def park(self, key: K, session: S) -> None:
        """Keep ``session`` for the next message to ``key``."""
        idle = _Idle(session)
        idle.timer = asyncio.get_running_loop().call_later(self._timeout, self._expire, key, idle)
        self._idle.setdefault(key, []).append(idle)

    def take(self, key: K) -> S | None:
        """The most recently parked session still connected, or None."""
        pool = self._idle.get(key, [])
        while pool:
            idle = pool.pop()
            if idle.timer is not None:
                idle.timer.cancel()
            if idle.session.is_connected:
                self._drop_if_empty(key)
                return idle.session
            idle.session.close()
        self._drop_if_empty(key)
        return None

    def __len__(self) -> int:
        return sum(len(pool) for pool in self._idle.values())

    async def close(self) -> None:
        """QUIT every idle session, and wait for those already closing."""
        idle = [i for pool in self._idle.values() for i in pool]
        self._idle.clear()
        for i in idle:
            if i.timer is not None:
                i.timer.cancel()
        await asyncio.gather(*(self._quit(i.session) for i in idle), *self._closing)

    def _expire(self, key: K, idle: _Idle[S]) -> None:
        pool = self._idle.get(key, [])
        if idle not in pool:
            return
        pool.remove(idle)
        self._drop_if_empty(key)
        task = asyncio.get_running_loop().create_task(self._quit(idle.session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _drop_if_empty(self, key: K) -> None:
        if key in self._idle and not self._idle[key]:
            del self._idle[key]

"""uvicorn's h11 protocol with a deadline on request headers (mod_reqtimeout's `header=`).

uvicorn reads request headers before the application runs and puts no bound on how long
that takes: a connection that sends nothing, or trickles header bytes, stays open for
ever (its keep-alive timer only runs between requests, and any byte cancels it). Here the
headers of every request, the first on a connection and each kept-alive one after it,
must be complete within `header_timeout` seconds, or the connection gets a 408 and is
closed. Bodies are bounded where the application reads them (verifier/upload.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

log = logging.getLogger("verifier")

_TIMEOUT_TEXT = (
    b"En-tetes de la requete non recus a temps. / Request headers not received in time.\n"
)
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_TIMEOUT_TEXT)).encode("ascii") + b"\r\n"
    b"Connection: close\r\n\r\n" + _TIMEOUT_TEXT
)


class HeaderDeadlineProtocol(H11Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        # A new cycle is made exactly when a request's headers are complete.
        if self.cycle is not cycle:
            self._disarm()

    def on_response_complete(self) -> None:
        # Armed before uvicorn looks at pipelined data: a request already buffered
        # disarms it again in handle_events. Left-over body of a request answered early
        # (413, 503) is drained by uvicorn within this same deadline.
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        # Only while no response is under way can a 408 be told apart by the client.
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_RESPONSE)
        log.info("closed a connection: request headers not complete in %ss", self.header_timeout)
        self.transport.close()


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's `http=`: our protocol, never the "auto" choice (which
    would pick httptools when installed, without the deadline).

    A partial rather than a class made here, so that it pickles by reference into the
    worker processes uvicorn spawns; uvicorn only ever calls it with the protocol's
    arguments, which is why it may stand in for the class."""
    return cast(
        "type[asyncio.Protocol]",
        functools.partial(HeaderDeadlineProtocol, header_timeout=header_timeout),
    )

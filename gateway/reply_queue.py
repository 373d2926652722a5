"""An SMTP client whose replies queue up in order, so that several commands can be written
at once (RFC 2920 PIPELINING) and each reply still pairs with its own command.

aiosmtplib 5.1.3's protocol holds one parsed reply at a time and drops what arrives while
it waits to be read, so a server answering pipelined commands in one TCP segment would
lose all replies but the first. `ReplyQueue` replaces it under aiosmtplib's own `SMTP`
client once the greeting is read (`QueuedSMTP`): connection, EHLO, STARTTLS, AUTH and the
lock-step commands are aiosmtplib's, unchanged. It counts the replies owed for what was
written (one per ``write``, as aiosmtplib writes one command at a time; `send` for a
pipelined group) and parses no more than that.

A server that sends a reply nobody asked for (more replies than commands, a reply before
its command, anything after the greeting or between transactions) is out of step: no
reply of it, those already queued included, can be trusted to pair with its command, so
every read raises `OutOfStep` and the connection is closed. One that sends a malformed or
overlong reply, or closes, fails the same way, but the replies parsed before the fault
are still read in order (a 421 before the close says why).
"""

from __future__ import annotations

import asyncio
import collections
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import aiosmtplib
import aiosmtplib.protocol
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default

from gateway.dot_stuffing import data_body

_MAX_REPLY: Final = aiosmtplib.protocol.MAX_RESPONSE_LENGTH
_INVALID: Final = -1  # aiosmtplib's code for a reply it cannot parse


class OutOfStep(aiosmtplib.SMTPServerDisconnected):
    """The server sent a reply to no command: the connection was dropped."""


class ReplyQueue(aiosmtplib.protocol.SMTPProtocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        connection_lost_callback: Callable[[aiosmtplib.protocol.SMTPProtocol], None] | None = None,
    ) -> None:
        super().__init__(loop, connection_lost_callback)
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        self._owed = 0  # replies the server owes for commands written
        self._failure: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def lock(self) -> asyncio.Lock:
        """Held for a whole exchange, as aiosmtplib holds it for one command."""
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        return self._command_lock

    def send(self, commands: bytes, replies: int) -> None:
        """Write `commands` at once; the server owes `replies` replies for them."""
        if self._failure is not None:
            raise self._failure
        super().write(commands)
        self._owed += replies

    def write(self, data: bytes) -> None:
        # aiosmtplib writes one command (or one message body) at a time: one reply each.
        self.send(data, 1)

    def data_received(self, data: bytes) -> None:
        if self._failure is not None or self.transport is None:
            return
        self._buffer.extend(data)
        while self._buffer:
            if self._owed == 0:
                self._fail(OutOfStep("the server sent a reply to no command"))
                return
            try:
                reply = self._read_response_from_buffer()
            except aiosmtplib.SMTPResponseException as exc:  # malformed or overlong line
                self._fail(exc)
                return
            if reply is None:  # the rest of a reply is still to come
                if len(self._buffer) > _MAX_REPLY:
                    self._fail(aiosmtplib.SMTPResponseException(_INVALID, "Response too long"))
                return
            self._owed -= 1
            self._replies.append(reply)
            self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), close=False)
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._quit_sent and self._owed and self._failure is None:
            self._replies.append(SMTPResponse(221, ""))  # as aiosmtplib: QUIT needs no reply
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost, close=False)
        super().connection_lost(exc)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:  # noqa: ASYNC109
        """The next reply, in the order the commands were written."""
        if not self._replies and self._failure is None and self.transport is not None:
            self._waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                # The late reply would pair with the next command: give the session up.
                self._fail(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))
            finally:
                self._waiter = None
        if self._replies:
            return self._replies.popleft()
        if self._failure is not None:
            raise self._failure
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")

    async def execute_data_command(
        self,
        message: bytes,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SMTPResponse:
        """aiosmtplib's DATA, with the body made by `data_body` (the same bytes, cheaper)."""
        body = data_body(message)
        async with self.lock:
            self.write(b"DATA\r\n")
            start = await self.read_response(timeout=timeout)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            self.write(body)
            response = await self.read_response(timeout=timeout)
            if response.code != aiosmtplib.SMTPStatus.completed:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    def take_over(self, transport: asyncio.BaseTransport, unread: bytes) -> None:
        """Receive for `transport` from now on; `unread`: bytes the previous protocol had
        buffered past the greeting, which no command asked for."""
        transport.set_protocol(self)
        self.connection_made(transport)
        if unread:
            self._fail(OutOfStep("the server sent more than its greeting"))

    @property
    def in_step(self) -> bool:
        """False once the server has sent a reply to no command."""
        return not isinstance(self._failure, OutOfStep)

    def _fail(self, failure: aiosmtplib.SMTPException, *, close: bool = True) -> None:
        if self._failure is None:
            self._failure = failure
        if isinstance(failure, OutOfStep):
            self._replies.clear()
        self._buffer.clear()
        self._wake()
        if close and self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class QueuedSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, reading its replies through a `ReplyQueue`."""

    # The recipients the last lock-step `sendmail` saw refused at RCPT, with their replies:
    # when DATA or the message is refused afterwards, aiosmtplib raises that refusal alone.
    refused_at_rcpt: Mapping[str, SMTPResponse] = types.MappingProxyType({})

    async def _send_recipients(
        self,
        recipients: Sequence[str],
        options: Iterable[str],
        encoding: str = "ascii",
        timeout: float | Default | None = Default.token,  # noqa: ASYNC109
    ) -> dict[str, SMTPResponse]:
        self.refused_at_rcpt = types.MappingProxyType({})
        refused: dict[str, SMTPResponse] = await super()._send_recipients(
            recipients, options, encoding, timeout
        )
        self.refused_at_rcpt = refused
        return refused

    async def _create_connection(self, timeout: float | None) -> SMTPResponse:  # noqa: ASYNC109
        greeting = await super()._create_connection(timeout)
        first, transport = self.protocol, self.transport
        if first is None or transport is None or not first.is_connected:
            return greeting  # lost already: the next command says so
        queue = ReplyQueue(self.loop, connection_lost_callback=self._on_connection_lost)
        queue.take_over(transport, bytes(first._buffer))
        self.protocol = queue
        return greeting

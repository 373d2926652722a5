"""The SMTP session: aiosmtpd's protocol, narrowed, and the handler that accepts a message.

`GatewaySMTP` is aiosmtpd's `SMTP` with what a relay for health data needs and aiosmtpd
leaves out: command lines must end with CRLF (bare LF or CR is refused, so a command
cannot be smuggled), a separate DATA timeout, a 421 reply before a timeout closes the
connection, connection limits, enhanced status codes on aiosmtpd's own replies, STARTTLS
refused once TLS is active and its handshake bounded in time, AUTH mechanism names
matched without regard to case, budgets for junk commands and for errors, and a generic
reply (never a Python error text) when something fails inside. What a client does to its
own connection (a failed TLS handshake, a reset, a close mid-command) is logged as one
line, never as a traceback: the log's tracebacks are kept for the gateway's own faults.

`Handler` is the aiosmtpd handler: AUTH (PLAIN, LOGIN; scrypt hashes checked in a
thread; delay then lockout per IP and per user), the policy checks, and the DATA flow
policy -> seal -> durable spool -> ``250 2.0.0 Queued as <id>``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import functools
import logging
import re
import ssl
import sys
import time
import weakref
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from email._header_value_parser import AddrSpec, AngleAddr, get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any, AnyStr, Protocol, TypeVar, cast

import aiosmtpd
from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    MISSING,
    SMTP,
    Envelope,
    Session,
    TLSSetupException,
    syntax,
)

from gateway import mail_params, policy, smtp_setup
from gateway.insurers import RULE_ENDED, Insurers, Violation
from gateway.metrics import Metrics
from gateway.policy import Client, ClientDirectory, Rejection
from gateway.seal import SealError, UnsealableMessage
from gateway.settings import ClientSettings, PasswordHash, parse_password_hash, verify_password
from gateway.spool import Envelope as SpoolEnvelope
from orgs.registry import View

log = logging.getLogger("sealpost.gateway.smtp")
_aiosmtpd_log = logging.getLogger("mail.log")  # aiosmtpd's own, for its warnings

# A stand-in hash checked for unknown users, so a login name's existence does not show in
# the time a failed AUTH takes.
_DUMMY_HASH = PasswordHash(16384, 8, 1, b"\0" * 16, b"\0" * 32)
_SHUTDOWN_REPLY = "421 4.3.2 Service shutting down, try again later"
_TLS_ACTIVE_REPLY = "503 5.5.1 Error: TLS already active"  # Postfix's words

# Commands that carry no mail: a client may send a few per message, never thousands (a
# pipeline of 20,000 NOOPs kept a session busy for as long as the client liked). Postfix
# counts NOOP, VRFY, ETRN and RSET; a repeated EHLO, HELO, HELP, EXPN or STARTTLS is no
# more useful, nor is a MAIL or RCPT that is refused (a client going on after 452 "too
# many recipients", or trying sender after sender; Postfix's error limits). The count
# starts again with each message accepted, so a long-lived batch connection that sends
# RSET or NOOP between its messages is never cut.
JUNK_COMMANDS = ("NOOP", "RSET", "VRFY", "EXPN", "HELP", "EHLO", "HELO", "STARTTLS")
JUNK_WHEN_REFUSED = ("MAIL", "RCPT")

# Errors: every 4xx or 5xx reply counts, whatever drew it (an empty or unknown line, a
# command out of order, one refused before STARTTLS, a message refused for its content,
# a failed AUTH), as Postfix's smtpd_hard_error_limit; most of them are no junk command,
# so a client could otherwise draw them without end. A 4.5.3 (too many recipients) is
# left out: a client may send more recipients than allowed and the rest in the next
# transaction (RFC 5321 4.5.3.1.10; Postfix's smtpd_recipient_overshoot_limit), and the
# junk budget counts them. As in Postfix, an accepted message forgives the errors before.
_TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
_NOT_AN_ERROR = "452 4.5.3 "

# Raised by what the client does to its connection, not by a fault of the gateway's: a TLS
# handshake that fails (aiosmtpd wraps its error in TLSSetupException), a reset or broken
# pipe, an end of stream in the middle of a read.
_CLIENT_FAULTS = (TLSSetupException, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)


class SealedLike(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def documents(self) -> tuple[str, ...]: ...

    @property
    def entry(self) -> bytes: ...


class SealerLike(Protocol):
    async def seal(self, raw: bytes, domain: str) -> SealedLike: ...


class SpoolLike(Protocol):
    async def put(self, envelope: SpoolEnvelope) -> str: ...


@dataclass(frozen=True)
class SessionLimits:
    max_message_size: int
    max_recipients: int
    command_timeout: float
    data_timeout: float
    max_line_length: int
    # Commands that move no mail (JUNK_COMMANDS) allowed per message, as Postfix's
    # smtpd_junk_command_limit: past it, 421 and the connection is closed.
    max_junk_commands: int = 100
    # 4xx/5xx replies allowed before a message is accepted, as Postfix's
    # smtpd_hard_error_limit: past it, 421 and the connection is closed. 0: no limit.
    max_errors: int = 20
    # The TLS handshake: on smtps from accept, after STARTTLS from the 220, to its end.
    tls_handshake_timeout: float = 30.0


class BareLineEnding(Exception):
    """A command line ended with a bare LF, or held a bare CR."""


class ForbiddenCommandBytes(Exception):
    """A command line held NUL or another control character, or was not UTF-8."""


# RFC 5321 4.1.1/2.3.8: commands are printable text; TAB is allowed as space is, CR and LF
# are the line end (checked apart), anything else below 0x20 and DEL is no part of one.
_COMMAND_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class _StrictLineReader(asyncio.StreamReader):
    # StreamReader's own, which typeshed leaves out (annotations only: nothing replaced).
    _limit: int
    _buffer: bytearray
    _eof: bool
    _exception: BaseException | None
    _wait_for_data: Callable[[str], Awaitable[None]]
    _maybe_resume_transport: Callable[[], None]
    _overrun = False

    # `Any` because typeshed's buffer protocol type for the separator is private.
    async def readuntil(self, separator: Any = b"\n") -> bytes:
        try:
            line = await super().readuntil(separator)
        except asyncio.LimitOverrunError:
            self._overrun = True
            raise
        # The rest of an overlong line (it may start between its CR and LF) is thrown away
        # with a "too long" reply; it is never a command, so it needs no check.
        tail, self._overrun = self._overrun, False
        # aiosmtpd reads commands up to LF and DATA lines up to CRLF; only the former can
        # end on a bare LF, and neither may carry a CR that is not part of the line end.
        if separator == b"\n" and not tail:
            if line[-2:-1] != b"\r" or b"\r" in line[:-2]:
                raise BareLineEnding
            # aiosmtpd would pass NUL on (a reader stopping there sees another command)
            # and turn bytes that are not UTF-8 into lone surrogates, which no reply, log
            # line or spool record can encode (RFC 6531 3.3: SMTPUTF8 text is UTF-8).
            if _COMMAND_CONTROL.search(line, 0, len(line) - 2) or not _utf8(line):
                raise ForbiddenCommandBytes
        return line

    async def readline(self) -> bytes:
        """As StreamReader's, which aiosmtpd uses for AUTH answers. On an overlong line it
        drops the line itself and raises ValueError: no rest is left to skip, so the next
        command is checked for bare line ends as usual."""
        try:
            return await super().readline()
        except ValueError:
            self._overrun = False
            raise

    async def read_data(self, max_size: int) -> bytes | None:
        """The message after DATA, up to the CRLF "." CRLF that ends it, dot-unstuffed; None
        when it is larger than `max_size` (then it is read to its end and dropped).

        The end is the first ".\r\n" preceded by CRLF (or at the very start, the DATA
        line's CRLF being the one before it); a "." after a bare LF or CR never ends the
        message. It is looked for in the reader's buffer as data comes (`_message_end`),
        and the message taken out in one copy: StreamReader.readuntil(b".\r\n") stopped at
        every line ending in a dot and copied each piece three times.
        """
        if self._exception is not None:
            raise self._exception
        line_limit = self._limit
        # The buffer may hold the whole message: past twice the limit StreamReader stops
        # reading from the socket (the line limit is checked on the message afterwards).
        limit = self._limit = max_size + 3
        buffer = self._buffer
        dropped = 0  # bytes of an oversized message already thrown away
        dot = 0  # where the next "." that may end the message is looked for
        try:
            while True:
                end, dot = _message_end(buffer, dot)
                if end != -1:
                    break
                if len(buffer) > limit and dot > 2:
                    # Too big already: keep only the two bytes the next "." is checked by.
                    del buffer[: dot - 2]
                    dropped += dot - 2
                    dot = 2
                if self._eof:
                    # As readuntil(b".\r\n") left it: what came after the last ".\r\n".
                    last = buffer.rfind(b".\r\n")
                    partial = bytes(buffer if last == -1 else buffer[last + 3 :])
                    buffer.clear()
                    raise asyncio.IncompleteReadError(partial, None)
                await self._wait_for_data("read_data")
            data = bytes(buffer[:end]) if dropped + end <= limit else None
            del buffer[:end]
            self._maybe_resume_transport()
        finally:
            self._limit = line_limit
        return None if data is None else unstuffed(data, 3)


def _message_end(buffer: bytearray, start: int) -> tuple[int, int]:
    """(end, resume): `end` is just past the "." CRLF that ends the message in `buffer` (-1
    while it has not come), `resume` where to look again once more data has come. No "."
    before `start` ends it; one at 0 is the first byte of the message.

    Dots are found with memchr (see `unstuffed`), up to _DOTS_CHECKED of them; then the
    five bytes CRLF "." CRLF are searched for."""
    size = len(buffer)
    dot = buffer.find(b".", start)
    for _ in range(_DOTS_CHECKED):
        if dot == -1:
            return -1, size
        if dot + 3 > size:
            return -1, dot  # its line end has not come yet
        if buffer[dot + 1 : dot + 3] == b"\r\n" and (dot == 0 or buffer[dot - 2 : dot] == b"\r\n"):
            return dot + 3, dot
        dot = buffer.find(b".", dot + 1)
    if dot == -1:
        return -1, size
    found = buffer.find(b"\r\n.\r\n", dot - 2)
    if found != -1:
        return found + 5, found + 2
    return -1, max(dot, size - 2)


# Dots looked at one by one before `unstuffed` searches for CRLF "." instead.
_DOTS_CHECKED = 32


def unstuffed(data: bytes, cut: int = 0) -> bytes:
    """`data` without its last `cut` bytes, its dot-stuffing undone (RFC 5321 4.5.2): a
    "." that starts a line is dropped.

    The same as dropping a leading "." and replacing CRLF "." by CRLF, but a message
    has few dots and CPython 3.11 finds one byte with memchr while it searches for the
    three of CRLF "." byte by byte (26 us for the bench's 27 KB, nearly all of it to
    find none): the dots are looked at first, up to _DOTS_CHECKED of them.
    """
    end = len(data) - cut
    start = 1 if data.startswith(b".", 0, end) else 0
    dot = data.find(b".", start + 2, end)
    for _ in range(_DOTS_CHECKED):
        if dot == -1:
            return data[start:end]
        if data[dot - 2 : dot] == b"\r\n":
            break
        dot = data.find(b".", dot + 1, end)
    else:
        if dot == -1 or data.find(b"\r\n.", dot - 2, end) == -1:
            return data[start:end]
    return data[start:end].replace(b"\r\n.", b"\r\n")


# RFC 2034 section 3: once ENHANCEDSTATUSCODES is advertised, every 2xx, 4xx and 5xx
# reply but the greeting and EHLO's carries one. aiosmtpd's own refusals (syntax errors,
# unknown commands and parameters) have none; each gets the one its code implies.
_STATUS_FOR = {500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 555: "5.5.4"}
# An angle address the email package's parser reads as written: dot-atoms of ASCII atext
# (no "=?", which it would try as an RFC 2047 encoded word), then the end, or spaces and
# a parameter (it drops the spaces, as folding white space).
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(?:[ \t]+(?=[^\s(])|\Z)")

_HAS_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")


def _with_status(reply: str) -> str:
    """`reply` with an enhanced status code if a 4xx or 5xx reply lacks one."""
    code = reply[:3]
    if not (code.isdigit() and code[0] in "45" and reply[3:4] in (" ", "-")):
        return reply
    if _HAS_STATUS.match(reply, 4):
        return reply
    status = _STATUS_FOR.get(int(code), f"{code[0]}.0.0")
    return f"{reply[:4]}{status} {reply[4:]}"


# aiosmtpd's own fixed replies carry no enhanced status code; ours do. (Its 552 for a SIZE
# over the limit is answered with the connection's own `_too_big`.)
_AIOSMTPD_SIZE_REPLY = "552 Error: message size exceeds fixed maximum message size"
_REPLIES = {
    "500 Command line too long": "500 5.5.6 Command line too long",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send EHLO first",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "454 TLS not available": "454 4.7.0 TLS not available",
    "501 Syntax: STARTTLS": "501 5.5.4 Syntax: STARTTLS",
    "501 Not enough value": "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
    "501 Too many values": "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
    "250 OK": "250 2.0.0 OK",
    "252 Cannot VRFY user, but will accept message and attempt delivery": (
        "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
    ),
    "221 Bye": "221 2.0.0 Bye",
}


def _utf8(line: bytes) -> bool:
    if line.isascii():  # nearly every command, and no decode needed
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------------------- connections


class Sessions:
    """Live sessions: connection limits (total and per client IP) and graceful shutdown."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._live: set[GatewaySMTP] = set()
        self._per_ip: collections.Counter[str] = collections.Counter()
        self.closing = False

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, session: GatewaySMTP, ip: str | None) -> str | None:
        """None when admitted, else the text of the 421 reply."""
        if self.closing:
            return "Service shutting down, try again later"
        if len(self._live) >= self.max_total:
            return "Too many connections, try again later"
        if ip is not None and self._per_ip[ip] >= self.max_per_ip:
            return "Too many connections from your address, try again later"
        self._live.add(session)
        if ip is not None:
            self._per_ip[ip] += 1
        return None

    def claim_ip(self, ip: str) -> bool:
        """Count an already admitted connection against `ip` (learnt from a PROXY header)."""
        if self._per_ip[ip] >= self.max_per_ip:
            return False
        self._per_ip[ip] += 1
        return True

    def release(self, session: GatewaySMTP, ip: str | None) -> None:
        self._live.discard(session)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    async def drain(self, grace: float) -> None:
        """Stop admitting; close idle sessions with a 421 now, and the others once their
        message is answered or `grace` seconds have passed."""
        self.closing = True
        deadline = time.monotonic() + grace
        while self._live:
            for session in list(self._live):
                if not session.busy:
                    session.close_with(_SHUTDOWN_REPLY)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for session in list(self._live):
            session.close_with(_SHUTDOWN_REPLY)
        # Give connection_lost callbacks a turn to run.
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------- protocol


_Command = TypeVar("_Command", bound=Callable[[Any, str], Coroutine[Any, Any, None]])


def _junk_counted(name: str, method: _Command) -> _Command:
    """`method` (a GatewaySMTP command) counted against the junk-command budget: past
    the limit, 421 and the connection closed. Wrapped once, on the class, rather than
    per connection."""
    only_refused = name in JUNK_WHEN_REFUSED
    too_many = f"421 4.7.0 Too many {name} commands, closing connection"

    # functools.wraps keeps aiosmtpd's syntax attributes, which HELP lists.
    @functools.wraps(method)
    async def counted(self: GatewaySMTP, arg: str) -> None:
        if self._junk >= self._limits.max_junk_commands:
            log.info("event=junk_limit client_ip=%s command=%s", self.client_ip, name)
            self.close_with(too_many)
            # Ends the command loop now: commands pipelined behind it are not served.
            raise asyncio.CancelledError
        await method(self, arg)
        if not only_refused or self._refused:
            self._junk += 1

    return cast(_Command, counted)


class GatewaySMTP(SMTP):
    def __init__(
        self,
        handler: Handler,
        *,
        sessions: Sessions,
        limits: SessionLimits,
        hostname: str,
        ident: str,
        tls_context: ssl.SSLContext | None,
        require_starttls: bool,
        auth_required: bool,
        auth_require_tls: bool,
        proxy_protocol_timeout: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # aiosmtpd keeps this table on the class and grows it on every EHLO; keep it ours.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        # Bounds a command line (below it, aiosmtpd's own 512-octet command limit applies);
        # message lines are checked by the handler.
        self.line_length_limit = limits.max_line_length + 3
        # SMTP.__init__, without its per-connection reflection, and with a stream reader
        # that refuses bare line ends.
        smtp_setup.setup(
            self,
            handler,
            lambda loop: _StrictLineReader(limit=self.line_length_limit, loop=loop),
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident=ident,
            tls_context=tls_context,
            require_starttls=require_starttls,
            timeout=limits.command_timeout,
            auth_required=auth_required,
            auth_require_tls=auth_require_tls,
            proxy_protocol_timeout=proxy_protocol_timeout,
            loop=loop,
        )
        self._sessions = sessions
        self._limits = limits
        # The idle timeout's deadline (loop time), and whether a timer is set for it or
        # sooner: see _reset_timeout.
        self._deadline = 0.0
        self._timer_set = False
        self._gathered: list[bytes] | None = None  # replies held back while EHLO answers
        self._admitted = False
        self._ip: str | None = None
        self._proxied_ip: str | None = None
        self._counted_ip: str | None = None
        # The socket as accepted (on smtps, under the TLS layer still being set up).
        self._accepted: asyncio.BaseTransport | None = None
        self._started = False  # aiosmtpd's session has begun (after any implicit TLS)
        self.busy = False
        # The client name after a successful AUTH.
        self.authenticated_client: str | None = None
        self._too_big = f"552 5.3.4 Message too big: at most {limits.max_message_size} bytes"
        # aiosmtpd's own command_call_limit is not used: its counts never start again, so
        # it would also cut a batch connection after so many messages. The commands that
        # count are wrapped once, on the class (`_junk_counted`).
        self._junk = 0
        self._refused = False  # the last reply was 4xx or 5xx
        self._errors = 0  # 4xx and 5xx replies since the last accepted message

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd 1.4.6's answer for MAIL, RCPT and VRFY, without the typing.Protocol
        class its own defines on each call for an annotation, and for the usual path
        without the email package's parser (together about 50 us, twice a message)."""
        if not arg:
            return "", ""
        # The common case, <dot-atom@dot-atom> in ASCII then parameters after spaces,
        # without the email package's general parser (40 us): its answer exactly.
        if (simple := _SIMPLE_PATH.match(arg)) and "=?" not in simple.group(1):
            found: tuple[str | None, str | None] = simple.group(1), arg[simple.end() :]
        else:
            found = self._getaddr_parsed(arg)
        addr, rest = found
        if addr is None:
            return None, None
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    @staticmethod
    def _getaddr_parsed(arg: str) -> tuple[str | None, str | None]:
        address: AngleAddr | AddrSpec
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr: str = address.addr_spec
        return addr, rest

    @property
    def client_ip(self) -> str | None:
        """The client's address; on a PROXY listener, the one the header carried (None
        until then, which no allow-list matches). Kept on the connection, never read from
        the session: aiosmtpd starts a new session at STARTTLS, and the balancer's own
        address must not pass for the client's then (an open relay when it is allowed)."""
        if self._proxy_timeout is not None:
            return self._proxied_ip
        return self._ip

    def admit(self, transport: asyncio.BaseTransport, *, reply: bool = True) -> bool:
        """Count the connection against the limits as it is accepted; when it is over
        them, close it (after a 421 when `reply`: not on the implicit-TLS port, where
        clear text would be garbage to a client that is starting its handshake)."""
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if isinstance(peer, tuple) else None
        # Behind a PROXY-protocol balancer every socket comes from the balancer; the
        # per-address count waits for the real address in handle_PROXY.
        counted_ip = None if self._proxy_timeout is not None else self._ip
        refusal = self._sessions.admit(self, counted_ip)
        if refusal is not None:
            log.info("event=refused client_ip=%s reason=%r", self._ip, refusal)
            assert isinstance(transport, asyncio.WriteTransport)
            if reply:
                transport.write(f"421 4.7.0 {refusal}\r\n".encode("ascii"))
            transport.close()
            return False
        self._admitted = True
        self._counted_ip = counted_ip
        self._accepted = transport
        return True

    def release(self) -> None:
        """Uncount a connection admitted but never started (a failed TLS handshake)."""
        if self._admitted:
            self._sessions.release(self, self._counted_ip)
            self._counted_ip = None
            self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._started:  # the TLS layer after STARTTLS: the same connection, anew
            self.authenticated_client = None
            super().connection_made(transport)
            return
        if not self._admitted and not self.admit(transport):
            return
        self._started = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._admitted:
            return
        self.release()
        if self._started:
            super().connection_lost(error)

    def count_proxied_ip(self, ip: str) -> bool:
        if not self._sessions.claim_ip(ip):
            return False
        self._counted_ip = self._proxied_ip = ip
        return True

    def close_with(self, reply: str) -> None:
        if self.transport is None and self._accepted is not None:
            self._accepted.close()  # mid-handshake on smtps: no reply can be read yet
            return
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's (the timeout starts again from now), without cancelling a timer and
        scheduling a new one on every command: the deadline moves, and the timer, when it
        comes due before it, sets itself for the deadline (`_timer_due`). A timer is
        scheduled anew only when the deadline comes sooner than the one set."""
        loop = self.loop
        deadline = loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        handle = self._timeout_handle
        if (
            handle is None
            or not self._timer_set
            or handle.cancelled()  # by connection_lost: as aiosmtpd, a new one
            or handle.when() > deadline
        ):
            if handle is not None:
                handle.cancel()
            self._timeout_handle = loop.call_at(deadline, self._timer_due, deadline)
            self._timer_set = True

    def _timer_due(self, when: float) -> None:
        if self._deadline > when:  # a command came since: not idle for long enough yet
            self._timeout_handle = self.loop.call_at(
                self._deadline, self._timer_due, self._deadline
            )
            return
        self._timer_set = False
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        timeout = self._limits.data_timeout if self.busy else self._limits.command_timeout
        log.info("event=timeout client_ip=%s after=%ss", self.client_ip, timeout)
        self.close_with("421 4.4.2 Timeout, closing connection")

    @property
    def tls_active(self) -> bool:
        """After STARTTLS, or on the implicit-TLS listener from the first byte."""
        transport = self.transport
        return self._tls_protocol is not None or (
            transport is not None and transport.get_extra_info("ssl_object") is not None
        )

    async def _handle_client(self) -> None:
        # aiosmtpd re-raises a reset from its command loop, and a reply to a client already
        # gone fails outside the loop's own handling; either would end the task with an
        # exception nobody retrieves, which asyncio logs with a traceback when the task is
        # collected. The client left: one line says so.
        try:
            if aiosmtpd.__version__ == smtp_setup.COPIED_VERSION:
                await self._command_loop()
            else:
                await super()._handle_client()
        except _CLIENT_FAULTS as error:
            log.info("event=disconnected client_ip=%s error=%r", self.client_ip, error)

    async def _command_loop(self) -> None:
        """aiosmtpd 1.4.6's SMTP._handle_client, less its INFO and DEBUG lines to
        "mail.log" (two sanitising passes over each command line and five logging calls
        per command, for a logger the gateway keeps at WARNING) and the command_call_limit
        the gateway does not use (see _junk_counted). Its warnings are kept. Other aiosmtpd
        versions run their own loop."""
        if self._proxy_timeout is not None:
            assert self.session is not None
            self._reset_timeout(self._proxy_timeout)
            self.session.proxy_data = await get_proxy(self._reader)
            if self.session.proxy_data:
                status = await self._call_handler_hook("PROXY", self.session.proxy_data)
            else:
                _aiosmtpd_log.warning("%r invalid PROXY handshake", self.session.peer)
                status = False
            if status is MISSING or not status:
                assert self.transport is not None
                self.transport.close()
                return
            self._reset_timeout()

        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus_budget = BOGUS_LIMIT
        max_errors = self._limits.max_errors or sys.maxsize

        while self.transport is not None:
            # Postfix's place for it: once the reply that reached the limit is sent,
            # before anything more is read (what is pipelined behind is not served).
            if self._errors >= max_errors:
                log.info("event=error_limit client_ip=%s errors=%d", self.client_ip, self._errors)
                self.close_with(_TOO_MANY_ERRORS)
                return
            # After STARTTLS the session is a new one: read it anew for each command.
            session = self.session
            assert session is not None
            try:
                try:
                    line: bytes = await self._reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # Line too long. Read until end of line before sending 500.
                    await self._reader.read(error.consumed)
                    while True:
                        try:
                            await self._reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as more:
                            await self._reader.read(more.consumed)
                    await self.push("500 Command line too long")
                    continue
                line = line.rstrip(b"\r\n")
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode(encoding="ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                arg: str | None
                if not arg_bytes:
                    arg = None
                else:
                    arg_bytes = arg_bytes.strip()
                    if self.enable_SMTPUTF8:
                        arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
                    else:
                        try:
                            arg = str(arg_bytes, encoding="ascii", errors="strict")
                        except UnicodeDecodeError:
                            await self.push("500 Error: strict ASCII mode")
                            continue
                max_size = (
                    self.command_size_limits[command]
                    if session.extended_smtp
                    else self.command_size_limit
                )
                if len(line) > max_size:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if (
                    self.require_starttls
                    and not self._tls_protocol
                    and command not in ALLOWED_BEFORE_STARTTLS
                ):
                    await self.push("530 Must issue a STARTTLS command first")
                    continue
                method = self._smtp_methods.get(command)
                if method is None:
                    _aiosmtpd_log.warning("%r unrecognised: %s", session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        _aiosmtpd_log.warning("%r too many bogus commands", session.peer)
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                # Received a valid command, reset the timer.
                self._reset_timeout()
                await method(arg)
            except (asyncio.CancelledError, ConnectionResetError):
                self._writer.close()
                raise
            except Exception as error:
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner_error:
                    try:
                        _aiosmtpd_log.exception(
                            "%r Exception in handle_exception()", (self.session or session).peer
                        )
                        status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
                    except Exception:
                        status = "500 Error: Cannot describe error"
                finally:
                    if isinstance(error, TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's MAIL/RCPT parameter reader, stricter (None answers 501): each keyword
        ASCII and at most once (RFC 5321 4.1.2), SIZE in ASCII digits (aiosmtpd checks it
        with str.isdigit and int(), which take any script's digits)."""
        result = super()._getparams(params)
        if result is None:
            return None
        keywords = [param.partition("=")[0] for param in params]
        if len(set(keywords)) != len(keywords) or not all(k.isascii() for k in keywords):
            return None
        size = result.get("SIZE")
        if isinstance(size, str) and not size.isascii():
            return None
        return result

    @syntax("STARTTLS", when="tls_context")
    async def _starttls(self, arg: str) -> None:
        # aiosmtpd would start a handshake inside the TLS session (answering 220), which
        # the standard library cannot unwind: every such connection ended in tracebacks.
        # RFC 3207 section 4.2: STARTTLS is not to be issued again once TLS is on; on the
        # implicit-TLS listener aiosmtpd would answer 454, as if TLS were missing.
        if self.tls_active:
            await self.push(_TLS_ACTIVE_REPLY)
            return
        if arg or self.tls_context is None or aiosmtpd.__version__ != smtp_setup.COPIED_VERSION:
            await super().smtp_STARTTLS(arg)  # its refusals (501, 454), or its own layer
            return
        await self._start_tls(self.tls_context)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        """aiosmtpd 1.4.6's STARTTLS after its checks, its TLS layer given
        ``limits.tls_handshake_timeout`` (aiosmtpd leaves asyncio's 60 s), and a handshake
        cut short by the gateway (a timeout, a shutdown) made a failure like the others.

        During the handshake the TLS layer tells the session nothing of a closed
        connection (asyncio's SSLProtocol calls connection_lost only once it is set up);
        it ends the handshake instead, with an error or, when the gateway closed it, with
        none. Either way the session is still counted, so the command loop is told by
        TLSSetupException, and ends the connection and releases its place."""
        await self.push("220 Ready to start TLS")
        waiter = self.loop.create_future()
        tls = sslproto.SSLProtocol(
            self.loop,
            self,
            context,
            waiter,
            server_side=True,
            # typeshed says int; asyncio takes any positive number of seconds.
            ssl_handshake_timeout=cast(int, self._limits.tls_handshake_timeout),
        )
        self._tls_protocol = tls
        plain = self.transport
        assert plain is not None
        self._original_transport = plain
        plain.set_protocol(tls)
        self.transport = tls._app_transport
        tls.connection_made(plain)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        # connection_made (the TLS session's) runs before the waiter is woken.
        assert self.session is not None
        if self.session.ssl is None:
            raise TLSSetupException() from ConnectionAbortedError(
                "connection closed during the TLS handshake"
            )

    @syntax("EHLO hostname")
    async def _ehlo(self, hostname: str) -> None:
        """aiosmtpd's EHLO, its reply's lines written together: one send to the socket
        instead of one per line (seven)."""
        self._gathered = []
        try:
            await SMTP.smtp_EHLO(self, hostname)
        finally:
            gathered, self._gathered = self._gathered, None
            if gathered:
                self._writer.write(b"".join(gathered))
        await self._writer.drain()

    @syntax("HELP [command]")
    async def _help(self, arg: str) -> None:
        """aiosmtpd's HELP, its success answered 214 with an enhanced status code: RFC
        5321 4.3.2 has HELP answered 211 or 214 (aiosmtpd answers 250), and RFC 2034 3 a
        status code on every 2xx reply but the greeting's and EHLO's."""
        self._gathered = []
        try:
            await SMTP.smtp_HELP(self, arg)
        finally:
            gathered, self._gathered = self._gathered, None
            for reply in gathered:
                if reply.startswith(b"250 "):
                    reply = b"214 2.0.0 " + reply[4:]
                self._writer.write(reply)
        await self._writer.drain()

    # Commands that move no mail, counted (JUNK_COMMANDS, JUNK_WHEN_REFUSED).
    smtp_STARTTLS = _junk_counted("STARTTLS", _starttls)
    smtp_NOOP = _junk_counted("NOOP", SMTP.smtp_NOOP)
    smtp_RSET = _junk_counted("RSET", SMTP.smtp_RSET)
    smtp_VRFY = _junk_counted("VRFY", SMTP.smtp_VRFY)
    smtp_EXPN = _junk_counted("EXPN", SMTP.smtp_EXPN)
    smtp_HELP = _junk_counted("HELP", _help)
    smtp_EHLO = _junk_counted("EHLO", _ehlo)
    smtp_HELO = _junk_counted("HELO", SMTP.smtp_HELO)
    smtp_MAIL = _junk_counted("MAIL", SMTP.smtp_MAIL)
    smtp_RCPT = _junk_counted("RCPT", SMTP.smtp_RCPT)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        # RFC 4954 section 4: mechanism names are case-insensitive. aiosmtpd looks the name
        # up as sent (answering 504 to "auth plain") before the handler's hook sees it, so
        # it is upper-cased here. Only an ASCII name: str.upper maps some other letters to
        # ASCII ones ("plaın" would become "PLAIN"). The initial response, base64 and so
        # case-sensitive, is passed on as it came.
        args = (arg or "").split()  # None for a bare "AUTH"
        if args and args[0].isascii():
            args[0] = args[0].upper()
        await super().smtp_AUTH(" ".join(args))

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's, with enhanced status codes and without its DEBUG line to mail.log.
        Within EHLO the lines are gathered and written together (see _ehlo)."""
        refused = self._refused = status[:1] in ("4", "5", b"4", b"5")
        if refused and not (isinstance(status, str) and status.startswith(_NOT_AN_ERROR)):
            self._errors += 1
        if isinstance(status, str):
            if status == _AIOSMTPD_SIZE_REPLY:
                status = self._too_big
            reply = _with_status(_REPLIES.get(status, status))
            response = reply.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n"
        else:
            response = status + b"\r\n"
        if self._gathered is not None:
            self._gathered.append(response)
            return
        self._writer.write(response)
        await self._writer.drain()

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in one search instead of line by line
        (that loop was the SMTP process's largest cost), under the DATA timeout."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        self.busy = True
        self._reset_timeout(self._limits.data_timeout)
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            reader = self._reader
            assert isinstance(reader, _StrictLineReader)
            try:
                content = await reader.read_data(self._limits.max_message_size)
            except asyncio.CancelledError:
                self._writer.close()  # the connection was lost or timed out
                raise
            if content is None:
                status = self._too_big
            else:
                self.envelope.content = self.envelope.original_content = content
                status = await self._call_handler_hook("DATA")
                if status.startswith("250"):
                    # The budgets are per message, as in Postfix.
                    self._junk = self._errors = 0
            self.envelope = self._create_envelope()
            await self.push(status)
        finally:
            self.busy = False
        self._reset_timeout()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BareLineEnding):
            return "500 5.5.2 Bare CR or LF in command: lines must end with CRLF"
        if isinstance(error, ForbiddenCommandBytes):
            return "500 5.5.2 Error: control character or bad UTF-8 in command"
        if isinstance(error, _CLIENT_FAULTS):
            # The client's doing (for a failed handshake, the cause says what the client
            # sent), so one line and no traceback. The connection is of no further use,
            # and must be closed: a read at end of stream fails again at once, so the
            # command loop would spin. aiosmtpd sends the reply if it still can (it drops
            # it after a failed handshake).
            event = "tls_failed" if isinstance(error, TLSSetupException) else "disconnected"
            log.info(
                "event=%s client_ip=%s error=%r", event, self.client_ip, error.__cause__ or error
            )
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.close()
            return "421 4.4.2 Connection failed, closing"
        log.error("event=error client_ip=%s error=%r", self.client_ip, error, exc_info=error)
        return "451 4.3.0 Internal error, try again later"


# ---------------------------------------------------------------------------- AUTH


@dataclass
class _Tally:
    failures: int = 0
    locked_until: float = 0.0
    in_flight: int = 0  # attempts being checked now: each may yet be a failure


class AuthGuard:
    """Failed AUTH attempts per client IP and per login: each failure is answered after a
    delay, and past the limit the IP or login is locked out for a while."""

    _MAX_TRACKED = 10_000

    def __init__(
        self,
        max_per_ip: int,
        max_per_user: int,
        lockout: float,
        delay: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_ip = max_per_ip
        self.max_per_user = max_per_user
        self.lockout = lockout
        self.delay = delay
        self._clock = clock
        self._ips: dict[str, _Tally] = {}
        self._users: dict[str, _Tally] = {}

    def locked(self, ip: str | None, user: str | None = None) -> bool:
        now = self._clock()
        return any(
            tally is not None and tally.locked_until > now
            for tally in (self._ips.get(ip or ""), self._users.get(user or "\0"))
        )

    def begin(self, ip: str | None, user: str) -> bool:
        """Reserve one attempt, or False when the IP or login has none left. Attempts
        being checked count as failures until they finish, so concurrent connections
        cannot make more guesses than the limit while the slow checks run."""
        if self.locked(ip, user):
            return False
        tallies = [
            (table.setdefault(key, _Tally()), limit)
            for table, key, limit in (
                (self._ips, ip or "", self.max_per_ip),
                (self._users, user, self.max_per_user),
            )
        ]
        if any(t.failures + t.in_flight >= limit for t, limit in tallies):
            return False
        for tally, _ in tallies:
            tally.in_flight += 1
        return True

    def finish(self, ip: str | None, user: str, ok: bool) -> None:
        for table, key in ((self._ips, ip or ""), (self._users, user)):
            tally = table.get(key)
            if tally is not None and tally.in_flight:
                tally.in_flight -= 1
        if ok:
            self.succeeded(ip, user)
        else:
            self.failed(ip, user)

    def failed(self, ip: str | None, user: str) -> None:
        now = self._clock()
        for table, key, limit in (
            (self._ips, ip or "", self.max_per_ip),
            (self._users, user, self.max_per_user),
        ):
            if len(table) >= self._MAX_TRACKED:
                self._prune(table, now)
            tally = table.setdefault(key, _Tally())
            if tally.locked_until and tally.locked_until <= now:
                tally.failures = 0  # the lockout has passed: a fresh start
                tally.locked_until = 0.0
            tally.failures += 1
            if tally.failures >= limit:
                tally.locked_until = now + self.lockout

    def succeeded(self, ip: str | None, user: str) -> None:
        self._ips.pop(ip or "", None)
        self._users.pop(user, None)

    @staticmethod
    def _prune(table: dict[str, _Tally], now: float) -> None:
        for key in [k for k, t in table.items() if t.locked_until <= now]:
            del table[key]
        # Still full of live lockouts: forget the oldest half rather than grow without end.
        if len(table) >= AuthGuard._MAX_TRACKED:
            for key in list(table)[: len(table) // 2]:
                del table[key]


# ---------------------------------------------------------------------------- handler

_ADDRESSES_KEPT = 4096


class Handler:
    def __init__(
        self,
        *,
        clients: Iterable[ClientSettings],
        signing_domains: Callable[[], Iterable[str]],
        sealer: SealerLike,
        spool: SpoolLike,
        metrics: Metrics,
        auth_guard: AuthGuard,
        max_recipients: int,
        max_line_length: int,
        log_entries: bool = False,
        insurers: Insurers | None = None,
    ) -> None:
        clients = tuple(clients)
        self._directory = ClientDirectory(clients)
        # The client each address is, as the directory (fixed for the handler's life)
        # answers: by_address parses the address and tests it against every network,
        # twice a message (MAIL, DATA). The oldest answer goes past _ADDRESSES_KEPT.
        self._by_address: dict[str | None, Client | None] = {}
        self._passwords = {
            c.name: parse_password_hash(c.password_hash) for c in clients if c.password_hash
        }
        self._signing_domains = signing_domains
        self._sealer = sealer
        self._spool = spool
        self._metrics = metrics
        self._guard = auth_guard
        self._max_recipients = max_recipients
        self._max_line_length = max_line_length
        # With the statement log on, each message's entry is committed with it.
        self._log_entries = log_entries
        self._insurers = insurers
        # Each transaction's view of the registry of insurers, taken at its first RCPT and
        # checked again at DATA: one look at the registry's file per transaction. Keyed by
        # aiosmtpd's envelope, which it makes anew for each transaction (after DATA, RSET).
        self._registry_views: weakref.WeakKeyDictionary[Envelope, View] = (
            weakref.WeakKeyDictionary()
        )

    # -- session start

    async def handle_PROXY(
        self, server: GatewaySMTP, session: Session, envelope: Envelope, proxy_data: Any
    ) -> bool:
        source = proxy_data.src_addr
        if source is None or not server.count_proxied_ip(str(source)):
            log.info("event=refused client_ip=%s reason='connections per IP'", source)
            return False
        return True

    async def handle_EHLO(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd implements both but advertises neither.
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    # -- AUTH

    async def handle_AUTH(
        self, server: GatewaySMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None:
        ip = server.client_ip
        if self._guard.locked(ip):
            self._metrics.rejected.inc("auth_locked")
            return "454 4.7.0 Too many failed logins from your address, try again later"
        credentials = await _read_credentials(server, args)
        if credentials is None:
            return None  # the exchange was aborted and already answered
        login, password = credentials
        user = login.decode("utf-8", "replace")
        if not self._guard.begin(ip, user):
            self._metrics.rejected.inc("auth_locked")
            return "454 4.7.0 Too many failed logins for this user or address, try again later"
        stored = self._passwords.get(user)
        # scrypt takes tens of milliseconds of CPU; keep it off the event loop.
        try:
            valid = await asyncio.to_thread(verify_password, stored or _DUMMY_HASH, password)
        except BaseException:
            self._guard.finish(ip, user, ok=False)
            raise
        ok = stored is not None and valid
        self._guard.finish(ip, user, ok)
        if not ok:
            self._metrics.rejected.inc("auth_failed")
            log.info("event=auth_failed client_ip=%s user=%r", ip, user)
            await asyncio.sleep(self._guard.delay)
            return "535 5.7.8 Authentication credentials invalid"
        session.authenticated = True
        server.authenticated_client = user
        log.info("event=auth client_ip=%s client=%s", ip, user)
        return "235 2.7.0 Authentication successful"

    # -- the transaction

    def _client(self, server: GatewaySMTP, session: Session) -> Client | None:
        if server.authenticated_client is not None:
            return self._directory.by_name(server.authenticated_client)
        ip = server.client_ip
        try:
            return self._by_address[ip]
        except KeyError:
            pass
        client = self._directory.by_address(ip)
        if len(self._by_address) >= _ADDRESSES_KEPT:
            del self._by_address[next(iter(self._by_address))]  # the oldest
        self._by_address[ip] = client
        return client

    def _refuse(
        self, server: GatewaySMTP, rejection: Rejection, client: Client | None, sender: str | None
    ) -> str:
        self._metrics.rejected.inc(rejection.reason)
        log.info(
            "event=rejected client=%s client_ip=%s sender=%s reason=%s reply=%d",
            client.name if client else "-",
            server.client_ip,
            sender or "-",
            rejection.reason,
            rejection.code,
        )
        return f"{rejection.code} {rejection.status} {rejection.text}"

    async def handle_MAIL(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        client = self._client(server, session)
        rejection = policy.check_relay(client) or policy.check_address_syntax(address, "sender")
        if rejection is None:
            # aiosmtpd has set the flag from this MAIL command before calling the hook.
            rejection = policy.check_address(address, envelope.smtp_utf8, "sender")
        if rejection is None:
            assert client is not None
            rejection = policy.check_sender_domain(
                policy.domain_of(address), client, self._domains(), "Sender"
            )
        if rejection is not None:
            return self._refuse(server, rejection, client, address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        rejection = (
            policy.check_address_syntax(address, "recipient")
            or policy.check_address(address, envelope.smtp_utf8, "recipient")
            or policy.check_recipient_count(len(envelope.rcpt_tos), self._max_recipients)
        )
        if rejection is not None:
            client = self._client(server, session)
            return self._refuse(server, rejection, client, envelope.mail_from)
        if self._insurers is not None:
            violation = self._insurers.ended(address, self._registry_view(envelope))
            if violation is not None:
                refusal = self._insurer_rule(server, session, [violation], envelope.mail_from)
                if refusal is not None:
                    return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    def _registry_view(self, envelope: Envelope) -> View:
        assert self._insurers is not None
        view = self._registry_views.get(envelope)
        if view is None:
            view = self._registry_views[envelope] = self._insurers.view()
        return view

    def _insurer_rule(
        self, server: GatewaySMTP, session: Session, found: list[Violation], sender: str | None
    ) -> str | None:
        """The refusal for the first of `found` (mode refuse), or None once each is logged
        and counted (mode warn)."""
        assert self._insurers is not None
        if not self._insurers.warn_only:
            client = self._client(server, session)
            return self._refuse(server, found[0].rejection(), client, sender)
        for violation in found:
            self._metrics.org_warnings.inc(violation.rule)
            log.warning(
                "event=org_policy_warning rule=%s org=%s recipient_domain=%s client_ip=%s "
                "sender=%s action=delivered",
                violation.rule,
                ",".join(violation.organisations),
                violation.domain,
                server.client_ip,
                sender or "-",
            )
        return None

    async def handle_DATA(self, server: GatewaySMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        client = self._client(server, session)
        sender: str = envelope.mail_from or ""
        if client is None:  # MAIL checked this already; kept so no path skips it
            return self._refuse(server, policy.RELAY_DENIED, None, sender)
        found = (
            policy.check_lines(raw, self._max_line_length)
            or policy.check_forbidden_bytes(raw)
            or policy.check_header_lines(raw)
            or policy.check_repeated_fields(raw)
            or policy.header_from_domain(raw)
        )
        if isinstance(found, Rejection):
            return self._refuse(server, found, client, sender)
        domain = found
        rejection = policy.check_sender_domain(domain, client, self._domains(), "From")
        if rejection is not None:
            return self._refuse(server, rejection, client, sender)

        started = time.perf_counter()
        try:
            sealed = await self._sealer.seal(raw, domain)
        except UnsealableMessage as error:
            # The message's own fault: a retry would fail the same way, so refuse for good.
            return self._refuse(server, _unsealable(error), client, sender)
        except SealError as error:
            self._metrics.rejected.inc("seal_failed")
            log.warning(
                "event=seal_failed client=%s sender=%s size=%d error=%r",
                client.name,
                sender,
                len(raw),
                str(error),
            )
            return "451 4.3.0 Message could not be sealed, try again later"
        self._metrics.signing_seconds.observe(time.perf_counter() - started)
        self._metrics.sealed.inc()
        self._metrics.documents.inc(amount=len(sealed.documents))

        recipients = list(envelope.rcpt_tos)
        if self._insurers is not None and sealed.documents:
            view = self._registry_views.pop(envelope, None)
            violations = self._insurers.check_statement(recipients, view)
            if self._insurers.warn_only:  # ended mailboxes were logged at RCPT already
                violations = [v for v in violations if v.rule != RULE_ENDED]
            if violations:
                refusal = self._insurer_rule(server, session, violations, sender)
                if refusal is not None:
                    return refusal
        try:
            queue_id = await self._spool.put(
                SpoolEnvelope(
                    sender=sender,
                    recipients=recipients,
                    data=sealed.data,
                    client=client.name,
                    log_entry=sealed.entry if self._log_entries else None,
                    params=mail_params.from_options(envelope.smtp_utf8, envelope.mail_options),
                )
            )
        except Exception as error:
            self._metrics.rejected.inc("spool_failed")
            log.error("event=spool_failed client=%s error=%r", client.name, error, exc_info=error)
            return "451 4.3.0 Message could not be queued, try again later"
        self._metrics.received.inc()
        log.info(
            "event=queued queue_id=%s client=%s client_ip=%s sender=%s recipients=%d size=%d "
            "documents=%d result=250",
            queue_id,
            client.name,
            server.client_ip,
            sender,
            len(recipients),
            len(sealed.data),
            len(sealed.documents),
        )
        return f"250 2.0.0 Queued as {queue_id}"

    def _domains(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self._signing_domains())


# The reason may quote a document's file name: client text, kept to one printable line.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _unsealable(error: UnsealableMessage) -> Rejection:
    reason = _UNPRINTABLE.sub("?", str(error))[:300]
    return Rejection(550, "5.6.0", f"Message cannot be sealed: {reason}", "unsealable")


async def _read_credentials(server: GatewaySMTP, args: list[str]) -> tuple[bytes, bytes] | None:
    """(login, password) from AUTH PLAIN or LOGIN, or None once the failure is answered."""
    mechanism = args[0].upper()
    initial = args[1] if len(args) > 1 else None
    if mechanism == "PLAIN":
        if initial is not None:
            blob = await _decode(server, initial)
        else:
            blob = await _challenge(server, "")
        if blob is None:
            return None
        parts = blob.split(b"\0")
        # RFC 4616: [authzid] NUL authcid NUL passwd; acting as another user is not offered.
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            await server.push("501 5.5.2 Malformed PLAIN credentials")
            return None
        return parts[1], parts[2]
    if mechanism == "LOGIN":
        if initial is not None:
            login = await _decode(server, initial)
        else:
            login = await _challenge(server, "User Name")
        if login is None:
            return None
        password = await _challenge(server, "Password")
        if password is None:
            return None
        return login, password
    await server.push("504 5.5.4 Unrecognized authentication type")
    return None


async def _challenge(server: GatewaySMTP, prompt: str) -> bytes | None:
    try:
        answer = await server.challenge_auth(prompt)
    except ValueError:  # the answer was longer than a command line may be
        await server.push("500 5.5.6 Authentication answer too long")
        return None
    return answer if isinstance(answer, bytes) else None


async def _decode(server: GatewaySMTP, text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        await server.push("501 5.5.2 Cannot decode base64")
        return None

"""One mail transaction with RFC 2920 PIPELINING, as Postfix's smtp client runs it.

To a next hop whose EHLO offers PIPELINING, MAIL FROM, every RCPT TO and DATA go in one
write (preceded by RSET on a pooled session, which proves it still lives), then the
replies are read in order: one round trip instead of one per command. DATA is the group's
last command (RFC 2920 3.1); the body and its final "." go in one write after its 354.

The course corrections are Postfix's (smtp_proto.c): MAIL refused, every recipient gets
that reply; every RCPT refused, no body is sent, and if the server still answered DATA
with 354 an empty message is ended with "." (RFC 2920 3.1), its reply concerning no
recipient; DATA refused, the accepted recipients get that reply.

The replies arrive through `gateway.reply_queue`, which pairs each with its command or
fails the connection. A reply that cannot be trusted (the connection lost, timed out or
out of step before every recipient's fate is known) raises, and the caller treats the
attempt as it does any lost session: nothing counts as delivered without a 250 read
after the body was written. A session left in an unknown state is closed, never pooled.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX
from aiosmtplib.response import SMTPResponse

from gateway.dot_stuffing import END_OF_DATA, normalized_line_ends, stuffed
from gateway.reply_queue import OutOfStep, ReplyQueue

_ACCEPTED_RCPT: Final = frozenset({250, 251})
_START_INPUT: Final = 354
_CLOSING: Final = 421


class StaleSession(aiosmtplib.SMTPServerDisconnected):
    """A pooled session did not answer RSET with 250: nothing else in the group counts."""


@dataclass(frozen=True)
class Verdict:
    """The reply that decided a recipient's fate; `delivered` only for a 250 to the body."""

    reply: SMTPResponse
    delivered: bool = False


@dataclass(frozen=True)
class Transaction:
    verdicts: list[Verdict]  # one per recipient, in order
    reusable: bool  # the session is in step, with no transaction open that matters


def offered(client: aiosmtplib.SMTP) -> bool:
    """Whether transactions with `client` are pipelined: its hop offers PIPELINING and its
    replies are queued (a `gateway.reply_queue.QueuedSMTP`)."""
    return isinstance(client.protocol, ReplyQueue) and client.supports_extension("pipelining")


async def send_pipelined(
    client: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    mail_options: Sequence[str],
    *,
    reset: bool,
    reply_timeout: float,
    reset_timeout: float,
) -> Transaction:
    """One transaction over `client`, RSET first when `reset`; each reply waits at most
    `reply_timeout` (`reset_timeout` for RSET's). Raises ValueError (an
    address that cannot go on the wire) before anything is written; StaleSession when the
    RSET fails; aiosmtplib's errors when the replies stop being trustworthy, the session
    then being closed."""
    protocol = client.protocol
    if not isinstance(protocol, ReplyQueue):
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    wire = normalized_line_ends(message)  # SIZE counts it, the body is made of it
    commands = _envelope(client, sender, recipients, wire, mail_options)
    if reset:
        commands.insert(0, b"RSET\r\n")
    try:
        async with protocol.lock:
            protocol.send(b"".join(commands), len(commands))
            if reset:
                await _reset(protocol, reset_timeout)
            done = await _exchange(protocol, len(recipients), wire, reply_timeout)
            if not protocol.in_step and not any(v.delivered for v in done.verdicts):
                # A surplus reply came after those read: they may each belong to the
                # command before, so no refusal among them is trusted.
                raise OutOfStep("the server sent more replies than commands")
    except BaseException:
        client.close()
        raise
    if not done.reusable:
        client.close()
    return done


def _envelope(
    client: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    wire: bytes,
    mail_options: Sequence[str],
) -> list[bytes]:
    """MAIL, RCPT... and DATA, as aiosmtplib's sendmail words them."""
    encoding = "utf-8" if any(o.lower() == "smtputf8" for o in mail_options) else "ascii"
    options = [o.encode("ascii") for o in mail_options]
    if client.supports_extension("size"):  # RFC 1870: the octets as sent, before stuffing
        options.insert(0, b"SIZE=%d" % len(wire))
    mail = _command(b"MAIL", b"FROM:" + _quoted(sender).encode(encoding), *options)
    rcpts = [_command(b"RCPT", b"TO:" + _quoted(r).encode(encoding)) for r in recipients]
    return [mail, *rcpts, b"DATA\r\n"]


# aiosmtplib's quoting runs the email package's address parser (tens of us an address);
# the sender is always the fund's and the recipients a few insurers'.
_quoted = functools.lru_cache(maxsize=4096)(quote_address)


def _command(*args: bytes) -> bytes:
    for arg in args:
        if COMMAND_INJECTION_REGEX.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


async def _reset(protocol: ReplyQueue, reply_timeout: float) -> None:
    try:
        reply = await protocol.read_response(reply_timeout)
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise StaleSession(f"pooled session lost at RSET: {exc}") from exc
    if reply.code != 250:
        raise StaleSession(f"pooled session refused RSET: {reply.code} {reply.message}")


async def _exchange(
    protocol: ReplyQueue, count: int, wire: bytes, reply_timeout: float
) -> Transaction:
    """Each reply waits at most `reply_timeout`, as each lock-step command does."""
    mail = await protocol.read_response(reply_timeout)
    rcpts: list[SMTPResponse] = []
    try:
        for _ in range(count):
            rcpts.append(await protocol.read_response(reply_timeout))
        data = await protocol.read_response(reply_timeout)
    except (aiosmtplib.SMTPException, OSError):
        # Fates already decided stand (Postfix marks them as each reply comes).
        if mail.code != 250:
            return Transaction([Verdict(mail)] * count, reusable=False)
        if len(rcpts) == count and not any(r.code in _ACCEPTED_RCPT for r in rcpts):
            return Transaction([Verdict(r) for r in rcpts], reusable=False)
        raise
    in_step = _fits(mail, "245") and all(_fits(r, "245") for r in rcpts)
    verdicts = [Verdict(mail)] * count if mail.code != 250 else [Verdict(r) for r in rcpts]
    accepted = [i for i, r in enumerate(rcpts) if r.code in _ACCEPTED_RCPT and mail.code == 250]
    if not accepted:
        if data.code == _START_INPUT:
            # The server waits for a message no one will get: end it empty, as Postfix
            # does; its reply (a refusal, with no recipient) concerns no one.
            try:
                protocol.send(END_OF_DATA, 1)
                ended = await protocol.read_response(reply_timeout)
            except (aiosmtplib.SMTPException, OSError):
                return Transaction(verdicts, reusable=False)
            return Transaction(verdicts, reusable=in_step and _fits(ended, "245"))
        return Transaction(verdicts, reusable=in_step and _fits(data, "45"))
    if data.code != _START_INPUT:
        for i in accepted:
            verdicts[i] = Verdict(data)
        return Transaction(verdicts, reusable=in_step and _fits(data, "45"))
    protocol.send(stuffed(wire), 1)
    end = await protocol.read_response(reply_timeout)
    for i in accepted:
        verdicts[i] = Verdict(end, delivered=end.code == 250)
    return Transaction(verdicts, reusable=in_step and _fits(end, "245"))


def _fits(reply: SMTPResponse, classes: str) -> bool:
    """A reply of a class the command may get, the session not closing (421)."""
    return reply.code != _CLOSING and 200 <= reply.code < 600 and str(reply.code)[0] in classes

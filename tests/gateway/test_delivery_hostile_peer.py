"""Delivery against a hostile or broken next hop: a scripted SMTP server on a real socket
answers one command with whatever bytes a test chooses (8-bit text, controls, garbage
codes, overlong or unfinished multi-line replies, a close mid-reply).

Whatever it sends, `Delivery.deliver` returns one outcome per recipient, never raises, and
the reply text it keeps can be stored in the spool and put in a DSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.delivery import Delivery, Outcome, Smarthost
from gateway.dsn import Failure, build_dsn
from gateway.scheduler import RetryPolicy, Scheduler
from gateway.spool import Envelope, Spool

MESSAGE = b"From: s@caisses.example\r\nTo: a@insurer.example\r\nSubject: x\r\n\r\nbody\r\n"
COMMANDS = ("GREETING", "EHLO", "MAIL", "RCPT", "DATA", "END")
# Anything the spool, a log line or a DSN could not carry, or should not.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class ScriptedServer:
    """An SMTP server that answers every command normally except `command`, which gets
    `reply` verbatim (None: the connection is closed instead; a reply cut off before its
    line end is followed by a close)."""

    def __init__(self, command: str, reply: bytes | None, *, pipelining: bool = False) -> None:
        self.command, self.reply = command, reply
        self.pipelining = pipelining  # offered in EHLO: MAIL, RCPT and DATA come at once
        self.delivered = 0

    def answer(self, command: str, normal: bytes) -> bytes | None:
        return self.reply if command == self.command else normal

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            try:
                await self._converse(reader, writer)
            finally:
                writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(command: str, normal: bytes) -> bool:
            reply = self.answer(command, normal)
            if reply is None:
                return False
            writer.write(reply)
            await writer.drain()
            return reply.endswith(b"\n")

        if not await send("GREETING", b"220 hostile.test ESMTP\r\n"):
            return
        while line := await reader.readline():
            verb = line[:4].upper().decode("ascii", "replace")
            if verb == "DATA":
                if not await send("DATA", b"354 go ahead\r\n"):
                    return
                while (line := await reader.readline()) not in (b".\r\n", b""):
                    pass
                if not line:  # closed before the end of data: nothing was taken
                    return
                self.delivered += 1
                verb = "END"
            offer = b"250-PIPELINING\r\n" if self.pipelining else b""
            ehlo = b"250-hostile.test\r\n" + offer + b"250 8BITMIME\r\n"
            normal = {"EHLO": ehlo, "QUIT": b"221 bye\r\n"}
            if not await send(verb, normal.get(verb, b"250 2.0.0 ok\r\n")):
                return
            if verb == "QUIT":
                return


@contextlib.asynccontextmanager
async def hostile(
    command: str, reply: bytes | None, *, pipelining: bool = False
) -> AsyncIterator[tuple[ScriptedServer, int]]:
    scripted = ScriptedServer(command, reply, pipelining=pipelining)
    server = await asyncio.start_server(scripted.session, "127.0.0.1", 0)
    try:
        yield scripted, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def deliver_once(
    command: str, reply: bytes | None, wait: float = 2.0, *, pipelining: bool = False
) -> Outcome:
    outcome, _ = await deliver_and_count(command, reply, wait, pipelining=pipelining)
    return outcome


async def deliver_and_count(
    command: str, reply: bytes | None, wait: float, *, pipelining: bool
) -> tuple[Outcome, int]:
    """The outcome, and how many messages the server took to the end of data."""
    async with hostile(command, reply, pipelining=pipelining) as (scripted, port):
        delivery = Delivery(Smarthost("127.0.0.1", port), local_hostname="gw.test", timeout=wait)
        try:
            [outcome] = await delivery.deliver("s@caisses.example", ["a@insurer.example"], MESSAGE)
        finally:
            await delivery.close()
    return outcome, scripted.delivered


def assert_recordable(outcome: Outcome) -> None:
    """The reply can be stored, logged and bounced as it is."""
    assert outcome.status in ("delivered", "transient", "permanent")
    assert not UNSAFE.search(outcome.reply), outcome.reply
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE t (reply TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (outcome.reply,))
    dsn = build_dsn(
        original=MESSAGE,
        sender="s@caisses.example",
        failures=[Failure(outcome.recipient, outcome.reply)],
        reporting_mta="gw.test",
        mailer_domain="caisses.example",
        queue_id="Q1",
        arrival=dt.datetime.now(dt.UTC),
    )
    assert dsn.isascii()


# --- the cases each named ------------------------------------------------------------------


async def test_eight_bit_text_in_a_refusal_is_kept_readable_and_bounces() -> None:
    outcome = await deliver_once("RCPT", b"550 5.1.1 bo\xeete pleine \xff\r\n")
    assert outcome.status == "permanent"
    assert outcome.reply == "550 5.1.1 bo?te pleine ?"
    assert_recordable(outcome)


async def test_valid_utf8_in_a_reply_stays_but_the_dsn_diagnostic_is_ascii() -> None:
    outcome = await deliver_once("RCPT", "550 5.2.2 boîte pleine\r\n".encode())
    assert outcome.reply == "550 5.2.2 boîte pleine"
    assert_recordable(outcome)


async def test_controls_in_a_reply_never_reach_the_log_or_the_dsn() -> None:
    outcome = await deliver_once("END", b"554 5.7.1 no\x00pe \x1b[31mred\x1b[0m\r\n")
    assert outcome.status == "permanent"
    assert outcome.reply == "554 5.7.1 no?pe ?[31mred?[0m"
    assert_recordable(outcome)


async def test_eight_bit_acceptance_counts_as_delivered() -> None:
    outcome = await deliver_once("END", b"250 2.0.0 re\xe7u\r\n")
    assert (outcome.status, outcome.reply) == ("delivered", "250 2.0.0 re?u")
    assert_recordable(outcome)


async def test_garbage_reply_code_is_transient() -> None:
    outcome = await deliver_once("RCPT", b"abc what is this\r\n")
    assert outcome.status == "transient"
    assert_recordable(outcome)


async def test_overlong_reply_line_is_transient() -> None:
    outcome = await deliver_once("RCPT", b"550 " + b"x" * 10_000 + b"\r\n")
    assert outcome.status == "transient"
    assert_recordable(outcome)


async def test_unfinished_multiline_reply_times_out_as_transient() -> None:
    outcome = await deliver_once("RCPT", b"250-still going\r\n", wait=0.5)
    assert outcome.status == "transient"
    assert_recordable(outcome)


async def test_close_in_the_middle_of_a_reply_is_transient() -> None:
    outcome = await deliver_once("END", b"250-accepted but\r\n25")
    assert outcome.status == "transient"
    assert_recordable(outcome)


@pytest.mark.parametrize("pipelining", [False, True], ids=["lock-step", "pipelined"])
@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL", b"250-accepted\r\n250 and more\r\n250 unasked\r\n"),  # multi-line, then extra
        ("RCPT", b"250 ok\r\n550 5.1.1 unasked\r\n"),
        ("DATA", b"354 go\r\n250 2.0.0 unasked, before the body\r\n"),
        ("RCPT", b"\xff\xfe\x00 garbage\r\n"),
        ("DATA", b"354-go\r\n"),  # never finished
        ("RCPT", None),
    ],
    ids=["extra-after-mail", "extra-after-rcpt", "reply-before-body", "8bit", "cut", "closed"],
)
async def test_a_stray_or_broken_reply_delivers_nothing(
    command: str, reply: bytes | None, pipelining: bool
) -> None:
    outcome, taken = await deliver_and_count(command, reply, 0.3, pipelining=pipelining)
    assert outcome.status == "transient", outcome
    assert taken == 0
    assert_recordable(outcome)


async def test_an_eight_bit_acceptance_is_recorded_once_and_not_sent_again(
    tmp_path: Path,
) -> None:
    """Before the reply was cleaned, the spool could not store it: the delivered message
    stayed due and was sent again at every poll."""
    spool = Spool.open(tmp_path / "spool")
    async with hostile("END", b"250 2.0.0 mis en file \xe9\xff\r\n") as (scripted, port):
        delivery = Delivery(Smarthost("127.0.0.1", port), local_hostname="gw.test", timeout=2)

        async def no_dsn(raw: bytes, domain: str) -> bytes:
            raise AssertionError("nothing bounces here")

        recorded = asyncio.Event()
        scheduler = Scheduler(
            spool,
            delivery,
            no_dsn,
            reporting_mta="gw.test",
            on_recorded=lambda counts: recorded.set(),
            policy=RetryPolicy(first=0.02, ceiling=0.05, lifetime=60.0, jitter=0.2),
            poll_interval=0.02,
        )
        scheduler.start()
        try:
            await spool.put(Envelope("s@caisses.example", ["a@insurer.example"], MESSAGE, "t"))
            scheduler.notify()
            async with asyncio.timeout(5):
                await recorded.wait()
            await asyncio.sleep(0.2)  # several polls: a message left due would go again
            assert await spool.depth() == 0
        finally:
            await scheduler.stop()
            await delivery.close()
            await spool.close()
    assert scripted.delivered == 1


# --- anything ------------------------------------------------------------------------------

_TEXT = st.binary(max_size=40) | st.sampled_from(
    [b"\xff\xfe", b"\x00", b"\x1b[2J", "é".encode(), b"\r", b"\n", b"\t"]
)
_CODE = st.sampled_from([b"250", b"354", b"421", b"451", b"550", b"554", b"999", b"abc", b"-1"]) | (
    st.binary(min_size=0, max_size=4)
)
_LINE = st.builds(
    lambda code, sep, text: code + sep + text, _CODE, st.sampled_from([b" ", b"-", b""]), _TEXT
)
_REPLY = st.one_of(
    st.none(),  # the connection closes instead of answering
    st.lists(_LINE, min_size=1, max_size=4).map(lambda lines: b"\r\n".join(lines) + b"\r\n"),
    st.lists(_LINE, min_size=1, max_size=4).map(b"\r\n".join),  # cut off: no final CRLF
    st.builds(lambda n: b"250 " + b"x" * n + b"\r\n", st.integers(8000, 9000)),
)


@settings(
    max_examples=40,  # a few seconds: some replies wait out the 0.3 s timeout
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(command=st.sampled_from(COMMANDS), reply=_REPLY, pipelining=st.booleans())
def test_any_reply_gives_an_outcome_that_can_be_recorded(
    command: str, reply: bytes | None, pipelining: bool
) -> None:
    # A reply that never completes waits for the timeout: kept short.
    outcome, taken = asyncio.run(deliver_and_count(command, reply, 0.3, pipelining=pipelining))
    assert_recordable(outcome)
    if outcome.status == "delivered":
        # Delivered only if the peer received the whole message and accepted it.
        assert taken == 1
        if command == "END":
            assert reply is not None
            assert reply.startswith(b"2")

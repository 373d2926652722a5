"""Delivery to a next hop offering PIPELINING (RFC 2920), on real sockets.

`Downstream` is a scripted SMTP server: it records every TCP segment it receives and
answers all the commands of a segment in one write, so the replies of a pipelined group
arrive together; a test changes the reply to any command, adds a reply nobody asked for,
closes instead of answering, or cuts its replies into pieces. An aiosmtpd peer told to
advertise PIPELINING checks the same against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.delivery import Delivery, Outcome, Smarthost
from tests.gateway.conftest import Peer

MESSAGE = (
    b"From: s@caisses.example\r\nTo: a@insurer.example\r\nSubject: statement\r\n\r\n"
    b"Body line\r\n.leading dot\r\n..two dots\r\n"
)
SENDER = "s@caisses.example"
CLOSE = None  # as a reply: the server closes the connection instead of answering


@dataclass
class Downstream:
    pipelining: bool = True
    # Per command ("MAIL", "RCPT", "DATA", "END" for the end of data, "RSET"): the replies
    # to give, in turn, then the usual one; CLOSE closes the connection.
    script: dict[str, list[bytes | None]] = field(default_factory=dict)
    extra: dict[str, bytes] = field(default_factory=dict)  # sent after that command's reply
    close_after: str = ""  # the command after whose reply the connection is closed, once
    greeting: bytes = b"220 downstream.test ESMTP\r\n"
    pieces: int = 1  # each write cut into this many segments
    close_when_idle: bool = False  # close after each transaction, as an idle timeout would
    idle_reply: bytes = b""  # sent, unasked, after each transaction
    segments: list[bytes] = field(default_factory=list)  # everything received, as it came
    writes: list[bytes] = field(default_factory=list)  # each answer, as written
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    connections: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def answer(self, verb: str, normal: bytes) -> bytes | None:
        if self.script.get(verb):
            return self.script[verb].pop(0)
        return normal

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            try:
                await self._converse(reader, writer)
            finally:
                writer.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        self.writes.append(data)
        size = -(-len(data) // self.pieces)
        for start in range(0, len(data), size):
            writer.write(data[start : start + size])
            await writer.drain()
            if self.pieces > 1:
                await asyncio.sleep(0.01)  # each piece its own segment

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, self.greeting)
        pending = b""
        sender, rcpts, body, in_data = "", list[str](), bytearray(), False
        while chunk := await reader.read(65536):
            self.segments.append(chunk)
            pending += chunk
            out, closing, ended = bytearray(), False, False
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                line += b"\n"
                if in_data:
                    if line != b".\r\n":
                        body += line[1:] if line.startswith(b".") else line
                        continue
                    in_data, ended = False, True
                    reply = self.answer(
                        "END", b"250 2.0.0 queued\r\n" if rcpts else b"554 5.5.1 none\r\n"
                    )
                    if reply is not None and reply.startswith(b"250") and rcpts:
                        self.messages.append((sender, rcpts, bytes(body)))
                    verb = "END"
                else:
                    verb = line[:4].upper().decode("ascii", "replace")
                    reply = self.answer(verb, self._normal(verb, line, rcpts))
                    if verb == "MAIL":
                        sender, rcpts = line[11:].split(b">")[0].decode(), []
                    elif verb == "RCPT" and reply is not None and reply.startswith(b"25"):
                        rcpts.append(line[9:].split(b">")[0].decode())
                    elif verb == "RSET":
                        sender, rcpts = "", []
                    elif verb == "DATA" and reply is not None and reply.startswith(b"354"):
                        in_data, body = True, bytearray()
                if reply is None:
                    closing = True
                    break
                out += reply + self.extra.get(verb, b"")
                if verb in ("QUIT", self.close_after):
                    self.close_after = ""  # once
                    closing = True
                    break
            if out:
                await self._send(writer, bytes(out))
            if closing or (ended and self.close_when_idle):
                return
            if ended and self.idle_reply:
                await asyncio.sleep(0.02)  # after the client has read the last reply
                await self._send(writer, self.idle_reply)

    def _normal(self, verb: str, line: bytes, rcpts: list[str]) -> bytes:
        if verb in ("EHLO", "HELO"):
            offer = b"250-PIPELINING\r\n" if self.pipelining else b""
            return b"250-downstream.test\r\n" + offer + b"250 8BITMIME\r\n"
        if verb == "DATA":  # RFC 2920 3.1: no valid recipient, no 354
            return b"354 go ahead\r\n" if rcpts else b"554 5.5.1 no valid recipients\r\n"
        if verb == "QUIT":
            return b"221 bye\r\n"
        return b"250 2.0.0 ok\r\n"

    def envelopes(self) -> list[bytes]:
        """The segments that carried a MAIL command."""
        return [s for s in self.segments if b"MAIL FROM:" in s]


@contextlib.asynccontextmanager
async def delivering(scripted: Downstream, wait: float = 2.0) -> AsyncIterator[Delivery]:
    server = await asyncio.start_server(scripted.session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    delivery = Delivery(Smarthost("127.0.0.1", port), local_hostname="gw.test", timeout=wait)
    try:
        yield delivery
    finally:
        await delivery.close()
        server.close()


def replies(*lines: str) -> list[bytes | None]:
    return [line.encode() + b"\r\n" for line in lines]


async def send(delivery: Delivery, *rcpts: str, message: bytes = MESSAGE) -> list[Outcome]:
    return await delivery.deliver(SENDER, list(rcpts), message)


# --- the happy path --------------------------------------------------------------------


async def test_mail_every_rcpt_and_data_go_in_one_segment_the_body_in_the_next() -> None:
    scripted = Downstream()
    async with delivering(scripted) as delivery:
        outcomes = await send(delivery, "a@x.example", "b@x.example")
    assert [o.status for o in outcomes] == ["delivered", "delivered"]
    assert scripted.envelopes() == [
        b"MAIL FROM:<s@caisses.example>\r\n"
        b"RCPT TO:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n"
    ]
    body = scripted.segments[scripted.segments.index(scripted.envelopes()[0]) + 1]
    assert body == b"".join(
        (MESSAGE.replace(b"\r\n.", b"\r\n.."), b".\r\n")
    )  # dot-stuffed, and the end of data in the same write
    assert scripted.messages == [(SENDER, ["a@x.example", "b@x.example"], MESSAGE)]


async def test_all_replies_in_one_segment_each_pair_with_their_command() -> None:
    scripted = Downstream(
        script={"RCPT": replies("250 2.1.5 a ok", "550 5.1.1 no such b", "452 4.2.2 c full")}
    )
    async with delivering(scripted) as delivery:
        ok, gone, full = await send(delivery, "a@x.example", "b@x.example", "c@x.example")
    assert scripted.writes[2] == (
        b"250 2.0.0 ok\r\n250 2.1.5 a ok\r\n550 5.1.1 no such b\r\n452 4.2.2 c full\r\n"
        b"354 go ahead\r\n"
    )  # MAIL, three RCPT and DATA answered in one write
    assert (ok.status, ok.reply) == ("delivered", "250 2.0.0 queued")
    assert (gone.status, gone.reply) == ("permanent", "550 5.1.1 no such b")
    assert (full.status, full.reply) == ("transient", "452 4.2.2 c full")
    assert scripted.messages == [(SENDER, ["a@x.example"], MESSAGE)]


async def test_multi_line_replies_cut_across_segments_are_put_back_together() -> None:
    scripted = Downstream(
        script={"RCPT": replies("250-2.1.5 first line\r\n250-second\r\n250 2.1.5 third")},
        pieces=4,
    )
    async with delivering(scripted) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
    assert outcome.status == "delivered"
    assert len(scripted.messages) == 1


async def test_a_pooled_connection_sends_rset_in_the_same_segment_as_the_envelope() -> None:
    scripted = Downstream()
    async with delivering(scripted) as delivery:
        for rcpt in ("a@x.example", "b@x.example", "c@x.example"):
            assert (await send(delivery, rcpt))[0].status == "delivered"
    first, *reused = scripted.envelopes()
    assert first.startswith(b"MAIL FROM:")
    assert reused == [
        b"RSET\r\nMAIL FROM:<s@caisses.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n",
        b"RSET\r\nMAIL FROM:<s@caisses.example>\r\nRCPT TO:<c@x.example>\r\nDATA\r\n",
    ]
    assert scripted.connections == 1
    assert len(scripted.messages) == 3


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    scripted = Downstream(pipelining=False)
    async with delivering(scripted) as delivery:
        for rcpt in ("a@x.example", "b@x.example"):
            assert (await send(delivery, rcpt))[0].status == "delivered"
    commands = [s for s in scripted.segments if not s.endswith(b"\r\n.\r\n")]
    assert commands[1:] == [
        b"MAIL FROM:<s@caisses.example>\r\n",
        b"RCPT TO:<a@x.example>\r\n",
        b"DATA\r\n",
        b"RSET\r\n",
        b"MAIL FROM:<s@caisses.example>\r\n",
        b"RCPT TO:<b@x.example>\r\n",
        b"DATA\r\n",
        b"QUIT\r\n",
    ]
    assert len(scripted.messages) == 2


async def test_unusual_but_legal_replies_cut_to_single_bytes_pair_with_their_commands() -> None:
    """A multi-line 251 (RFC 5321 3.4: accepted, to be forwarded), a 452 for one
    recipient only, a multi-line greeting and 354, each reply arriving a byte or two per
    segment: each recipient gets its own reply, and the session stays in step."""
    scripted = Downstream(
        greeting=b"220-downstream.test\r\n220 ESMTP\r\n",
        script={
            "RCPT": replies(
                "251-2.1.5 forwarded\r\n251 2.1.5 to elsewhere", "452 4.5.3 full", "250 ok"
            ),
            "DATA": replies("354-go\r\n354 ahead"),
        },
        pieces=400,
    )  # fmt: skip
    async with delivering(scripted) as delivery:
        a, b, c = await send(delivery, "a@x.example", "b@x.example", "c@x.example")
        (later,) = await send(delivery, "d@x.example")
    assert [(o.status, o.reply) for o in (a, b, c)] == [
        ("delivered", "250 2.0.0 queued"),
        ("transient", "452 4.5.3 full"),
        ("delivered", "250 2.0.0 queued"),
    ]
    assert later.status == "delivered"
    assert scripted.connections == 1
    assert scripted.messages == [
        (SENDER, ["a@x.example", "c@x.example"], MESSAGE),
        (SENDER, ["d@x.example"], MESSAGE),
    ]


async def test_a_250_to_data_delivers_nothing_and_the_session_is_not_reused() -> None:
    """DATA answered 250 instead of 354: the body was never asked for, so nothing is
    delivered (as in lock step, where aiosmtplib raises on it), and a server out of step
    is not trusted with the next transaction."""
    scripted = Downstream(script={"DATA": replies("250 2.0.0 what body?")})
    async with delivering(scripted) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
        (later,) = await send(delivery, "b@x.example")
    assert (outcome.status, outcome.reply) == ("transient", "250 2.0.0 what body?")
    assert later.status == "delivered"
    assert scripted.connections == 2
    assert scripted.messages == [(SENDER, ["b@x.example"], MESSAGE)]


# --- refusals --------------------------------------------------------------------------


async def test_every_recipient_refused_and_354_to_data_ends_an_empty_message() -> None:
    """RFC 2920 3.1 allows a server to accept DATA with no valid recipient; the client then
    sends no body but the "." that ends it, as Postfix does, and the session stays usable."""
    scripted = Downstream(
        script={
            "RCPT": replies("550 5.1.1 no a", "550 5.1.1 no b"),
            "DATA": replies("354 go ahead anyway"),
        }
    )
    async with delivering(scripted) as delivery:
        no_a, no_b = await send(delivery, "a@x.example", "b@x.example")
        (later,) = await send(delivery, "c@x.example")
    assert (no_a.status, no_a.reply) == ("permanent", "550 5.1.1 no a")
    assert (no_b.status, no_b.reply) == ("permanent", "550 5.1.1 no b")
    envelope = scripted.envelopes()[0]
    assert scripted.segments[scripted.segments.index(envelope) + 1] == b".\r\n"
    assert later.status == "delivered"
    assert scripted.connections == 1
    assert scripted.messages == [(SENDER, ["c@x.example"], MESSAGE)]


@pytest.mark.parametrize("closes", ["END", "DATA"], ids=["before-its-reply", "after-354"])
async def test_refusals_stand_when_the_empty_message_cannot_be_ended(closes: str) -> None:
    scripted = Downstream(
        script={"RCPT": replies("550 5.1.1 no a"), "DATA": replies("354 go ahead anyway")},
        close_after=closes,
    )
    if closes == "END":
        scripted.script["END"] = [CLOSE]
    async with delivering(scripted) as delivery:
        (refused,) = await send(delivery, "a@x.example")
        (later,) = await send(delivery, "b@x.example")
    assert (refused.status, refused.reply) == ("permanent", "550 5.1.1 no a")
    assert later.status == "delivered"
    assert scripted.connections == 2  # the first session was not reused


async def test_every_recipient_refused_and_554_to_data_sends_nothing_more() -> None:
    scripted = Downstream(script={"RCPT": replies("550 5.1.1 no a")})
    async with delivering(scripted) as delivery:
        (refused,) = await send(delivery, "a@x.example")
        (later,) = await send(delivery, "b@x.example")
    assert (refused.status, refused.reply) == ("permanent", "550 5.1.1 no a")
    first, second = scripted.envelopes()
    assert scripted.segments[scripted.segments.index(first) + 1] == second
    assert second.startswith(b"RSET\r\nMAIL FROM:")
    assert later.status == "delivered"
    assert scripted.connections == 1


async def test_a_refused_sender_gives_every_recipient_its_reply() -> None:
    scripted = Downstream(
        script={
            "MAIL": replies("550 5.7.1 sender refused"),
            "RCPT": replies("503 5.5.1 need MAIL", "503 5.5.1 need MAIL"),
            "DATA": replies("503 5.5.1 need RCPT"),
        }
    )
    async with delivering(scripted) as delivery:
        outcomes = await send(delivery, "a@x.example", "b@x.example")
        (later,) = await send(delivery, "c@x.example")
    assert [(o.status, o.reply) for o in outcomes] == [
        ("permanent", "550 5.7.1 sender refused"),
        ("permanent", "550 5.7.1 sender refused"),
    ]
    assert later.status == "delivered"
    assert scripted.connections == 1
    assert scripted.messages == [(SENDER, ["c@x.example"], MESSAGE)]


async def test_data_refused_gives_the_accepted_recipients_its_reply() -> None:
    scripted = Downstream(
        script={"RCPT": replies("250 ok", "550 5.1.1 no b"), "DATA": replies("451 4.3.0 later")}
    )
    async with delivering(scripted) as delivery:
        a, b = await send(delivery, "a@x.example", "b@x.example")
    assert (a.status, a.reply) == ("transient", "451 4.3.0 later")
    assert (b.status, b.reply) == ("permanent", "550 5.1.1 no b")
    assert scripted.messages == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])
@pytest.mark.parametrize("refused", ["DATA", "END"])
async def test_recipients_refused_keep_their_own_reply_when_the_data_is_refused(
    pipelining: bool, refused: str
) -> None:
    """A recipient refused at RCPT keeps that reply when DATA or the message is refused
    afterwards, with or without PIPELINING (in lock step aiosmtplib's sendmail gave every
    recipient the data's refusal: a 452 became a bounce, a 550 5.1.1 a retry)."""
    scripted = Downstream(
        pipelining=pipelining,
        script={
            "RCPT": replies("250 ok", "452 4.5.3 full", "550 5.1.1 no c"),
            refused: replies("554 5.6.0 refused"),
        },
    )
    async with delivering(scripted) as delivery:
        outcomes = await send(delivery, "a@x.example", "b@x.example", "c@x.example")
    assert [(o.status, o.reply) for o in outcomes] == [
        ("permanent", "554 5.6.0 refused"),
        ("transient", "452 4.5.3 full"),
        ("permanent", "550 5.1.1 no c"),
    ]
    assert scripted.messages == []


async def test_end_of_data_refused_is_classified() -> None:
    scripted = Downstream(script={"END": replies("554 5.6.0 content refused")})
    async with delivering(scripted) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
    assert (outcome.status, outcome.reply) == ("permanent", "554 5.6.0 content refused")


async def test_eight_bit_text_in_a_pipelined_refusal_is_kept_readable() -> None:
    scripted = Downstream(script={"RCPT": [b"550 5.1.1 bo\xeete \x1b[31m\r\n"]})
    async with delivering(scripted) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
    assert (outcome.status, outcome.reply) == ("permanent", "550 5.1.1 bo?te ?[31m")


# --- a next hop that fails or is out of step -------------------------------------------


async def test_421_mid_pipeline_is_transient_and_the_connection_is_not_reused() -> None:
    scripted = Downstream(script={"RCPT": [b"421 4.3.2 shutting down\r\n"], "DATA": [CLOSE]})
    async with delivering(scripted) as delivery:
        (alone,) = await send(delivery, "a@x.example")
        (after,) = await send(delivery, "b@x.example")
    assert (alone.status, alone.reply) == ("transient", "421 4.3.2 shutting down")
    assert after.status == "delivered"
    assert scripted.connections == 2
    assert scripted.messages == [(SENDER, ["b@x.example"], MESSAGE)]


async def test_421_to_a_later_recipient_loses_no_one_and_delivers_nothing() -> None:
    scripted = Downstream(script={"RCPT": [b"250 ok\r\n", b"421 4.3.2 bye\r\n"], "DATA": [CLOSE]})
    async with delivering(scripted) as delivery:
        outcomes = await send(delivery, "a@x.example", "b@x.example")
    assert [o.status for o in outcomes] == ["transient", "transient"]
    assert scripted.messages == []


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA", "END"])
async def test_a_connection_closed_mid_pipeline_delivers_nothing(command: str) -> None:
    scripted = Downstream(script={command: [CLOSE]})
    async with delivering(scripted) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
    assert outcome.status == "transient"
    assert outcome.reply.startswith("4.4.2")
    assert scripted.messages == []


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
async def test_more_replies_than_commands_never_pair_with_a_later_command(command: str) -> None:
    """An extra reply would shift every later one onto the wrong command (a refusal onto
    the wrong recipient, a 354 onto the end of data): the attempt fails as a whole."""
    scripted = Downstream(extra={command: b"550 5.1.1 unasked\r\n"})
    async with delivering(scripted) as delivery:
        outcomes = await send(delivery, "a@x.example", "b@x.example")
    assert [o.status for o in outcomes] == ["transient", "transient"]
    assert not any("unasked" in o.reply for o in outcomes)
    assert scripted.messages == []


async def test_an_extra_reply_with_the_end_of_data_reply_is_in_doubt() -> None:
    """Which of the two answered the body cannot be known: the attempt is transient (the
    message may go twice, never be lost) and the session is dropped."""
    scripted = Downstream(script={"END": [b"250 2.0.0 queued\r\n250 2.0.0 unasked\r\n"]})
    async with delivering(scripted) as delivery:
        (first,) = await send(delivery, "a@x.example")
        (second,) = await send(delivery, "b@x.example")
    assert (first.status, second.status) == ("transient", "delivered")
    assert scripted.connections == 2


async def test_replies_before_any_command_fail_the_connection() -> None:
    scripted = Downstream(greeting=b"220 downstream.test\r\n250 2.0.0 ok\r\n250 2.0.0 ok\r\n")
    async with delivering(scripted) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
    assert outcome.status == "transient"
    assert scripted.envelopes() == []


async def test_a_garbage_reply_mid_pipeline_is_transient() -> None:
    scripted = Downstream(script={"RCPT": [b"abc what\r\n"]})
    async with delivering(scripted) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
        (after,) = await send(delivery, "b@x.example")
    assert outcome.status == "transient"
    assert after.status == "delivered"
    assert scripted.connections == 2
    assert scripted.messages == [(SENDER, ["b@x.example"], MESSAGE)]


async def test_a_reply_that_never_comes_times_out_as_transient() -> None:
    scripted = Downstream(script={"RCPT": [b"250-still going\r\n"]})
    async with delivering(scripted, wait=0.3) as delivery:
        (outcome,) = await send(delivery, "a@x.example")
    assert outcome.status == "transient"
    assert scripted.messages == []


# --- a pooled session that died --------------------------------------------------------


@pytest.mark.parametrize(
    "death",
    ["closed, noticed", "closed, unnoticed", "421 to RSET", "unasked reply while idle"],
)
async def test_a_dead_pooled_connection_is_replaced_once_and_nothing_doubles(death: str) -> None:
    scripted = Downstream()
    if death.startswith("closed"):
        scripted.close_when_idle = True
    elif death == "421 to RSET":
        scripted.script["RSET"] = [b"421 4.4.2 idle too long\r\n"]
    else:
        scripted.idle_reply = b"250 2.0.0 unasked\r\n"
    async with delivering(scripted) as delivery:
        (first,) = await send(delivery, "a@x.example")
        if death != "closed, unnoticed":
            await asyncio.sleep(0.05)  # the client sees the close or the stray reply
        (second,) = await send(delivery, "b@x.example")
    assert (first.status, second.status) == ("delivered", "delivered")
    assert scripted.connections == 2
    assert scripted.messages == [
        (SENDER, ["a@x.example"], MESSAGE),
        (SENDER, ["b@x.example"], MESSAGE),
    ]


# --- a real server (aiosmtpd) told to advertise PIPELINING ------------------------------


@pytest.fixture
def pipelining_peer(peer: Peer) -> Peer:
    peer.advertise.append("PIPELINING")
    return peer


async def test_aiosmtpd_gets_every_message_byte_for_byte_with_its_size(
    pipelining_peer: Peer,
) -> None:
    peer = pipelining_peer
    peer.refuse["gone@x.example"] = "550 5.1.1 No such user"
    delivery = Delivery(Smarthost(peer.host, peer.port), local_hostname="gw.test", timeout=5)
    try:
        first = await delivery.deliver(SENDER, ["a@x.example", "gone@x.example"], MESSAGE)
        second = await delivery.deliver(SENDER, ["b@y.example"], MESSAGE)
    finally:
        await delivery.close()
    assert [o.status for o in first] == ["delivered", "permanent"]
    assert first[1].reply == "550 5.1.1 No such user"
    assert second[0].status == "delivered"
    assert [(m.recipients, m.data) for m in peer.messages] == [
        (["a@x.example"], MESSAGE),
        (["b@y.example"], MESSAGE),
    ]
    assert peer.messages[0].mail_options == (f"SIZE={len(MESSAGE)}",)
    assert peer.connections == 1
    assert peer.commands[:1] == ["RSET"]  # the second transaction, on the pooled session


async def test_aiosmtpd_over_starttls_pipelines_after_the_second_ehlo(
    tls_peer: Peer,
) -> None:
    tls_peer.advertise.append("PIPELINING")
    delivery = Delivery(
        Smarthost(tls_peer.host, tls_peer.port), local_hostname="gw.test", timeout=5
    )
    try:
        outcomes = await delivery.deliver(SENDER, ["a@x.example", "b@x.example"], MESSAGE)
    finally:
        await delivery.close()
    assert [o.status for o in outcomes] == ["delivered", "delivered"]
    (received,) = tls_peer.messages
    assert received.tls
    assert received.data == MESSAGE


async def test_aiosmtpd_gets_a_message_of_dot_lines_byte_for_byte(pipelining_peer: Peer) -> None:
    """Dots at the very start, lone "." and ".." lines, a "." line just before the end:
    each stuffed on the way and unstuffed by a real server into the bytes sealed."""
    dotted = (
        b".\r\n..\r\n.a\r\nFrom: s@caisses.example\r\nSubject: dots\r\n\r\n"
        b".\r\n..\r\n. \r\nx.\r\n...\r\n.\r\n"
    )
    peer = pipelining_peer
    delivery = Delivery(Smarthost(peer.host, peer.port), local_hostname="gw.test", timeout=5)
    try:
        (outcome,) = await delivery.deliver(SENDER, ["a@x.example"], dotted)
    finally:
        await delivery.close()
    assert outcome.status == "delivered"
    assert [m.data for m in peer.messages] == [dotted]

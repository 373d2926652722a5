"""The scheduler end to end: spool -> delivery over real sockets -> the recording peer.

Times are in milliseconds (RetryPolicy is a parameter); DSNs are DKIM-signed by a small
dkimpy-based ``seal`` and checked with dkimpy, as the real sealer's output would be.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.delivery import Delivery, Outcome, Smarthost
from gateway.mail_params import MailParams
from gateway.scheduler import RetryPolicy, Scheduler
from gateway.spool import DB_NAME, HELD_OVERHEAD, Envelope, Spool
from keys.signing import SigningMaterial
from tests.gateway.conftest import Peer, Received
from tests.gateway.test_dsn import parse, status_blocks

SENDER = "decomptes@caisses.example"
FAST = RetryPolicy(first=0.02, ceiling=0.05, lifetime=60.0, jitter=0.2)


def message(subject: str = "statement") -> bytes:
    return (
        f"From: Statements <{SENDER}>\r\nTo: member@x.example\r\nSubject: {subject}\r\n"
        "Message-ID: <1@caisses.example>\r\n\r\nstatement body\r\n"
    ).encode()


class DkimSeal:
    """``async seal(raw, domain) -> bytes`` with dkimpy and the test RSA key."""

    def __init__(self, material: SigningMaterial) -> None:
        self.material = material
        self.domains: list[str] = []
        self.fail = False

    async def __call__(self, raw: bytes, domain: str) -> bytes:
        self.domains.append(domain)
        if self.fail:
            raise RuntimeError("no active key")
        pem = self.material.rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        header: bytes = dkim.sign(
            raw, self.material.rsa_selector.encode(), domain.encode(), pem,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )  # fmt: skip
        return header + raw

    def verifies(self, data: bytes) -> bool:
        public = self.material.rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            assert name == f"{self.material.rsa_selector}._domainkey.caisses.example.".encode()
            return record

        return bool(dkim.verify(data, dnsfunc=dnsfunc))


@pytest.fixture
def seal(signing_material: SigningMaterial) -> DkimSeal:
    return DkimSeal(signing_material)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = Spool.open(tmp_path / "spool")
    yield opened
    await opened.close()


Run = Callable[..., Awaitable[Scheduler]]


@asynccontextmanager
async def running(
    spool: Spool, peer: Peer, seal: Callable[[bytes, str], Awaitable[bytes]], **kwargs: object
) -> AsyncIterator[Scheduler]:
    delivery = Delivery(Smarthost(peer.host, peer.port), local_hostname="gw.test", timeout=5)
    options: dict[str, object] = {
        "reporting_mta": "gw.caisses.example",
        "policy": FAST,
        "poll_interval": 0.05,
        "rng": random.Random(1),
    }
    options.update(kwargs)
    scheduler = Scheduler(spool, delivery, seal, **options)  # type: ignore[arg-type]
    scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()
        await delivery.close()


async def queue(spool: Spool, scheduler: Scheduler | None, rcpts: list[str], **kw: str) -> str:
    queue_id = await spool.put(Envelope(kw.get("sender", SENDER), rcpts, message(), "test"))
    if scheduler is not None:
        scheduler.notify()
    return queue_id


async def until(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll ``condition`` (it reads the spool or the peer, which signal nothing)."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def dsns(peer: Peer) -> list[Received]:
    return [m for m in peer.messages if m.sender == ""]


async def test_new_mail_goes_out_at_once_on_notify(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    async with running(spool, peer, seal, poll_interval=30.0) as scheduler:
        await asyncio.sleep(0.05)  # the scheduler is now asleep for up to 30 s
        started = time.monotonic()
        await queue(spool, scheduler, ["a@x.example", "b@x.example"])
        await peer.wait_for(1, within=2.0)
        assert time.monotonic() - started < 1.0
        await until(lambda: _depth_is(spool, 0))
    assert peer.messages[0].recipients == ["a@x.example", "b@x.example"]
    assert peer.messages[0].data == message()


async def test_451_for_a_while_then_250_everything_arrives(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.fail_next(3, "451 4.3.0 Try again later")
    async with running(spool, peer, seal) as scheduler:
        ids = [await queue(spool, scheduler, [f"r{i}@x.example"]) for i in range(2)]
        await peer.wait_for(2)
        await until(lambda: _depth_is(spool, 0))
    assert sorted(r for m in peer.messages for r in m.recipients) == [
        "r0@x.example",
        "r1@x.example",
    ]
    assert peer.transactions == 5
    assert dsns(peer) == []
    assert len(ids) == 2


async def test_a_first_attempt_that_defers_is_delivered_later_from_disk_with_the_same_bytes(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.fail_next(1, "451 4.3.0 Try again later")
    async with running(spool, peer, seal) as scheduler:
        queue_id = await queue(spool, scheduler, ["a@x.example"])
        assert spool.held_bytes == len(message()) + HELD_OVERHEAD  # kept for its first try
        await until(lambda: _attempted(spool, queue_id))
        assert spool.held_bytes == 0  # so the retry reads the disk
        await peer.wait_for(1)
        await until(lambda: _depth_is(spool, 0))
    assert peer.transactions == 2
    assert [(m.recipients, m.data) for m in peer.messages] == [(["a@x.example"], message())]


async def test_a_restart_delivers_from_disk_what_the_last_run_accepted(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    before = Spool.open(spool.path)
    try:
        await queue(before, None, ["a@x.example"])
    finally:
        await before.close()
    assert spool.held_bytes == 0
    async with running(spool, peer, seal):
        await peer.wait_for(1)
        await until(lambda: _depth_is(spool, 0))
    assert peer.messages[0].data == message()


async def test_deferral_is_recorded_with_attempts_reply_and_backoff(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.refuse["slow@x.example"] = "452 4.2.2 Mailbox full"
    slow = RetryPolicy(first=30.0, ceiling=60.0, lifetime=3600.0, jitter=0.2)
    async with running(spool, peer, seal, policy=slow) as scheduler:
        before = time.time()
        queue_id = await queue(spool, scheduler, ["slow@x.example", "ok@x.example"])
        await peer.wait_for(1)
        await until(lambda: _attempted(spool, queue_id))
    stored = await spool.load(queue_id)
    assert stored is not None
    slow_rcpt, ok_rcpt = stored.recipients
    assert (ok_rcpt.state, ok_rcpt.attempts) == ("delivered", 1)
    assert (slow_rcpt.state, slow_rcpt.attempts) == ("deferred", 1)
    assert slow_rcpt.last_reply == "452 4.2.2 Mailbox full"
    assert before + 30 * 0.8 <= slow_rcpt.next_attempt <= time.time() + 30 * 1.2
    assert peer.delivered_to("ok@x.example")


async def test_550_for_one_recipient_others_arrive_and_one_signed_dsn_names_it(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.refuse["gone@x.example"] = "550 5.1.1 <gone@x.example>: No such user"
    async with running(spool, peer, seal) as scheduler:
        queue_id = await queue(spool, scheduler, ["a@x.example", "gone@x.example", "b@x.example"])
        await peer.wait_for(2)
        await until(lambda: _depth_is(spool, 0))
        await asyncio.sleep(0.1)  # time enough for a wrong second DSN to show up
    (original,) = [m for m in peer.messages if m.sender == SENDER]
    assert original.recipients == ["a@x.example", "b@x.example"]
    (bounce,) = dsns(peer)
    assert bounce.recipients == [SENDER]
    assert seal.domains == ["caisses.example"]
    assert seal.verifies(bounce.data)

    report = parse(bounce.data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    per_message, *per_recipient = status_blocks(report)
    assert per_message["Reporting-MTA"] == "dns; gw.caisses.example"
    assert f"X-Sealpost-Queue-ID: {queue_id}" in str(per_message)
    (failed,) = per_recipient
    assert failed["Final-Recipient"] == "rfc822; gone@x.example"
    assert failed["Action"] == "failed"
    assert failed["Status"] == "5.1.1"
    assert failed["Diagnostic-Code"] == "smtp; 550 5.1.1 <gone@x.example>: No such user"


async def test_each_recorded_attempt_reports_the_recipient_states_it_stored(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.refuse["gone@x.example"] = "550 5.1.1 <gone@x.example>: No such user"
    peer.refuse["full@x.example"] = "452 4.2.2 <full@x.example>: Mailbox full"
    reports: list[dict[str, int]] = []
    async with running(spool, peer, seal, on_recorded=lambda c: reports.append(dict(c))):
        await queue(spool, None, ["a@x.example", "gone@x.example", "full@x.example"])
        await until(lambda: _reported(reports))
    assert reports[0] == {"delivered": 1, "deferred": 1, "bounced": 1}


async def test_each_recipients_recorded_state_is_reported_for_the_per_insurer_metrics(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.refuse["gone@x.example"] = "550 5.1.1 <gone@x.example>: No such user"
    peer.refuse["full@x.example"] = "452 4.2.2 <full@x.example>: Mailbox full"
    reports: list[list[tuple[str, str]]] = []
    async with running(spool, peer, seal, on_recipients=lambda r: reports.append(list(r))):
        await queue(spool, None, ["a@x.example", "gone@x.example", "full@x.example"])
        await until(lambda: _reported(reports))
    assert sorted(reports[0]) == [
        ("a@x.example", "delivered"),
        ("full@x.example", "deferred"),
        ("gone@x.example", "bounced"),
    ]


async def _reported(reports: list[Any]) -> bool:
    return len(reports) >= 1


async def test_lifetime_reached_bounces_with_a_dsn(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.refuse["slow@x.example"] = "451 4.2.1 Mailbox busy"
    short = RetryPolicy(first=0.02, ceiling=0.05, lifetime=0.3, jitter=0.2)
    async with running(spool, peer, seal, policy=short) as scheduler:
        await queue(spool, scheduler, ["slow@x.example"])
        await peer.wait_for(1)
        await until(lambda: _depth_is(spool, 0))
    (bounce,) = dsns(peer)
    (failed,) = status_blocks(parse(bounce.data))[1:]
    assert failed["Final-Recipient"] == "rfc822; slow@x.example"
    assert failed["Status"] == "4.2.1"
    assert failed["Diagnostic-Code"] == "smtp; 451 4.2.1 Mailbox busy"
    assert peer.rcpt_attempts.count("slow@x.example") >= 2  # retried until the lifetime


async def test_no_dsn_for_a_message_from_the_null_sender(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.refuse["gone@x.example"] = "550 5.1.1 No such user"
    async with running(spool, peer, seal) as scheduler:
        await queue(spool, scheduler, ["gone@x.example"], sender="")
        await until(lambda: _depth_is(spool, 0))
        await asyncio.sleep(0.1)
    assert peer.messages == []
    assert seal.domains == []


async def test_a_dsn_that_cannot_be_sealed_keeps_the_failure_queued(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    seal.fail = True
    peer.refuse["gone@x.example"] = "550 5.1.1 No such user"
    slow = RetryPolicy(first=30.0, ceiling=60.0, lifetime=3600.0)
    async with running(spool, peer, seal, policy=slow) as scheduler:
        queue_id = await queue(spool, scheduler, ["gone@x.example"])
        await until(lambda: _attempted(spool, queue_id))
    stored = await spool.load(queue_id)
    assert stored is not None
    (rcpt,) = stored.recipients
    assert rcpt.state == "deferred"
    assert "DSN not sent" in rcpt.last_reply
    assert peer.messages == []


class BrokenDelivery:
    def __init__(self) -> None:
        self.calls = 0

    async def deliver(
        self, sender: str, recipients: Sequence[str], data: bytes, params: MailParams
    ) -> list[Outcome]:
        self.calls += 1
        raise RuntimeError("bug")


async def test_an_internal_error_defers_instead_of_looping(spool: Spool, seal: DkimSeal) -> None:
    broken = BrokenDelivery()
    slow = RetryPolicy(first=30.0, ceiling=60.0, lifetime=3600.0)
    scheduler = Scheduler(spool, broken, seal, reporting_mta="gw", policy=slow, poll_interval=0.05)
    scheduler.start()
    try:
        queue_id = await queue(spool, scheduler, ["a@x.example"])
        await until(lambda: _attempted(spool, queue_id))
        await asyncio.sleep(0.2)  # several polls
    finally:
        await scheduler.stop()
    assert broken.calls == 1
    stored = await spool.load(queue_id)
    assert stored is not None
    assert stored.recipients[0].state == "deferred"
    assert stored.recipients[0].last_reply == "4.3.0 internal error in delivery"


async def test_changes_from_another_process_are_seen_at_the_next_poll(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.fail_next(1, "451 4.3.0 Try again later")
    slow = RetryPolicy(first=3600.0, ceiling=3600.0, lifetime=86400.0)
    async with running(spool, peer, seal, policy=slow, poll_interval=0.1) as scheduler:
        queue_id = await queue(spool, scheduler, ["a@x.example"])
        await until(lambda: _attempted(spool, queue_id))
        other = Spool.open(spool.path)  # as the queue tool would, with its own connection
        try:
            assert await other.retry(queue_id)
        finally:
            await other.close()
        await peer.wait_for(1, within=3.0)
    assert peer.messages[0].recipients == ["a@x.example"]


async def test_corrupt_entry_is_set_aside_and_the_rest_delivered(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    # Queued before a restart: what this process delivers comes from the disk (a message
    # it put itself goes out from the bytes it committed, see the next test).
    before = Spool.open(spool.path)
    try:
        bad = await queue(before, None, ["bad@x.example"])
        await queue(before, None, ["good@x.example"])
    finally:
        await before.close()
    conn = sqlite3.connect(spool.path / DB_NAME)
    try:
        conn.execute("UPDATE messages SET data = ? WHERE id = ?", (b"damaged", bad))
        conn.commit()
    finally:
        conn.close()
    async with running(spool, peer, seal):
        await peer.wait_for(1)
        await until(lambda: _depth_is(spool, 0))
    assert [m.recipients for m in peer.messages] == [["good@x.example"]]
    assert [c.id for c in await spool.corrupt_entries()] == [bad]


async def test_stop_abandons_in_flight_delivery_and_it_is_retried_later(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    peer.data_delay = 2.0
    async with running(spool, peer, seal, grace=0.1) as scheduler:
        queue_id = await queue(spool, scheduler, ["a@x.example"])
        await until(lambda: _transactions_started(peer))
    assert scheduler.in_flight == 0
    stored = await spool.load(queue_id)
    assert stored is not None
    assert stored.recipients[0].state == "queued"  # untouched: retried as if never tried
    peer.data_delay = 0.0
    async with running(spool, peer, seal):
        await until(lambda: _depth_is(spool, 0))
    assert peer.delivered_to("a@x.example")  # at least once


def test_backoff_doubles_from_about_a_minute_to_about_an_hour() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    assert policy.lifetime == 5 * 86400
    firsts = [policy.delay(1, rng) for _ in range(200)]
    assert min(firsts) >= 48
    assert max(firsts) <= 72
    assert len({round(d, 3) for d in firsts}) > 100  # jittered
    assert 96 <= policy.delay(2, rng) <= 144
    assert all(2880 <= policy.delay(n, rng) <= 4320 for n in (7, 10, 50))


async def _depth_is(spool: Spool, depth: int) -> bool:
    return await spool.depth() == depth


async def _attempted(spool: Spool, queue_id: str) -> bool:
    stored = await spool.load(queue_id)
    return stored is not None and all(r.attempts > 0 for r in stored.recipients)


async def _transactions_started(peer: Peer) -> bool:
    return peer.transactions > 0


async def test_one_log_line_per_message_event_without_body(
    spool: Spool, peer: Peer, seal: DkimSeal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealpost")
    peer.refuse["gone@x.example"] = "550 5.1.1 No such user"
    async with running(spool, peer, seal) as scheduler:
        queue_id = await queue(spool, scheduler, ["a@x.example", "gone@x.example"])
        await until(lambda: _depth_is(spool, 0))
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    mine = [line for name, line in lines if f"id={queue_id}" in line]
    assert [line.split()[0] for line in mine] == ["event=queued", "event=dsn", "event=attempt"]
    attempt = mine[-1]
    assert "nrcpt=2 delivered=1 deferred=0 bounced=1 done=True" in attempt
    assert ("sealpost.delivery", attempt) in lines
    assert all("statement body" not in line for _, line in lines)


# ---------------------------------------------------------------------------- SMTPUTF8, 8BITMIME

UTF8 = MailParams(smtputf8=True, body="8BITMIME")


def utf8_message(subject: str = "statement", body: str = "statement body") -> bytes:
    return (
        f"From: Statements <{SENDER}>\r\nTo: member@x.example\r\nSubject: {subject}\r\n"
        f"Message-ID: <2@caisses.example>\r\n\r\n{body}\r\n"
    ).encode()


async def queue_with(
    spool: Spool, scheduler: Scheduler, rcpts: list[str], data: bytes, params: MailParams
) -> str:
    queue_id = await spool.put(Envelope(SENDER, rcpts, data, "test", params=params))
    scheduler.notify()
    return queue_id


async def test_smtputf8_and_8bitmime_are_passed_on_when_the_next_hop_offers_them(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    async with running(spool, peer, seal) as scheduler:
        await queue_with(spool, scheduler, ["jörg@x.example"], utf8_message("Décompte"), UTF8)
        (received,) = await peer.wait_for(1)
    assert received.recipients == ["jörg@x.example"]
    assert "SMTPUTF8" in received.mail_options
    assert "BODY=8BITMIME" in received.mail_options
    assert received.data == utf8_message("Décompte")


@pytest.mark.parametrize(
    ("rcpt", "subject"),
    [("jörg@x.example", "statement"), ("member@x.example", "Décompte n° 12")],
    ids=["non-ascii-recipient", "non-ascii-header"],
)
async def test_a_message_that_needs_smtputf8_is_bounced_with_5_6_7_not_sent_without_it(
    spool: Spool, peer: Peer, seal: DkimSeal, rcpt: str, subject: str
) -> None:
    peer.withhold = {"SMTPUTF8"}
    async with running(spool, peer, seal) as scheduler:
        await queue_with(spool, scheduler, [rcpt], utf8_message(subject), UTF8)
        await until(lambda: _depth_is(spool, 0))
    assert peer.rcpt_attempts == [SENDER]  # only the DSN went out; the message never did
    (bounce,) = dsns(peer)
    # RFC 6533: the DSN of an SMTPUTF8 message is the global kind.
    report = parse(bounce.data)
    assert report.get_param("report-type") == "global-delivery-status"
    types = [p.get_content_type() for p in report.iter_parts()]
    assert types == ["text/plain", "message/global-delivery-status", "message/global-headers"]
    text = bounce.data.decode()
    final = "utf-8" if not rcpt.isascii() else "rfc822"
    assert f"Final-Recipient: {final}; {rcpt}\r\n" in text
    assert "Status: 5.6.7\r\n" in text
    assert f"Diagnostic-Code: X-Sealpost; 5.6.7 {peer.host} does not support SMTPUTF8" in text
    assert seal.verifies(bounce.data)


async def test_an_ascii_message_submitted_with_smtputf8_goes_without_it(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    # RFC 6531 3.4: a client SHOULD NOT send SMTPUTF8 when nothing needs it.
    peer.withhold = {"SMTPUTF8"}
    async with running(spool, peer, seal) as scheduler:
        await queue_with(spool, scheduler, ["member@x.example"], utf8_message(), UTF8)
        (received,) = await peer.wait_for(1)
    assert "SMTPUTF8" not in received.mail_options
    assert dsns(peer) == []


async def test_8bit_content_to_a_hop_without_8bitmime_is_bounced_with_5_6_3(
    spool: Spool, peer: Peer, seal: DkimSeal
) -> None:
    # Converting it to 7 bit would break its DKIM seal; sending it as is breaks RFC 6152.
    peer.withhold = {"8BITMIME"}
    data = utf8_message(body="Montant remboursé : 12,50 €")
    async with running(spool, peer, seal) as scheduler:
        await queue_with(spool, scheduler, ["member@x.example"], data, MailParams(body=""))
        await until(lambda: _depth_is(spool, 0))
    (bounce,) = dsns(peer)
    assert peer.rcpt_attempts == [SENDER]
    (failed,) = status_blocks(parse(bounce.data))[1:]
    assert failed["Status"] == "5.6.3"
    assert "does not support 8BITMIME" in str(failed["Diagnostic-Code"])
    assert bounce.data.isascii()  # the DSN itself is 7-bit, so it gets through

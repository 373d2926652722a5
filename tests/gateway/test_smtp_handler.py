"""The SMTP session as a client sees it: real sockets to the gateway's listeners on
127.0.0.1, real TLS, real sealing with test keys, and a spool double that records puts.

Clients connect from 127.0.0.1 (allow-listed as the "loopback" client) or bind another
loopback address such as 127.0.0.2 (not allow-listed) to play an outsider.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import gc
import logging
import random
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import policy, server, smtp_handler, smtp_setup
from gateway.mail_params import MailParams
from gateway.metrics import Metrics
from gateway.seal import DocumentRules, Sealed, seal
from gateway.settings import ClientSettings, hash_password
from gateway.smtp_handler import (
    AuthGuard,
    GatewaySMTP,
    Handler,
    SessionLimits,
    Sessions,
    _StrictLineReader,
    unstuffed,
)
from gateway.spool import Envelope
from keys.signing import SigningMaterial
from tests.gateway import test_smtp_setup as smtp_setup_test

HOST = "127.0.0.1"
OUTSIDER = "127.0.0.2"
DOMAIN = "caisses.example"
PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)
CLIENTS = (
    ClientSettings(name="loopback", networks=("127.0.0.1/32",), sender_domains=(DOMAIN,)),
    ClientSettings(name="batch", password_hash=PASSWORD_HASH, sender_domains=(DOMAIN,)),
)
SIGNING_DOMAINS = frozenset({DOMAIN, "second.example"})


def message(
    sender: str = f"decomptes@{DOMAIN}", extra_headers: str = "", body: str = "Bonjour.\r\n"
) -> bytes:
    return (
        f"From: Caisses Sociales <{sender}>\r\nTo: membre@example.org\r\n"
        f"Subject: Votre décompte\r\n{extra_headers}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}"
    ).encode()


@dataclass
class RecordingSpool:
    """Stands in for gateway.spool: records what would be stored."""

    puts: list[Envelope] = field(default_factory=list)
    fail: bool = False

    async def put(self, envelope: Envelope) -> str:
        if self.fail:
            raise OSError("disk full")
        self.puts.append(envelope)
        return f"Q{len(self.puts):04d}"


@dataclass
class InlineSealer:
    """The real `seal` with test keys, run inline (gateway.sealer runs it in a pool)."""

    material: SigningMaterial

    async def seal(self, raw: bytes, domain: str) -> Sealed:
        return seal(raw, self.material, DocumentRules())


@dataclass
class Gateway:
    receiver: server.Receiver
    spool: RecordingSpool
    metrics: Metrics

    def port(self, mode: server.Mode = "relay") -> int:
        return self.receiver.address(mode)[1]


@contextlib.asynccontextmanager
async def running_gateway(
    material: SigningMaterial,
    tls: ssl.SSLContext,
    proxy_protocol_timeout: float | None = None,
    **limit_overrides: Any,
) -> AsyncIterator[Gateway]:
    values: dict[str, Any] = {
        "max_message_size": 64 * 1024,
        "max_recipients": 3,
        "command_timeout": 5.0,
        "data_timeout": 5.0,
        "max_line_length": 998,
        "max_junk_commands": 100,
        "max_errors": 20,
        "tls_handshake_timeout": 5.0,
        "max_connections": 20,
        "max_connections_per_ip": 10,
        "auth_max_failures_per_ip": 3,
        "auth_max_failures_per_user": 5,
    }
    values.update(limit_overrides)
    limits = SessionLimits(**{f.name: values[f.name] for f in dataclasses.fields(SessionLimits)})
    spool, metrics = RecordingSpool(), Metrics()
    handler = Handler(
        clients=CLIENTS,
        signing_domains=lambda: SIGNING_DOMAINS,
        sealer=InlineSealer(material),
        spool=spool,
        metrics=metrics,
        auth_guard=AuthGuard(
            values["auth_max_failures_per_ip"],
            values["auth_max_failures_per_user"],
            lockout=60.0,
            delay=0.01,
        ),
        max_recipients=limits.max_recipients,
        max_line_length=limits.max_line_length,
    )
    sessions = Sessions(values["max_connections"], values["max_connections_per_ip"])
    receiver = await server.start(
        handler,
        [
            server.ListenerSpec("relay", HOST, 0, proxy_protocol_timeout),
            server.ListenerSpec("submission", HOST, 0),
            server.ListenerSpec("smtps", HOST, 0),
        ],
        hostname="gateway.test",
        tls=tls,
        limits=limits,
        sessions=sessions,
    )
    try:
        yield Gateway(receiver, spool, metrics)
    finally:
        await receiver.close(grace=1.0)


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture
async def gateway(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> AsyncIterator[Gateway]:
    async with running_gateway(signing_material, server_tls) as running:
        yield running


class Raw:
    """A plain socket client that sends exactly the bytes given and reads whole replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str = HOST) -> Raw:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        return cls(reader, writer)

    async def reply(self) -> str:
        """One reply; a multi-line reply comes back joined with newlines."""
        lines: list[str] = []
        async with asyncio.timeout(5):
            while True:
                line = (await self.reader.readline()).decode()
                if not line:
                    raise ConnectionError("closed: " + "\n".join(lines))
                lines.append(line.rstrip("\r\n"))
                if len(line) < 4 or line[3] != "-":
                    return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> str:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def greet(self) -> str:
        assert (await self.reply()).startswith("220 ")
        return await self.command("EHLO client.test")

    async def closed(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw(port: int, source: str = HOST) -> AsyncIterator[Raw]:
    client = await Raw.connect(port, source)
    try:
        yield client
    finally:
        client.close()


async def transaction(
    client: Raw, data: bytes, sender: str = f"decomptes@{DOMAIN}", rcpts: int = 1
) -> str:
    """MAIL, RCPT, DATA with dot-stuffing; the reply to the end of data."""
    assert (await client.command(f"MAIL FROM:<{sender}>")).startswith("250 ")
    for i in range(rcpts):
        assert (await client.command(f"RCPT TO:<membre{i}@example.org>")).startswith("250 ")
    assert (await client.command("DATA")).startswith("354 ")
    stuffed = b"\r\n".join(
        b"." + line if line.startswith(b".") else line for line in data.split(b"\r\n")
    )
    await client.send(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    return await client.reply()


# ---------------------------------------------------------------------------- accepting


async def test_message_from_allow_listed_network_is_sealed_and_queued(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, message(), rcpts=2)
    assert reply == "250 2.0.0 Queued as Q0001"
    [stored] = gateway.spool.puts
    assert stored.sender == f"decomptes@{DOMAIN}"
    assert stored.recipients == ["membre0@example.org", "membre1@example.org"]
    assert stored.client == "loopback"
    assert stored.data.count(b"DKIM-Signature:") == 2
    assert stored.data.endswith(b"Bonjour.\r\n")
    assert gateway.metrics.received.value() == 1
    assert gateway.metrics.sealed.value() == 1
    assert gateway.metrics.signing_seconds.count == 1


async def test_the_ehlo_reply_is_written_at_once(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its seven lines in one write (one send), not one each; the same bytes."""
    written: list[bytes] = []
    write = asyncio.selector_events._SelectorSocketTransport.write  # type: ignore[attr-defined]

    def spying(transport: asyncio.Transport, data: bytes) -> None:
        written.append(bytes(data))
        write(transport, data)

    monkeypatch.setattr(asyncio.selector_events._SelectorSocketTransport, "write", spying)  # type: ignore[attr-defined]
    async with raw(gateway.port()) as client:
        ehlo = await client.greet()
    [reply] = [data for data in written if data.startswith(b"250-")]
    assert reply.decode() == ehlo.replace("\n", "\r\n") + "\r\n"
    assert len(ehlo.splitlines()) >= 7


async def test_ehlo_advertises_extensions_and_no_auth_before_tls(gateway: Gateway) -> None:
    async with raw(gateway.port("submission")) as client:
        ehlo = await client.greet()
    keywords = {line[4:].split()[0] for line in ehlo.splitlines()[1:]}
    assert {"SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"} <= (
        keywords
    )
    assert "AUTH" not in keywords
    assert "250-SIZE 65536" in ehlo.splitlines()


async def test_pipelined_transaction_gets_one_reply_per_command(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.send(f"MAIL FROM:<a@{DOMAIN}>\r\nRCPT TO:<m@example.org>\r\nDATA\r\n".encode())
        replies = [await client.reply() for _ in range(3)]
        await client.send(message() + b".\r\n")
        replies.append(await client.reply())
    assert [r[:3] for r in replies] == ["250", "250", "354", "250"]


_ENVELOPE = f"MAIL FROM:<decomptes@{DOMAIN}>\r\nRCPT TO:<membre@example.org>\r\nDATA\r\n"


@pytest.mark.parametrize("oversized", [False, True], ids=["fits", "oversized"])
async def test_a_transaction_pipelined_behind_a_message_in_its_segment_is_served(
    gateway: Gateway, oversized: bool
) -> None:
    """The end of one message, the next transaction and QUIT in one TCP segment: the
    commands after the "." are read as commands (not lost in the message, nor part of
    it), also when the message before was too big and thrown away as it came."""
    first = message(body=("x" * 70 + "\r\n") * (1000 if oversized else 1))
    second = message(body="second\r\n")
    pipelined = (
        _ENVELOPE.encode() + first + b".\r\n" + _ENVELOPE.encode() + second + b".\r\nQUIT\r\n"
    )
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.send(pipelined)
        replies = [await client.reply() for _ in range(9)]
    assert [r[:3] for r in replies] == [
        "250", "250", "354", "552" if oversized else "250", "250", "250", "354", "250", "221"
    ]  # fmt: skip
    assert [p.data.endswith(b"\r\n\r\nsecond\r\n") for p in gateway.spool.puts] == (
        [True] if oversized else [False, True]
    )


# ---------------------------------------------------------------------------- policy


async def test_help_is_answered_214_with_an_enhanced_status_code(gateway: Gateway) -> None:
    """RFC 5321 4.3.2: HELP's success is 211 or 214 (aiosmtpd answers 250); RFC 2034 3:
    once ENHANCEDSTATUSCODES is advertised, a 2xx reply carries one too."""
    async with raw(gateway.port()) as client:
        await client.greet()
        listed = await client.command("HELP")
        syntax = await client.command("HELP mail")
        unknown = await client.command("HELP FOO")
    assert listed.startswith("214 2.0.0 Supported commands: AUTH EHLO HELO HELP MAIL NOOP ")
    assert syntax == "214 2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
    assert unknown.startswith("501 5.5.4 Supported commands: ")


async def test_outsider_cannot_relay(gateway: Gateway) -> None:
    async with raw(gateway.port(), source=OUTSIDER) as client:
        await client.greet()
        reply = await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
        rcpt = await client.command("RCPT TO:<victim@example.org>")
    assert reply.startswith("550 5.7.1 Relaying denied")
    assert rcpt.startswith("503 ")
    assert gateway.spool.puts == []
    assert gateway.metrics.rejected.value("relay_denied") == 1


async def test_submission_requires_starttls_then_auth(
    gateway: Gateway, client_tls: ssl.SSLContext
) -> None:
    async with raw(gateway.port("submission")) as client:
        await client.greet()
        assert (await client.command(f"MAIL FROM:<a@{DOMAIN}>")).startswith("530 5.7.0 ")
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=gateway.port("submission"), start_tls=True, tls_context=client_tls
    )
    async with smtp:
        await smtp.ehlo()
        response = await smtp.execute_command(b"MAIL", f"FROM:<a@{DOMAIN}>".encode())
    assert (response.code, response.message) == (530, "5.7.0 Authentication required")
    assert gateway.spool.puts == []


@pytest.mark.parametrize(
    ("sender", "reply"),
    [
        ("decomptes@elsewhere.example", "550 5.7.1 Sender domain elsewhere.example is not a"),
        ("decomptes@second.example", "550 5.7.1 Sender domain second.example is not allowed"),
    ],
)
async def test_envelope_sender_must_be_signed_and_allowed(
    gateway: Gateway, sender: str, reply: str
) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        assert (await client.command(f"MAIL FROM:<{sender}>")).startswith(reply)
    assert gateway.spool.puts == []


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (
            b"To: m@example.org\r\nSubject: x\r\n\r\nbody\r\n",
            "550 5.6.0 Message has no From header",
        ),
        (
            message(extra_headers=f"From: other@{DOMAIN}\r\n"),
            "550 5.6.0 Message has 2 From headers",
        ),
        (
            message(sender="someone@elsewhere.example"),
            "550 5.7.1 From domain elsewhere.example is not a domain this gateway signs for",
        ),
        (
            message(sender="someone@second.example"),
            "550 5.7.1 From domain second.example is not allowed for client loopback",
        ),
    ],
)
async def test_header_from_is_checked(gateway: Gateway, data: bytes, reply: str) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        assert (await transaction(client, data)).startswith(reply)
        # The session goes on: the next message is accepted.
        assert (await transaction(client, message())).startswith("250 2.0.0 Queued as")
    assert len(gateway.spool.puts) == 1


# ---------------------------------------------------------------------------- AUTH


async def authenticated(port: int, tls: ssl.SSLContext, mechanism: str) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=True, tls_context=tls)
    await smtp.connect()
    await smtp.ehlo()
    assert mechanism.lower() in smtp.server_auth_methods
    if mechanism == "PLAIN":
        await smtp.auth_plain("batch", PASSWORD)
    else:
        await smtp.auth_login("batch", PASSWORD)
    return smtp


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_authenticated_client_sends_after_starttls(
    gateway: Gateway, client_tls: ssl.SSLContext, mechanism: str
) -> None:
    smtp = await authenticated(gateway.port("submission"), client_tls, mechanism)
    async with smtp:
        refused, reply = await smtp.sendmail(f"a@{DOMAIN}", ["m@example.org"], message())
    assert refused == {}
    assert reply.startswith("2.0.0 Queued as Q0001")
    assert gateway.spool.puts[0].client == "batch"


async def test_smtps_offers_auth_at_once(gateway: Gateway, client_tls: ssl.SSLContext) -> None:
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=gateway.port("smtps"), use_tls=True, tls_context=client_tls
    )
    async with smtp:
        await smtp.ehlo()
        assert not smtp.supports_extension("starttls")
        response = await smtp.auth_plain("batch", PASSWORD)
    assert response.code == 235


async def test_wrong_password_is_refused_then_the_address_is_locked_out(
    gateway: Gateway, client_tls: ssl.SSLContext
) -> None:
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=gateway.port("submission"), start_tls=True, tls_context=client_tls
    )
    async with smtp:
        await smtp.ehlo()
        codes = []
        for _ in range(4):
            token = base64.b64encode(b"\0batch\0wrong").decode()
            response = await smtp.execute_command(b"AUTH", b"PLAIN", token.encode())
            codes.append((response.code, response.message[:5]))
        # Locked out: even the right password waits.
        token = base64.b64encode(f"\0batch\0{PASSWORD}".encode()).decode()
        right = await smtp.execute_command(b"AUTH", b"PLAIN", token.encode())
    assert codes == [(535, "5.7.8")] * 3 + [(454, "4.7.0")]
    assert (right.code, right.message[:5]) == (454, "4.7.0")
    assert gateway.metrics.rejected.value("auth_failed") == 3


async def test_concurrent_guesses_cannot_exceed_the_limit(
    gateway: Gateway, client_tls: ssl.SSLContext
) -> None:
    # Ten connections guess at once: attempts being checked count against the limit, so
    # no more than three (the per-address limit) are even tried.
    clients = [
        aiosmtplib.SMTP(
            hostname=HOST, port=gateway.port("submission"), start_tls=True, tls_context=client_tls
        )
        for _ in range(10)
    ]
    token = base64.b64encode(b"\0batch\0guess")
    try:
        for smtp in clients:
            await smtp.connect()
            await smtp.ehlo()
        replies = await asyncio.gather(
            *(smtp.execute_command(b"AUTH", b"PLAIN", token) for smtp in clients)
        )
    finally:
        for smtp in clients:
            smtp.close()
    codes = sorted(reply.code for reply in replies)
    assert codes == [454] * 7 + [535] * 3
    assert gateway.metrics.rejected.value("auth_failed") == 3


async def test_a_user_is_locked_out_across_addresses(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with running_gateway(
        signing_material,
        server_tls,
        auth_max_failures_per_ip=100,
        auth_max_failures_per_user=2,
    ) as gateway:
        replies = []
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            smtp = aiosmtplib.SMTP(
                hostname=HOST,
                port=gateway.port("submission"),
                start_tls=True,
                tls_context=client_tls,
                source_address=(source, 0),
            )
            async with smtp:
                await smtp.ehlo()
                token = base64.b64encode(b"\0batch\0wrong").decode()
                response = await smtp.execute_command(b"AUTH", b"PLAIN", token.encode())
                replies.append(response.code)
    assert replies == [535, 535, 454]


async def test_an_overlong_auth_answer_is_refused_and_the_next_command_still_checked(
    gateway: Gateway, client_tls: ssl.SSLContext
) -> None:
    async with raw(gateway.port("submission")) as client:
        await client.greet()
        assert (await client.command("STARTTLS")).startswith("220")
        await client.writer.start_tls(client_tls, server_hostname=HOST)
        assert (await client.command("EHLO client.test")).startswith("250")
        assert (await client.command("AUTH LOGIN")).startswith("334")
        assert (await client.command("A" * 3000)).startswith("500 5.5.6")
        await client.send(b"NOOP\n")
        assert (await client.reply()).startswith("500 5.5.2")


async def test_auth_with_bad_base64_is_a_syntax_error(
    gateway: Gateway, client_tls: ssl.SSLContext
) -> None:
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=gateway.port("submission"), start_tls=True, tls_context=client_tls
    )
    async with smtp:
        await smtp.ehlo()
        response = await smtp.execute_command(b"AUTH", b"PLAIN", b"!!notbase64")
    assert (response.code, response.message) == (501, "5.5.2 Cannot decode base64")


# ---------------------------------------------------------------------------- SMTPUTF8, 8BITMIME


async def test_a_non_ascii_address_without_smtputf8_is_refused_553_5_6_7(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        sender = await client.command(f"MAIL FROM:<jörg@{DOMAIN}>")
        assert (await client.command(f"MAIL FROM:<a@{DOMAIN}>")).startswith("250 ")
        recipient = await client.command("RCPT TO:<jörg@example.org>")
    assert sender.startswith("553 5.6.7 Non-ASCII sender address not permitted without SMTPUTF8")
    assert recipient.startswith("553 5.6.7 Non-ASCII recipient address not permitted")


async def test_an_address_that_is_not_utf8_is_refused(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.send(f"MAIL FROM:<a@{DOMAIN}> SMTPUTF8\r\n".encode())
        assert (await client.reply()).startswith("250 ")
        await client.send(b"RCPT TO:<j\xf6rg@example.org>\r\n")  # Latin-1, not UTF-8
        reply = await client.reply()
    # Refused where every command line is read, before any address parsing.
    assert reply == "500 5.5.2 Error: control character or bad UTF-8 in command"
    assert gateway.spool.puts == []


async def test_smtputf8_and_body_are_kept_with_the_message(gateway: Gateway) -> None:
    data = message(extra_headers="Comments: déjà vu\r\n", body="Remboursé : 12 €\r\n")
    async with raw(gateway.port()) as client:
        await client.greet()
        assert (
            await client.command(f"MAIL FROM:<jörg@{DOMAIN}> BODY=8BITMIME SMTPUTF8")
        ).startswith("250 ")
        assert (await client.command("RCPT TO:<andré@example.org>")).startswith("250 ")
        assert (await client.command("DATA")).startswith("354 ")
        await client.send(data + b".\r\n")
        assert (await client.reply()).startswith("250 ")
        # 8-bit content without BODY=8BITMIME is taken as Postfix takes it (see policy).
        reply = await transaction(client, data)
    assert reply.startswith("250 ")
    first, second = gateway.spool.puts
    assert first.params == MailParams(smtputf8=True, body="8BITMIME")
    assert (first.sender, first.recipients) == (f"jörg@{DOMAIN}", ["andré@example.org"])
    assert second.params == MailParams(smtputf8=False, body="")


# ---------------------------------------------------------------------------- limits


async def test_too_many_recipients(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.command(f"MAIL FROM:<a@{DOMAIN}>")
        replies = [await client.command(f"RCPT TO:<m{i}@example.org>") for i in range(4)]
    assert [r[:9] for r in replies] == ["250 2.1.5"] * 3 + ["452 4.5.3"]


async def test_declared_size_over_the_limit(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await client.command(f"MAIL FROM:<a@{DOMAIN}> SIZE=70000")
    assert reply == "552 5.3.4 Message too big: at most 65536 bytes"


async def test_actual_size_over_the_limit(gateway: Gateway) -> None:
    body = ("x" * 900 + "\r\n") * 80  # 72 KB
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, message(body=body))
    assert reply == "552 5.3.4 Message too big: at most 65536 bytes"
    assert gateway.spool.puts == []


@pytest.mark.parametrize(("length", "accepted"), [(998, True), (999, False), (5000, False)])
async def test_line_length(gateway: Gateway, length: int, accepted: bool) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, message(body="y" * length + "\r\n"))
    if accepted:
        assert reply.startswith("250 2.0.0 ")
    else:
        assert reply == "550 5.6.0 Line too long: at most 998 characters per line"
        assert gateway.spool.puts == []


async def test_dot_stuffed_line_of_998_characters_is_accepted(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, message(body="." * 998 + "\r\n"))
    assert reply.startswith("250 ")
    assert gateway.spool.puts[0].data.endswith(b"\r\n" + b"." * 998 + b"\r\n")


async def test_command_line_too_long(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await client.command("NOOP " + "z" * 2000)
        after = await client.command("NOOP")
    assert reply == "500 5.5.6 Command line too long"
    assert after.startswith("250 ")


# ---------------------------------------------------------------------------- failures


async def test_unsealable_message_is_refused_for_good_and_not_kept(gateway: Gateway) -> None:
    broken_pdf = (
        f"From: <a@{DOMAIN}>\r\nTo: m@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
        'Content-Type: application/pdf; name="d.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
        'Content-Disposition: attachment; filename="d.pdf"\r\n\r\n%%% not base64 %%%\r\n--b--\r\n'
    ).encode()
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, broken_pdf)
    # The same bytes would fail again: 550 and the reason, not 451 and a retry forever.
    assert reply.startswith(
        "550 5.6.0 Message cannot be sealed: document 'd.pdf' is not valid base64"
    )
    assert gateway.spool.puts == []
    assert gateway.metrics.rejected.value("unsealable") == 1


async def test_spool_failure_is_answered_451(gateway: Gateway) -> None:
    gateway.spool.fail = True
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, message())
    assert reply == "451 4.3.0 Message could not be queued, try again later"


# ---------------------------------------------------------------------------- smuggling

SMUGGLED = (
    b"MAIL FROM:<evil@caisses.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"From: <evil@caisses.example>\r\nTo: victim@example.org\r\n\r\nsmuggled\r\n"
)


@pytest.mark.parametrize(
    "end",
    [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r.\r",
        b"\n.\r",
        b"\r.\n",
        b"\r\n\x00.\r\n",
    ],
    ids=repr,
)
async def test_no_payload_yields_a_second_message(gateway: Gateway, end: bytes) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
        await client.command("RCPT TO:<membre@example.org>")
        assert (await client.command("DATA")).startswith("354 ")
        await client.send(message() + end + SMUGGLED + b"\r\n.\r\n")
        reply = await client.reply()
        quit_reply = await client.command("QUIT")
    # One message, one reply: refused whole, for its bare line ends or (the NUL variant)
    # its NUL byte; the smuggled commands were never commands.
    assert quit_reply.startswith("221 ")
    if b"\x00" in end:
        assert reply.startswith("550 5.6.0 NUL byte in message body")
    else:
        assert reply == "550 5.6.0 Bare CR or LF in message data: every line must end with CRLF"
    assert gateway.spool.puts == []


@pytest.mark.parametrize(
    "line",
    [b"NOOP\n", b"NOOP\rRSET\r\n", b"MAIL FROM:<a@caisses.example>\r\rRCPT TO:<x@y>\r\n"],
    ids=repr,
)
async def test_bare_line_ends_in_commands_are_refused(gateway: Gateway, line: bytes) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.send(line)
        reply = await client.reply()
        after = await client.command("RSET")
    assert reply == "500 5.5.2 Bare CR or LF in command: lines must end with CRLF"
    assert after.startswith("250 ")


async def test_bare_lf_after_data_command_cannot_start_a_message(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
        await client.command("RCPT TO:<membre@example.org>")
        await client.send(b"DATA\n")
        reply = await client.reply()
    assert reply.startswith("500 5.5.2 ")
    assert gateway.spool.puts == []


# ---------------------------------------------------------------------------- DATA framing


async def start_data(client: Raw) -> None:
    await client.greet()
    await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
    await client.command("RCPT TO:<membre@example.org>")
    assert (await client.command("DATA")).startswith("354 ")


async def test_empty_message_ends_at_once(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await start_data(client)
        await client.send(b".\r\n")
        assert (await client.reply()).startswith("550 5.6.0 Message has no From header")


async def test_dots_inside_lines_and_stuffed_lines_are_content(gateway: Gateway) -> None:
    body = "ends with a dot.\r\n.\r\n..two\r\n.\r\nlast.\r\n"
    async with raw(gateway.port()) as client:
        await start_data(client)
        reply = await transaction_data(client, message(body=body))
    assert reply.startswith("250 ")
    assert gateway.spool.puts[0].data.endswith(body.encode())


async def transaction_data(client: Raw, data: bytes) -> str:
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    await client.send(stuffed + b".\r\n")
    return await client.reply()


async def test_data_sent_one_byte_at_a_time(gateway: Gateway) -> None:
    data = message(body="a.\r\n..b\r\n").replace(b"\r\n.", b"\r\n..") + b".\r\nNOOP\r\n"
    async with raw(gateway.port()) as client:
        await start_data(client)
        for i in range(len(data)):
            client.writer.write(data[i : i + 1])
            if i % 64 == 0:
                await client.writer.drain()
                await asyncio.sleep(0)
        await client.writer.drain()
        reply = await client.reply()
        noop = await client.reply()
    assert reply.startswith("250 ")
    assert noop.startswith("250 ")
    assert gateway.spool.puts[0].data.endswith(b"a.\r\n..b\r\n")


async def test_oversized_message_of_dotted_lines_is_drained_and_refused(gateway: Gateway) -> None:
    body = "x.\r\n" * 20_000  # 80 KB, in lines that each hold a "." before CRLF
    async with raw(gateway.port()) as client:
        await start_data(client)
        reply = await transaction_data(client, message(body=body))
        after = await client.command("NOOP")
    assert reply == "552 5.3.4 Message too big: at most 65536 bytes"
    assert after.startswith("250 ")
    assert gateway.spool.puts == []


def _unstuffed_by_replace(data: bytes, cut: int) -> bytes:
    """What read_data did before `unstuffed`: drop a leading ".", replace CRLF "."."""
    data = data[: len(data) - cut]
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


@settings(max_examples=3000, deadline=None)
@given(
    # Up to 80 dots that start no line (more than are looked at one by one), then dots,
    # line ends and text in every mix.
    dots=st.integers(0, 80).map(lambda n: b"a." * n),
    rest=st.lists(
        st.sampled_from([b".", b"..", b"\r\n", b"\r\n.", b"\r", b"\n", b"a", b"a.", b"x" * 40]),
        max_size=60,
    ).map(b"".join),
    cut=st.sampled_from([0, 1, 2, 3]),
)
def test_unstuffing_gives_what_the_replace_gave(dots: bytes, rest: bytes, cut: int) -> None:
    data = dots + rest
    assert unstuffed(data, cut) == _unstuffed_by_replace(data, cut)


def test_unstuffing_the_bench_message_and_a_text_full_of_dots() -> None:
    text = b"Une phrase. Une autre.\r\n" * 100 + b"\r\n..stuffed\r\n.\r\n"
    assert unstuffed(text, 3) == _unstuffed_by_replace(text, 3)
    assert unstuffed(text, 3).endswith(b"\r\n.stuffed\r\n")


class _ReadUntilReader(asyncio.StreamReader):
    """_StrictLineReader.read_data as it was: StreamReader.readuntil(b".\r\n") and a
    check of the two bytes before each stop."""

    _limit: int  # StreamReader's own, which typeshed leaves out

    async def read_data(self, max_size: int) -> bytes | None:
        line_limit = self._limit
        self._limit = max_size + 3
        parts: list[bytes] = []
        size = 0
        too_big = False
        tail = b"\r\n"
        try:
            while True:
                try:
                    chunk = await self.readuntil(b".\r\n")
                    ended = (tail + chunk[:-3])[-2:] == b"\r\n"
                except asyncio.LimitOverrunError as error:
                    chunk = await self.readexactly(error.consumed)
                    ended = False
                    too_big = True
                tail = (tail + chunk)[-2:]
                size += len(chunk)
                too_big = too_big or size > max_size + 3
                if too_big:
                    parts.clear()
                else:
                    parts.append(chunk)
                if ended:
                    break
        finally:
            self._limit = line_limit
        if too_big:
            return None
        return _unstuffed_by_replace(b"".join(parts), 3)


async def _read_data_outcome(
    reader: asyncio.StreamReader, chunks: list[bytes], eof: bool, max_size: int
) -> tuple[object, bytes]:
    """What read_data answers for `chunks` fed one by one, and what it leaves unread."""
    task = asyncio.create_task(reader.read_data(max_size))  # type: ignore[attr-defined]
    for chunk in chunks:
        await asyncio.sleep(0)
        if not task.done():
            reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    for _ in range(5):  # every byte is in: a few turns of the loop decide it
        await asyncio.sleep(0)
    if not task.done():
        task.cancel()  # the session closes the connection then: nothing more is read
        return "waiting", b""
    try:
        outcome: object = task.result()
    except asyncio.IncompleteReadError as error:
        # Which bytes the error carries is only logged (as a count), and an oversized
        # message has been thrown away as it came, differently: there only the error.
        oversized = sum(map(len, chunks)) > max_size + 3
        outcome = ("incomplete", None if oversized else error.partial)
    if not eof:
        reader.feed_eof()
    return outcome, await reader.read()


@settings(max_examples=1500, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from(
            [b".", b"..", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n", b"\r", b"\n", b"a", b"x" * 30]
        ),
        max_size=60,
    ),
    many_dots=st.integers(0, 50).map(lambda n: b"a." * n),
    end=st.sampled_from([b"\r\n.\r\nNOOP\r\n", b"\r\n.\r\n", b""]),
    cuts=st.lists(st.integers(1, 40), max_size=12),
    max_size=st.sampled_from([0, 5, 40, 120, 10_000]),
    eof=st.booleans(),
)
def test_read_data_reads_what_readuntil_read(
    pieces: list[bytes],
    many_dots: bytes,
    end: bytes,
    cuts: list[int],
    max_size: int,
    eof: bool,
) -> None:
    """The message, its size verdict, what is left unread, an end of stream before the
    end: the same as the readuntil loop it replaced, however the bytes arrive."""
    stream = many_dots + b"".join(pieces) + end
    chunks, at = [], 0
    for cut in cuts:
        chunks.append(stream[at : at + cut])
        at += cut
    chunks.append(stream[at:])

    async def both() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        new = _StrictLineReader(limit=1001, loop=loop)
        old = _ReadUntilReader(limit=1001, loop=loop)
        return (
            await _read_data_outcome(new, chunks, eof, max_size),
            await _read_data_outcome(old, chunks, eof, max_size),
        )

    new, old = asyncio.run(both())
    assert new == old


_MAIL = f"MAIL FROM:<decomptes@{DOMAIN}>".encode()
_SCRIPTS: dict[str, tuple[server.Mode, list[bytes]]] = {
    "a message": (
        "relay",
        [
            b"EHLO c.test",
            _MAIL,
            b"RCPT TO:<m@example.org>",
            b"DATA",
            *message().split(b"\r\n")[:-1],
            b".",
            b"QUIT",
        ],
    ),
    "HELO, then commands refused": (
        "relay",
        [
            b"noop",
            b"HELO c.test",
            b"",
            b"   ",
            b"NOOP \x00",
            b"\xff\xfeX",
            b"X" * 600,
            _MAIL + b" X=" + b"y" * 600,
            b"RCPT TO:<a@b.example>",
            b"MAIL FROM:<a@b.example> SIZE=1",
            b"HELO",
            b"STARTTLS x",
            b"DATA",
            b"RSET",
            b"VRFY <a@b.example>",
            b"HELP",
            b"HELP MAIL",
            b"QUIT x",
            b"QUIT",
        ],
    ),
    "unknown commands until the budget is spent": (
        "relay",
        [b"EHLO c.test", b"FOO", b"BAR x", b"BAZ", b"\tQUX", b"QUUX", b"NOOP"],
    ),
    "before STARTTLS on submission": (
        "submission",
        [b"EHLO c.test", _MAIL, b"AUTH PLAIN", b"NOOP", b"HELP", b"QUIT"],
    ),
}


@pytest.mark.parametrize("script", list(_SCRIPTS))
async def test_the_command_loop_answers_as_aiosmtpds_own(
    signing_material: SigningMaterial,
    server_tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    script: str,
) -> None:
    """GatewaySMTP._command_loop is aiosmtpd's loop less its logging: every reply byte for
    byte the same, pipelined or not, to the close. (Another aiosmtpd version, here
    pretended, runs aiosmtpd's own loop and set-up.)"""
    mode, lines = _SCRIPTS[script]

    async def transcript(pipelined: bool) -> str:
        async with running_gateway(signing_material, server_tls) as gateway:
            client = await Raw.connect(gateway.port(mode))
            try:
                if pipelined:
                    await client.send(b"".join(line + b"\r\n" for line in lines))
                    async with asyncio.timeout(5):
                        return (await client.reader.read()).decode()
                got = [await client.reply()]
                in_data = False
                for line in lines:
                    await client.send(line + b"\r\n")
                    if in_data and line != b".":
                        continue
                    try:
                        got.append(await client.reply())
                    except ConnectionError:
                        break
                    in_data = line == b"DATA" and got[-1].startswith("354 ")
                async with asyncio.timeout(5):
                    got.append((await client.reader.read()).decode())
                return "\n".join(got)
            finally:
                client.close()

    for pipelined in (True, False):
        ours = await transcript(pipelined)
        with monkeypatch.context() as patch:
            patch.setattr(smtp_setup, "COPIED_VERSION", "another aiosmtpd")
            theirs = await transcript(pipelined)
        assert ours == theirs
        assert ours.count("\n") >= 4


# ---------------------------------------------------------------------------- PROXY


@pytest.mark.parametrize(
    ("source", "allowed"), [("127.0.0.1", True), ("192.0.2.7", False)], ids=["inside", "outside"]
)
async def test_behind_a_proxy_the_client_is_the_proxied_address(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext, source: str, allowed: bool
) -> None:
    async with (
        running_gateway(signing_material, server_tls, proxy_protocol_timeout=3.0) as gw,
        raw(gw.port()) as client,
    ):
        await client.send(f"PROXY TCP4 {source} 127.0.0.1 40000 25\r\n".encode())
        await client.greet()
        reply = await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
    if allowed:
        assert reply.startswith("250 2.1.0")
    else:
        assert reply.startswith("550 5.7.1 Relaying denied")


async def test_behind_a_proxy_starttls_keeps_the_proxied_address(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # aiosmtpd starts a new session at STARTTLS; the balancer (127.0.0.1, allow-listed)
    # must not then pass for the outside client it carries.
    async with (
        running_gateway(signing_material, server_tls, proxy_protocol_timeout=3.0) as gw,
        raw(gw.port()) as client,
    ):
        await client.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
        await client.greet()
        assert (await client.command("STARTTLS")).startswith("220")
        await client.writer.start_tls(client_tls, server_hostname=HOST)
        assert (await client.command("EHLO outsider.test")).startswith("250")
        reply = await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
    assert reply.startswith("550 5.7.1 Relaying denied")
    assert gw.spool.puts == []


async def test_proxy_listener_drops_a_connection_without_header(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with (
        running_gateway(signing_material, server_tls, proxy_protocol_timeout=3.0) as gw,
        raw(gw.port()) as client,
    ):
        await client.send(b"EHLO direct.test\r\n")
        assert await client.closed()


async def test_random_line_ends_never_split_or_merge_messages(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    """Bodies made of dots, CRs, LFs and CRLFs, stuffed as a conforming client would: each
    transaction gets exactly one reply, accepted exactly as sent or refused whole."""
    rng = random.Random(20231218)  # fixed: the same payloads on every run
    pieces = [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b" "]
    accepted = 0
    # More refusals in a row than the error budget allows: that budget is not tested here.
    async with (
        running_gateway(signing_material, server_tls, max_errors=0) as gateway,
        raw(gateway.port()) as client,
    ):
        await client.greet()
        for _ in range(150):
            body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 24)))
            data = message(body="") + body
            if not data.endswith(b"\r\n"):
                data += b"\r\n"
            await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
            await client.command("RCPT TO:<membre@example.org>")
            assert (await client.command("DATA")).startswith("354 ")
            await client.send(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
            reply = await client.reply()
            if policy.check_lines(data, 998) is None:
                accepted += 1
                assert reply.startswith("250 "), (body, reply)
                assert gateway.spool.puts[-1].data.endswith(data)
            else:
                assert reply.startswith("550 5.6.0 Bare CR or LF"), (body, reply)
            assert (await client.command("NOOP")).startswith("250 ")
    assert len(gateway.spool.puts) == accepted
    assert 0 < accepted < 150  # both kinds were tried


@pytest.mark.parametrize(("extra", "accepted"), [(0, True), (1, False)])
async def test_size_limit_is_exact(gateway: Gateway, extra: int, accepted: bool) -> None:
    head = message(body="")
    lines, rest = divmod(65536 - len(head), 100)
    body = b"z" * 98 + b"\r\n"
    data = head + body * lines + b"z" * (rest - 2 + extra) + b"\r\n"
    assert len(data) == 65536 + extra
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, data)
    assert reply.startswith("250 ") if accepted else reply.startswith("552 5.3.4")


# ---------------------------------------------------------------------------- TLS and abuse

PLAIN_TOKEN = base64.b64encode(f"\0batch\0{PASSWORD}".encode()).decode()
WRONG_TOKEN = base64.b64encode(b"\0batch\0wrong").decode()
# The start of a TLS ClientHello record, cut short.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


async def starttls(client: Raw, tls: ssl.SSLContext) -> None:
    assert await client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    await client.writer.start_tls(tls, server_hostname=HOST)
    ehlo = await client.command("EHLO client.test")
    assert ehlo.startswith("250-")
    assert "STARTTLS" not in ehlo


@contextlib.asynccontextmanager
async def smtps(port: int, tls: ssl.SSLContext) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_connection(HOST, port, ssl=tls, server_hostname=HOST)
    client = Raw(reader, writer)
    try:
        yield client
    finally:
        client.close()


def reset(client: Raw) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed client or a middlebox would."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def until_closed(client: Raw) -> None:
    """Read (a TLS alert, say) until the gateway closes the connection."""
    async with asyncio.timeout(5):
        while await client.reader.read(4096):
            pass


async def sessions_ended(gateway: Gateway) -> None:
    """Wait until the gateway has seen every connection close (its log lines are written by
    then), then collect garbage: a task that ended in an exception nobody retrieved is
    logged, with its traceback, when it is collected."""
    for _ in range(250):
        if not len(gateway.receiver.sessions):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("sessions still open after 5 s")
    await asyncio.sleep(0.05)
    gc.collect()
    await asyncio.sleep(0)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info or r.stack_info
    ]
    assert bad == []
    assert "Traceback" not in caplog.text


async def start_data_authenticated(client: Raw) -> None:
    assert (await client.command(f"AUTH PLAIN {PLAIN_TOKEN}")).startswith("235 ")
    assert (await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")).startswith("250 ")
    assert (await client.command("RCPT TO:<membre@example.org>")).startswith("250 ")
    assert (await client.command("DATA")).startswith("354 ")
    await client.send(b"From: <decomptes@caisses.example>\r\nSubject: cut")
    await asyncio.sleep(0.05)  # let the gateway read it: it is now inside the message


async def test_a_second_starttls_is_refused_and_the_session_goes_on(
    gateway: Gateway, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with raw(gateway.port("submission")) as client:
        await client.greet()
        await starttls(client, client_tls)
        assert await client.command("STARTTLS") == "503 5.5.1 Error: TLS already active"
        # Still the same TLS session, in a usable state.
        assert (await client.command(f"AUTH PLAIN {PLAIN_TOKEN}")).startswith("235 2.7.0")
        assert await transaction(client, message()) == "250 2.0.0 Queued as Q0001"
        assert await client.command("QUIT") == "221 2.0.0 Bye"
    await sessions_ended(gateway)
    assert_no_traceback(caplog)


async def test_starttls_on_the_implicit_tls_listener_is_refused(
    gateway: Gateway, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with smtps(gateway.port("smtps"), client_tls) as client:
        ehlo = await client.greet()
        assert "STARTTLS" not in ehlo
        assert await client.command("STARTTLS") == "503 5.5.1 Error: TLS already active"
        assert await client.command("NOOP") == "250 2.0.0 OK"
    await sessions_ended(gateway)
    assert_no_traceback(caplog)


async def test_commands_pipelined_behind_starttls_are_never_run(
    gateway: Gateway, client_tls: ssl.SSLContext
) -> None:
    """CVE-2011-0411: clear text sent in the STARTTLS segment (a man in the middle's
    injection) is thrown away, not read as the first commands of the TLS session."""
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.send(f"STARTTLS\r\nMAIL FROM:<decomptes@{DOMAIN}>\r\n".encode())
        assert await client.reply() == "220 2.0.0 Ready to start TLS"
        await client.writer.start_tls(client_tls, server_hostname=HOST)
        # Had MAIL been run, its "503 send EHLO first" would come before EHLO's reply.
        assert (await client.command("EHLO client.test")).startswith("250-gateway.test")
        assert (await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")).startswith("250 ")


async def _garbage_after_starttls(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with raw(gw.port("submission")) as client:
        await client.greet()
        assert await client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
        await client.send(b"EHLO client.test\r\nMAIL FROM:<a@caisses.example>\r\n")
        await until_closed(client)


async def _close_mid_handshake(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with raw(gw.port("submission")) as client:
        await client.greet()
        assert await client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
        await client.send(PARTIAL_HELLO)


async def _reset_mid_handshake(gw: Gateway, tls: ssl.SSLContext) -> None:
    client = await Raw.connect(gw.port("relay"))
    await client.greet()
    assert await client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    await client.send(PARTIAL_HELLO)
    await asyncio.sleep(0.05)
    reset(client)


async def _client_refuses_the_certificate(gw: Gateway, tls: ssl.SSLContext) -> None:
    # Trusts another CA only, so it refuses the gateway's certificate with an alert.
    untrusting = ssl.create_default_context(cadata=trustme.CA().cert_pem.bytes().decode())
    async with raw(gw.port("submission")) as client:
        await client.greet()
        assert await client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.writer.start_tls(untrusting, server_hostname=HOST)


async def _second_starttls_then_close(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with raw(gw.port("submission")) as client:
        await client.greet()
        await starttls(client, tls)
        assert await client.command("STARTTLS") == "503 5.5.1 Error: TLS already active"
        await client.send(PARTIAL_HELLO)  # as if a nested handshake had begun


async def _reset_during_data(gw: Gateway, tls: ssl.SSLContext) -> None:
    client = await Raw.connect(gw.port("relay"))
    await client.greet()
    await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
    await client.command("RCPT TO:<membre@example.org>")
    assert (await client.command("DATA")).startswith("354 ")
    await client.send(b"From: <decomptes@caisses.example>\r\nSubject: cut")
    await asyncio.sleep(0.05)
    reset(client)


async def _reset_during_data_after_starttls(gw: Gateway, tls: ssl.SSLContext) -> None:
    client = await Raw.connect(gw.port("submission"))
    await client.greet()
    await starttls(client, tls)
    await start_data_authenticated(client)
    reset(client)


async def _close_during_data_after_starttls(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with raw(gw.port("submission")) as client:
        await client.greet()
        await starttls(client, tls)
        await start_data_authenticated(client)


async def _reset_during_data_on_smtps(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with smtps(gw.port("smtps"), tls) as client:
        await client.greet()
        await start_data_authenticated(client)
        reset(client)


async def _close_during_data_on_smtps(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with smtps(gw.port("smtps"), tls) as client:
        await client.greet()
        await start_data_authenticated(client)


async def _plain_text_to_smtps(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with raw(gw.port("smtps")) as client:
        await client.send(b"EHLO client.test\r\n")
        await until_closed(client)


async def _close_mid_handshake_on_smtps(gw: Gateway, tls: ssl.SSLContext) -> None:
    async with raw(gw.port("smtps")) as client:
        await client.send(PARTIAL_HELLO)


Misbehaviour = Callable[[Gateway, ssl.SSLContext], Awaitable[None]]


@pytest.mark.parametrize(
    ("misbehave", "tls_failure"),
    [
        (_garbage_after_starttls, True),
        (_close_mid_handshake, True),
        (_reset_mid_handshake, True),
        (_client_refuses_the_certificate, True),
        (_second_starttls_then_close, False),
        (_reset_during_data, False),
        (_reset_during_data_after_starttls, False),
        (_close_during_data_after_starttls, False),
        (_reset_during_data_on_smtps, False),
        (_close_during_data_on_smtps, False),
        (_plain_text_to_smtps, True),
        (_close_mid_handshake_on_smtps, True),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
async def test_a_misbehaving_client_leaves_no_traceback(
    gateway: Gateway,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    misbehave: Misbehaviour,
    tls_failure: bool,
) -> None:
    caplog.set_level(logging.INFO)
    await misbehave(gateway, client_tls)
    await sessions_ended(gateway)
    assert_no_traceback(caplog)
    # A failed handshake, after STARTTLS or on smtps, is one line saying what went wrong.
    failures = [r.getMessage() for r in caplog.records if "event=tls_failed" in r.getMessage()]
    assert len(failures) == (1 if tls_failure else 0), failures
    assert gateway.spool.puts == []
    # The gateway serves the next client as before.
    async with raw(gateway.port()) as client:
        await client.greet()
        assert await transaction(client, message()) == "250 2.0.0 Queued as Q0001"


# ---------------------------------------------------------------------------- AUTH, any case


async def tls_session(gateway: Gateway, tls: ssl.SSLContext) -> Raw:
    client = await Raw.connect(gateway.port("submission"))
    await client.greet()
    await starttls(client, tls)
    return client


USER_PROMPT = "334 " + base64.b64encode(b"User Name").decode()
PASSWORD_PROMPT = "334 " + base64.b64encode(b"Password").decode()


async def login_exchange(client: Raw, command: str, password: str) -> str:
    """AUTH LOGIN without an initial response, however `command` spells it."""
    assert await client.command(command) == USER_PROMPT
    assert await client.command(base64.b64encode(b"batch").decode()) == PASSWORD_PROMPT
    return await client.command(base64.b64encode(password.encode()).decode())


@pytest.mark.parametrize(
    "command",
    [
        f"AUTH plain {PLAIN_TOKEN}",
        f"auth Plain {PLAIN_TOKEN}",
        f"Auth pLaIn {PLAIN_TOKEN}",
        "AUTH plain",  # the credentials after a 334
        "AUTH login",
        "auth Login",
    ],
)
async def test_auth_mechanism_names_are_case_insensitive(
    gateway: Gateway, client_tls: ssl.SSLContext, command: str
) -> None:
    client = await tls_session(gateway, client_tls)
    try:
        if command.lower() == "auth plain":
            assert await client.command(command) == "334 "
            reply = await client.command(PLAIN_TOKEN)
        elif command.lower() == "auth login":
            reply = await login_exchange(client, command, PASSWORD)
        else:
            reply = await client.command(command)
        assert reply == "235 2.7.0 Authentication successful"
        assert await client.command(f"AUTH PLAIN {PLAIN_TOKEN}") == (
            "503 5.5.1 Already authenticated"
        )
        assert await transaction(client, message()) == "250 2.0.0 Queued as Q0001"
    finally:
        client.close()
    assert gateway.spool.puts[0].client == "batch"


async def test_failed_auth_in_any_case_counts_toward_the_lockout(
    gateway: Gateway, client_tls: ssl.SSLContext
) -> None:
    client = await tls_session(gateway, client_tls)
    try:
        replies = [
            await client.command(f"auth plain {WRONG_TOKEN}"),
            await login_exchange(client, "Auth login", "wrong"),
            await client.command(f"AUTH Plain {WRONG_TOKEN}"),
            await client.command(f"auth PLAIN {WRONG_TOKEN}"),
            # Locked out: the right password, in lower case, waits as in upper case.
            await client.command(f"auth plain {PLAIN_TOKEN}"),
        ]
    finally:
        client.close()
    assert (
        replies
        == ["535 5.7.8 Authentication credentials invalid"] * 3
        + ["454 4.7.0 Too many failed logins from your address, try again later"] * 2
    )
    assert gateway.metrics.rejected.value("auth_failed") == 3
    assert gateway.metrics.rejected.value("auth_locked") == 2


@pytest.mark.parametrize("mechanism", ["cram-md5", "Cram-MD5", "xplain", "pla\u0131n"])
async def test_an_unknown_mechanism_is_504_in_any_case(
    gateway: Gateway, client_tls: ssl.SSLContext, mechanism: str
) -> None:
    # "pla\u0131n" (a dotless i) upper-cases to "PLAIN" in Python; it is no mechanism name.
    client = await tls_session(gateway, client_tls)
    try:
        reply = await client.command(f"AUTH {mechanism} {PLAIN_TOKEN}")
        after = await client.command("NOOP")
    finally:
        client.close()
    assert reply == "504 5.5.4 Unrecognized authentication type"
    assert after == "250 2.0.0 OK"
    assert gateway.metrics.rejected.value("auth_failed") == 0


# ---------------------------------------------------------------------------- junk commands


async def replies(client: Raw, count: int) -> list[str]:
    """Up to `count` replies, fewer when the gateway closes the connection first."""
    found: list[str] = []
    with contextlib.suppress(ConnectionError):
        for _ in range(count):
            found.append(await client.reply())
    return found


@pytest.mark.parametrize("command", ["NOOP", "RSET", "VRFY <a@example.org>", "HELP", "EHLO x"])
async def test_a_flood_of_commands_that_move_no_mail_is_cut_with_421(
    signing_material: SigningMaterial,
    server_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    command: str,
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        running_gateway(signing_material, server_tls, max_junk_commands=10) as gw,
        raw(gw.port()) as client,
    ):
        assert (await client.reply()).startswith("220 ")
        # EHLO counts too: 1 + 9 are served, the 11th is not, nor anything behind it.
        await client.send(b"EHLO client.test\r\n" + f"{command}\r\n".encode() * 2000)
        got = await replies(client, 2001)
        assert await client.closed()
        await sessions_ended(gw)
    name = command.split()[0]
    assert len(got) == 11
    assert all(r[:1] in "25" and not r.startswith("421") for r in got[:10])
    assert got[10] == f"421 4.7.0 Too many {name} commands, closing connection"
    assert f"event=junk_limit client_ip=127.0.0.1 command={name}" in caplog.text
    assert_no_traceback(caplog)


async def test_refused_recipients_count_as_junk_and_accepted_ones_do_not(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with (
        running_gateway(signing_material, server_tls, max_junk_commands=10) as gw,
        raw(gw.port()) as client,
    ):
        assert (await client.reply()).startswith("220 ")
        rcpts = b"".join(b"RCPT TO:<m%d@example.org>\r\n" % i for i in range(2000))
        await client.send(b"EHLO client.test\r\n" + f"MAIL FROM:<a@{DOMAIN}>\r\n".encode() + rcpts)
        got = await replies(client, 2002)
        assert await client.closed()
    codes = [r[:3] for r in got]
    # EHLO counts 1; 3 recipients are taken (max_recipients); 9 more refusals fill the
    # budget of 10, and the next RCPT is answered 421.
    assert codes == ["250", "250", "250", "250", "250", *["452"] * 9, "421"]
    assert got[-1] == "421 4.7.0 Too many RCPT commands, closing connection"


async def test_the_junk_budget_starts_again_with_each_message(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with (
        running_gateway(signing_material, server_tls, max_junk_commands=10) as gw,
        raw(gw.port()) as client,
    ):
        await client.greet()
        for _ in range(5):  # 5 x 8 NOOPs on one connection, a message between each 8
            await client.send(b"NOOP\r\n" * 8)
            assert set(await replies(client, 8)) == {"250 2.0.0 OK"}
            assert (await transaction(client, message())).startswith("250 2.0.0 Queued")
        await client.send(b"RSET\r\n" * 8)
        assert set(await replies(client, 8)) == {"250 2.0.0 OK"}
    assert len(gw.spool.puts) == 5


TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"


# Lines the junk budget does not count, each answered with an error, without end before
# the error budget: (listener, line, the reply's code).
ENDLESS_ERRORS = {
    "empty_line": ("relay", b"\r\n", "500"),
    "bare_lf": ("relay", b"NOOP\n", "500"),
    "data_without_recipient": ("relay", b"DATA\r\n", "503"),
    "auth_before_tls": ("relay", b"AUTH PLAIN\r\n", "538"),
    "mail_before_starttls": ("submission", b"MAIL FROM:<a@caisses.example>\r\n", "530"),
}


@pytest.mark.parametrize("case", ENDLESS_ERRORS.values(), ids=ENDLESS_ERRORS.keys())
async def test_a_client_that_keeps_making_errors_is_cut_with_421(
    signing_material: SigningMaterial,
    server_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    case: tuple[server.Mode, bytes, str],
) -> None:
    """Postfix's smtpd_hard_error_limit: the 5th error reply is followed at once by 421
    and a close; nothing pipelined behind it is served."""
    caplog.set_level(logging.INFO)
    mode, line, code = case
    async with (
        running_gateway(signing_material, server_tls, max_errors=5) as gw,
        raw(gw.port(mode)) as client,
    ):
        assert (await client.reply()).startswith("220 ")
        await client.send(b"EHLO client.test\r\n" + line * 2000)
        got = await replies(client, 2001)
        assert await client.closed()
        await sessions_ended(gw)
    assert got[0].startswith("250-")
    assert [r[:3] for r in got[1:6]] == [code] * 5
    assert got[6:] == [TOO_MANY_ERRORS]
    assert "event=error_limit client_ip=127.0.0.1 errors=5" in caplog.text
    assert_no_traceback(caplog)


async def test_a_client_cycling_refused_messages_is_cut_with_421(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    """Each refused message is a whole accepted MAIL, RCPT and DATA (no junk), then one
    error: the error budget is what ends the cycle."""
    bad = message(body="Montant\0 12\r\n")
    async with (
        running_gateway(signing_material, server_tls, max_errors=3) as gw,
        raw(gw.port()) as client,
    ):
        await client.greet()
        for _ in range(3):
            assert (await transaction(client, bad)).startswith("550 5.6.0 ")
        assert await client.reply() == TOO_MANY_ERRORS
        assert await client.closed()
    assert gw.spool.puts == []


async def test_the_error_budget_starts_again_with_each_accepted_message(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    """As in Postfix, a message accepted forgives the errors before it: a batch connection
    that meets a refusal now and then over thousands of messages is never cut."""
    async with (
        running_gateway(signing_material, server_tls, max_errors=3) as gw,
        raw(gw.port()) as client,
    ):
        await client.greet()
        for _ in range(4):
            await client.send(b"DATA\r\n" * 2)
            assert [r[:3] for r in await replies(client, 2)] == ["503", "503"]
            assert (await transaction(client, message())).startswith("250 2.0.0 Queued")
        assert await client.command("DATA") == "503 5.5.1 Error: need RCPT command"
        assert await client.command("DATA") == "503 5.5.1 Error: need RCPT command"
        assert await client.command("DATA") == "503 5.5.1 Error: need RCPT command"
        assert await client.reply() == TOO_MANY_ERRORS
    assert len(gw.spool.puts) == 4


async def test_recipients_over_the_limit_are_not_errors(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    """A client may pipeline more recipients than allowed and send the rest in the next
    transaction (RFC 5321 4.5.3.1.10): its 452s are no errors (Postfix's
    smtpd_recipient_overshoot_limit); the junk budget bounds them."""
    async with (
        running_gateway(signing_material, server_tls, max_errors=2, max_recipients=3) as gw,
        raw(gw.port()) as client,
    ):
        await client.greet()
        rcpts = b"".join(b"RCPT TO:<m%d@example.org>\r\n" % i for i in range(10))
        await client.send(f"MAIL FROM:<decomptes@{DOMAIN}>\r\n".encode() + rcpts)
        codes = [r[:3] for r in await replies(client, 11)]
        assert codes == ["250"] * 4 + ["452"] * 7
        assert (await client.command("DATA")).startswith("354 ")
        await client.send(message() + b".\r\n")
        assert (await client.reply()).startswith("250 2.0.0 Queued")
    assert len(gw.spool.puts) == 1


async def test_max_errors_0_sets_no_error_budget(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with (
        running_gateway(signing_material, server_tls, max_errors=0) as gw,
        raw(gw.port()) as client,
    ):
        await client.greet()
        await client.send(b"DATA\r\n" * 300)
        assert set(await replies(client, 300)) == {"503 5.5.1 Error: need RCPT command"}
        assert await client.command("NOOP") == "250 2.0.0 OK"


# ---------------------------------------------------------------------------- implicit TLS


async def test_smtps_connections_count_from_accept_before_their_handshake(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with running_gateway(
        signing_material, server_tls, max_connections=2, max_connections_per_ip=2
    ) as gw:
        # Two clients that connect to smtps and never start their handshake...
        async with raw(gw.port("smtps")), raw(gw.port("smtps")):
            for _ in range(250):
                if len(gw.receiver.sessions) == 2:
                    break
                await asyncio.sleep(0.02)
            # ...fill the gateway: a third connection, on any listener, is refused.
            async with raw(gw.port()) as third:
                assert await third.reply() == "421 4.7.0 Too many connections, try again later"
        await sessions_ended(gw)
        # Their places are free again once they are gone.
        async with raw(gw.port()) as client:
            assert (await client.greet()).startswith("250-")


async def test_a_slow_smtps_handshake_is_cut_and_frees_its_place(
    signing_material: SigningMaterial,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_gateway(signing_material, server_tls, tls_handshake_timeout=0.3) as gw:
        async with raw(gw.port("smtps")) as silent:
            await silent.send(PARTIAL_HELLO)  # and nothing more
            await until_closed(silent)  # within 5 s, not asyncio's default of 60
        await sessions_ended(gw)
        assert "event=tls_failed client_ip=127.0.0.1" in caplog.text
        assert_no_traceback(caplog)
        async with smtps(gw.port("smtps"), client_tls) as client:
            assert (await client.greet()).startswith("250-")


async def _stalled_after_starttls(port: int, hello: bytes) -> Raw:
    client = await Raw.connect(port)
    await client.greet()
    assert await client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    await client.send(hello)
    return client


@pytest.mark.parametrize("hello", [b"", PARTIAL_HELLO], ids=["silent", "partial_hello"])
async def test_a_stalled_starttls_handshake_is_cut_and_frees_its_place(
    signing_material: SigningMaterial,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    hello: bytes,
) -> None:
    """limits.tls_handshake_timeout bounds the handshake after STARTTLS as it bounds the
    smtps one: the connection is closed and its place, per address too, is free again."""
    caplog.set_level(logging.INFO)
    async with running_gateway(
        signing_material, server_tls, tls_handshake_timeout=0.3, max_connections_per_ip=2
    ) as gw:
        stalled = [await _stalled_after_starttls(gw.port("submission"), hello) for _ in range(2)]
        try:
            async with raw(gw.port()) as third:  # the address has used up its places
                assert await third.reply() == (
                    "421 4.7.0 Too many connections from your address, try again later"
                )
            for client in stalled:
                await until_closed(client)  # within 5 s, not asyncio's default of 60
        finally:
            for client in stalled:
                client.close()
        await sessions_ended(gw)
        assert caplog.text.count("event=tls_failed client_ip=127.0.0.1") == 2
        assert "SSL handshake is taking longer than 0.3 seconds" in caplog.text
        assert_no_traceback(caplog)
        async with raw(gw.port("submission")) as client:
            await client.greet()
            await starttls(client, client_tls)


async def test_a_starttls_handshake_dripped_a_byte_at_a_time_is_cut_at_the_timeout(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    """The timeout bounds the whole handshake, not the silence between its bytes."""
    async with running_gateway(signing_material, server_tls, tls_handshake_timeout=0.3) as gw:
        client = await _stalled_after_starttls(gw.port("submission"), b"")
        try:
            async with asyncio.timeout(5):
                for byte in PARTIAL_HELLO:
                    await client.send(bytes([byte]))
                    await asyncio.sleep(0.1)
                    if client.reader.at_eof() or client.writer.is_closing():
                        break
                await until_closed(client)
        except ConnectionError:
            pass  # the gateway closed the socket while a byte was on its way
        finally:
            client.close()
        await sessions_ended(gw)


async def test_a_timeout_during_the_starttls_handshake_frees_its_place(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    """The command timeout, coming first, closes a connection in its handshake just as
    well: closing aiosmtpd's TLS layer then must not leave the session counted."""
    async with running_gateway(
        signing_material,
        server_tls,
        command_timeout=0.3,
        tls_handshake_timeout=30.0,
        max_connections_per_ip=1,
    ) as gw:
        client = await _stalled_after_starttls(gw.port("submission"), PARTIAL_HELLO)
        try:
            await until_closed(client)
        finally:
            client.close()
        await sessions_ended(gw)
        async with raw(gw.port("submission")) as again:
            await again.greet()
            await starttls(again, client_tls)


# ---------------------------------------------------------------------------- content refusals

# One sample per content check of gateway/policy.py, by its metrics reason.
BAD_CONTENT = {
    "bare_line_end": message(body="one\nline\r\n"),
    "line_too_long": message(body="x" * 999 + "\r\n"),
    "nul_byte": message(body="Montant\0 12\r\n"),
    "header_control": message(extra_headers="Comments: bell\x07\r\n"),
    "header_not_utf8": message().replace("décompte".encode(), "d\xe9compte".encode("latin-1")),
    "no_from": message().replace(b"From: ", b"Sender: "),
    "several_from": message(extra_headers=f"From: <other@{DOMAIN}>\r\n"),
    "bad_from": message(sender="not an address"),
    "bad_header_line": message(extra_headers="Not a header field\r\n"),
    "repeated_field": message(extra_headers="subject: Annule\r\n"),
    "unsealable": (
        f"From: <a@{DOMAIN}>\r\nTo: m@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: application/pdf; name="d.pdf"\r\nContent-Transfer-Encoding: x-unknown\r\n'
        "\r\n%PDF-1.4\r\n"
    ).encode(),
}


async def test_every_content_refusal_is_550_5_6_0(gateway: Gateway) -> None:
    """RFC 5321 4.3.2 allows 550 or 554 after DATA; the gateway answers every refusal of
    a message's content the same way (X.6.0, RFC 3463), so clients can treat them alike."""
    replies: dict[str, str] = {}
    async with raw(gateway.port()) as client:
        await client.greet()
        for reason, data in BAD_CONTENT.items():
            assert (await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")).startswith("250")
            assert (await client.command("RCPT TO:<membre@example.org>")).startswith("250")
            assert (await client.command("DATA")).startswith("354 ")
            await client.send(data + b".\r\n")
            replies[reason] = await client.reply()
    assert {reason: reply[:10] for reason, reply in replies.items()} == dict.fromkeys(
        BAD_CONTENT, "550 5.6.0 "
    )
    assert gateway.spool.puts == []
    # Each sample met the check it stands for.
    counted = {r: gateway.metrics.rejected.value(r) for r in BAD_CONTENT}
    assert counted == dict.fromkeys(BAD_CONTENT, 1)


# ------------------------------------------------------------- address parsing, exact

_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_ATOMS = st.lists(st.text(_ATEXT + ".", min_size=0, max_size=6), min_size=1, max_size=3)
_ADDRESS_ARGS = st.one_of(
    st.text(max_size=60),
    # Near the fast path's shape: dot-atoms, stray dots, encoded-word openings, every
    # kind of space and comment after the closing bracket.
    st.builds(
        lambda local, domain, close, after: f"<{'.'.join(local)}@{'.'.join(domain)}{close}{after}",
        _ATOMS,
        _ATOMS,
        st.sampled_from([">", ">>", ""]),
        st.text(" \t\x0b\x0c\r\n\xa0(x)=SIZE10", max_size=8),
    ),
    st.builds(
        lambda local, domain, angle, tail: (
            f"<{local}@{domain}>{tail}" if angle else f"{local}@{domain}{tail}"
        ),
        st.sampled_from(["a", "jean.dupont", '"x y"', "a" * 70, "", "<", "a..b", "é", "=?x?q?a?="]),
        st.sampled_from(["caisse.example", "[192.0.2.1]", "", "x", "a b", "=?x?q?b?="]),
        st.booleans(),
        st.sampled_from(["", " SIZE=10", " BODY=8BITMIME", ">", " <x@y>", " (c) X", "\tX"]),
    ),
    st.sampled_from(["<>", " <a@b>", "<a@b", "a@b>", "<@route:a@b>", "<<a@b>>", " "]),
)


@functools.cache
def _unconnected_protocol() -> GatewaySMTP:
    loop = asyncio.new_event_loop()
    try:
        protocol, _ = smtp_setup_test.build(
            smtp_setup_test.make_handler(), loop, smtp_setup_test.RELAY_OPTIONS
        )
    finally:
        loop.close()
    return protocol


@settings(max_examples=2000, deadline=None)
@given(arg=_ADDRESS_ARGS, local_part_limit=st.sampled_from([0, 64]))
def test_mail_and_rcpt_addresses_parse_as_aiosmtpds_own(arg: str, local_part_limit: int) -> None:
    """GatewaySMTP._getaddr is aiosmtpd's, without its per-call class; same answers."""
    protocol = _unconnected_protocol()
    protocol.local_part_limit = local_part_limit

    def outcome(getaddr: Callable[[str], object]) -> object:
        try:
            return getaddr(arg)
        except Exception as exc:  # the stdlib's parser raises more than HeaderParseError
            return type(exc)

    assert outcome(protocol._getaddr) == outcome(lambda a: SMTP._getaddr(protocol, a))


@settings(max_examples=300, deadline=None)
@given(
    addresses=st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.sampled_from(["127.0.0.1", "::ffff:127.0.0.1", "127.0.0.2", "not an address"]),
            st.none(),
        ),
        max_size=20,
    )
)
def test_the_client_of_an_address_is_the_directorys_answer(addresses: list[str | None]) -> None:
    """Handler._client keeps each address's answer (at most _ADDRESSES_KEPT of them, the
    oldest dropped first): the same answer as the directory's, asked again or not."""
    clients = (
        *CLIENTS,
        ClientSettings(name="lan", networks=("10.0.0.0/8", "fd00::/8"), sender_domains=(DOMAIN,)),
    )
    handler = Handler(
        clients=clients,
        signing_domains=lambda: SIGNING_DOMAINS,
        sealer=None,  # type: ignore[arg-type]  # never reached
        spool=RecordingSpool(),
        metrics=Metrics(),
        auth_guard=AuthGuard(3, 5, lockout=60.0, delay=0.01),
        max_recipients=3,
        max_line_length=998,
    )
    directory = policy.ClientDirectory(clients)
    protocol = _unconnected_protocol()
    with mock.patch.object(smtp_handler, "_ADDRESSES_KEPT", 4):
        for address in addresses + addresses[::-1]:
            protocol._ip = address
            assert handler._client(protocol, None) == directory.by_address(address)  # type: ignore[arg-type]
            assert len(handler._by_address) <= 4

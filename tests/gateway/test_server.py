"""Listeners, TLS and connection-level limits, through real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
import trustme
from cryptography import x509

from gateway import server
from keys.signing import SigningMaterial
from tests.gateway.test_smtp_handler import (
    DOMAIN,
    HOST,
    PARTIAL_HELLO,
    Gateway,
    Raw,
    message,
    raw,
    running_gateway,
    transaction,
)


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


def test_self_signed_certificate_is_made_once(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert server.ensure_self_signed(cert, key, "gateway.test") is True
    first = cert.read_bytes()
    assert server.ensure_self_signed(cert, key, "gateway.test") is False
    assert cert.read_bytes() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(first)
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gateway.test" in names.get_values_for_type(x509.DNSName)
    # It loads as a server certificate.
    server.tls_context(cert, key)


async def test_starttls_with_the_self_signed_certificate(
    tmp_path: Path, signing_material: SigningMaterial
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server.ensure_self_signed(cert, key, "localhost")
    client_context = ssl.create_default_context(cafile=str(cert))
    async with running_gateway(signing_material, server.tls_context(cert, key)) as gateway:
        smtp = aiosmtplib.SMTP(
            hostname="localhost",
            port=gateway.port("submission"),
            start_tls=True,
            tls_context=client_context,
        )
        async with smtp:
            await smtp.ehlo()
            assert smtp.get_transport_info("sslcontext") is not None
            assert "plain" in smtp.server_auth_methods


async def test_connections_per_ip_over_the_limit_get_421(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with running_gateway(
        signing_material, server_tls, max_connections=4, max_connections_per_ip=2
    ) as gateway:
        port = gateway.port()
        async with raw(port) as first, raw(port) as second:
            assert (await first.reply()).startswith("220 ")
            assert (await second.reply()).startswith("220 ")
            async with raw(port) as third:
                assert await third.reply() == (
                    "421 4.7.0 Too many connections from your address, try again later"
                )
                assert await third.closed()
            # Another address still gets in, up to the total.
            async with raw(port, source="127.0.0.2") as other, raw(port, "127.0.0.3") as more:
                assert (await other.reply()).startswith("220 ")
                assert (await more.reply()).startswith("220 ")
                async with raw(port, source="127.0.0.4") as over:
                    assert await over.reply() == ("421 4.7.0 Too many connections, try again later")
        # Closed sessions free their places.
        await asyncio.sleep(0.1)
        async with raw(port) as again:
            assert (await again.reply()).startswith("220 ")


async def test_idle_client_gets_421_after_the_command_timeout(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with running_gateway(signing_material, server_tls, command_timeout=0.3) as gateway:
        client = await Raw.connect(gateway.port())
        await client.greet()
        assert await client.reply() == "421 4.4.2 Timeout, closing connection"
        assert await client.closed()
        client.close()


async def test_stalled_data_gets_421_after_the_data_timeout(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    async with running_gateway(
        signing_material, server_tls, command_timeout=5.0, data_timeout=0.3
    ) as gateway:
        async with raw(gateway.port()) as client:
            await client.greet()
            await client.command(f"MAIL FROM:<a@{DOMAIN}>")
            await client.command("RCPT TO:<m@example.org>")
            assert (await client.command("DATA")).startswith("354 ")
            await client.send(b"From: <a@caisses.example>\r\n")
            assert await client.reply() == "421 4.4.2 Timeout, closing connection"
        assert gateway.spool.puts == []


async def test_the_command_timeout_counts_from_the_last_command(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    """The deadline moves with each command (one timer, set again when it comes due
    early): a client busy for longer than the timeout is not cut, and once it is idle it
    is cut the timeout after its last command, not before."""
    loop = asyncio.get_running_loop()
    async with (
        running_gateway(signing_material, server_tls, command_timeout=0.4) as gateway,
        raw(gateway.port()) as client,
    ):
        await client.greet()
        for _ in range(4):  # 0.6 s in all, each command 0.15 s after the last
            await asyncio.sleep(0.15)
            assert await client.command("NOOP") == "250 2.0.0 OK"
        last = loop.time()
        assert await client.reply() == "421 4.4.2 Timeout, closing connection"
        assert loop.time() - last >= 0.4 - 0.05  # loop clock granularity
        assert await client.closed()


async def test_the_data_timeout_applies_during_data_and_the_command_timeout_after(
    signing_material: SigningMaterial, server_tls: ssl.SSLContext
) -> None:
    """A DATA timeout longer than the command timeout: a message sent slowly over more
    than the command timeout is accepted; afterwards the command timeout applies again."""
    loop = asyncio.get_running_loop()
    async with running_gateway(
        signing_material, server_tls, command_timeout=0.3, data_timeout=5.0
    ) as gateway:
        async with raw(gateway.port()) as client:
            await client.greet()
            await client.command(f"MAIL FROM:<decomptes@{DOMAIN}>")
            await client.command("RCPT TO:<m@example.org>")
            assert (await client.command("DATA")).startswith("354 ")
            body = message()
            half = len(body) // 2
            await client.send(body[:half])
            await asyncio.sleep(0.5)  # past the command timeout, within the DATA one
            await client.send(body[half:] + b"\r\n.\r\n")
            assert (await client.reply()).startswith("250 2.0.0 Queued as ")
            answered = loop.time()
            assert await client.reply() == "421 4.4.2 Timeout, closing connection"
            assert loop.time() - answered >= 0.3 - 0.05
        assert len(gateway.spool.puts) == 1


async def test_shutdown_closes_idle_sessions_and_refuses_new_ones(gateway: Gateway) -> None:
    port = gateway.port()
    async with raw(port) as idle:
        await idle.greet()
        closing = asyncio.create_task(gateway.receiver.close(grace=2.0))
        assert await idle.reply() == "421 4.3.2 Service shutting down, try again later"
        await asyncio.wait_for(closing, 2)
    try:
        async with raw(port) as late:
            assert await late.closed()
    except ConnectionRefusedError:
        pass


async def test_shutdown_closes_a_session_in_its_starttls_handshake(gateway: Gateway) -> None:
    """Closed in its handshake, the session is gone at once: not left counted, where the
    shutdown would wait out its grace for it."""
    async with raw(gateway.port("submission")) as client:
        await client.greet()
        assert await client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
        await client.send(PARTIAL_HELLO)
        await asyncio.sleep(0.05)  # the gateway has read it: it is inside the handshake
        closing = asyncio.create_task(gateway.receiver.close(grace=30.0))
        assert await client.closed()
        await asyncio.wait_for(closing, 5)
    assert len(gateway.receiver.sessions) == 0


async def test_shutdown_lets_a_message_in_progress_finish(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        await client.command(f"MAIL FROM:<a@{DOMAIN}>")
        await client.command("RCPT TO:<m@example.org>")
        assert (await client.command("DATA")).startswith("354 ")
        await client.send(message())
        closing = asyncio.create_task(gateway.receiver.close(grace=3.0))
        await asyncio.sleep(0.2)
        assert not closing.done()
        await client.send(b".\r\n")
        assert (await client.reply()).startswith("250 2.0.0 Queued as")
        assert await client.reply() == "421 4.3.2 Service shutting down, try again later"
        await asyncio.wait_for(closing, 2)
    assert len(gateway.spool.puts) == 1


async def test_a_session_sends_several_messages(gateway: Gateway) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        replies = [await transaction(client, message()) for _ in range(3)]
    assert replies == [f"250 2.0.0 Queued as Q000{i}" for i in (1, 2, 3)]

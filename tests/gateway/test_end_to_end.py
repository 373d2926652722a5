"""The whole gateway as a separate process: `python -m gateway --config FILE`, fed by real
SMTP clients, delivering to the recording peer (tests/gateway/conftest.py) over a real
socket. Its key store is initialised on first start, as on a fresh machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from tests.gateway.conftest import Peer
from tests.gateway.test_smtp_handler import raw, transaction
from tests.support import DOMAIN, free_port, statement

ROOT = Path(__file__).parents[2]


class GatewayProcess:
    def __init__(self, workdir: Path, peer: Peer) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = workdir / "gateway.toml"
        self.config.write_text(
            f"""
            [gateway]
            hostname = "gateway.test"
            shutdown_grace = 5
            [relay]
            listen = "127.0.0.1:{self.port}"
            [submission]
            listen = ""
            [metrics]
            listen = "127.0.0.1:{self.metrics_port}"
            [sealing]
            workers = 1
            [delivery]
            route = "smarthost"
            smarthost = "127.0.0.1:{peer.port}"
            smarthost_tls = "opportunistic"
            first_retry = 1
            [[clients]]
            name = "batch-host"
            networks = ["127.0.0.1/32"]
            sender_domains = ["{DOMAIN}"]
            """,
            encoding="utf-8",
        )
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        with (self.workdir / f"gateway-{self.starts}.log").open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(self.config),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        async with asyncio.timeout(30):
            while True:
                assert self.process.returncode is None, self.log()
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.1)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        async with asyncio.timeout(10):
            await self.process.wait()

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return await self.process.wait()


@pytest.fixture
async def gateway_process(tmp_path: Path, peer: Peer) -> AsyncIterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path, peer)
    yield gateway
    if gateway.process is not None and gateway.process.returncode is None:
        await gateway.kill()


async def test_statement_is_sealed_and_delivered(
    gateway_process: GatewayProcess, peer: Peer
) -> None:
    await gateway_process.start()
    # The relay port serves an allow-listed network: no TLS needed.
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway_process.port, start_tls=False)
    async with client:
        _, reply = await client.sendmail(
            f"decomptes@{DOMAIN}", ["membre@example.org"], statement("first")
        )
    assert re.fullmatch(r"2\.0\.0 Queued as \S+", reply)
    [received] = await peer.wait_for(1, within=15)
    assert received.recipients == ["membre@example.org"]
    data = received.data
    assert len(re.findall(rb"^DKIM-Signature:.*d=caisses\.example", data, re.M)) == 2
    assert b'filename="decompte-1.pdf.p7s"' in data
    # The peer holds the message a moment before the gateway has its 250 and records it.
    for _ in range(50):
        scraped = await scrape(gateway_process.metrics_port)
        if "sealpost_queue_depth 0" in scraped:
            break
        await asyncio.sleep(0.1)
    assert "sealpost_messages_received_total 1" in scraped
    assert "sealpost_documents_sealed_total 1" in scraped
    assert "sealpost_recipients_delivered_total 1" in scraped
    assert "sealpost_queue_depth 0" in scraped
    assert await gateway_process.terminate() == 0
    log = gateway_process.log()
    # First start: the key store was made and its DNS records printed.
    assert "event=keys_initialised" in log
    assert "s202" in log
    assert "._domainkey.caisses.example. 3600 IN TXT" in log
    assert "event=queued" in log
    assert "event=stopped" in log
    assert "Votre" not in log  # never a body in the log
    queue = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(gateway_process.config),
        "queue",
        "list",
        cwd=gateway_process.workdir,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, _ = await asyncio.wait_for(queue.communicate(), 30)
    assert queue.returncode == 0
    assert "0 message(s)" in out.decode()


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: gateway\r\n\r\n")
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    return response.decode()


async def send_until_stopped(
    port: int, name: str, accepted: list[str], stop: asyncio.Event, enough: asyncio.Event
) -> None:
    """Send statements one after another; remember those answered 250."""
    n = 0
    while not stop.is_set():
        token = f"{name}-{n}"
        n += 1
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False)
            async with client:
                _, reply = await client.sendmail(
                    f"decomptes@{DOMAIN}", ["membre@example.org"], statement(token)
                )
        except (aiosmtplib.SMTPException, OSError):
            await asyncio.sleep(0.05)
            continue
        if reply.startswith("2.0.0"):
            accepted.append(token)
            if len(accepted) >= 40:
                enough.set()


async def test_every_accepted_message_survives_sigkill(
    gateway_process: GatewayProcess, peer: Peer
) -> None:
    await gateway_process.start()
    accepted: list[str] = []
    stop, enough = asyncio.Event(), asyncio.Event()
    senders = [
        asyncio.create_task(
            send_until_stopped(gateway_process.port, f"c{i}", accepted, stop, enough)
        )
        for i in range(20)
    ]
    await asyncio.wait_for(enough.wait(), 20)
    await gateway_process.kill()  # SIGKILL, with sessions in flight
    before_kill = list(accepted)
    stop.set()
    await asyncio.gather(*senders)
    # Anything answered 250 before the kill, and nothing after it (the process is dead).
    assert accepted == before_kill

    await gateway_process.start()
    wanted = set(accepted)

    def arrived() -> dict[str, int]:
        counts: dict[str, int] = {}
        for message in peer.messages:
            found = re.search(rb"^Subject: (\S+)", message.data, re.M)
            if found:
                token = found.group(1).decode()
                counts[token] = counts.get(token, 0) + 1
        return counts

    async with asyncio.timeout(40):
        while not wanted <= set(arrived()):
            await peer.wait_for(len(peer.messages) + 1, within=40)
    counts = arrived()
    duplicates = sum(counts[t] - 1 for t in wanted)
    print(f"accepted={len(wanted)} arrived={len(counts)} duplicates={duplicates}")
    assert await gateway_process.terminate() == 0


async def test_relay_attempts_and_smuggling_deliver_nothing(
    gateway_process: GatewayProcess, peer: Peer
) -> None:
    await gateway_process.start()
    outsider = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=gateway_process.port,
        start_tls=False,
        source_address=("127.0.0.2", 0),
    )
    async with outsider:
        refused = await outsider.execute_command(b"EHLO", b"outsider.test")
        refused = await outsider.execute_command(b"MAIL", f"FROM:<x@{DOMAIN}>".encode())
    assert (refused.code, refused.message[:5]) == (550, "5.7.1")

    smuggled = (
        f"From: <decomptes@{DOMAIN}>\r\nTo: membre@example.org\r\nSubject: cover\r\n\r\n"
        f"hello\r\n\n.\nMAIL FROM:<decomptes@{DOMAIN}>\nRCPT TO:<victim@example.org>\nDATA\n"
        f"From: <decomptes@{DOMAIN}>\nSubject: smuggled\n\nforged\n"
    ).encode()
    # A raw socket: a real client library would fix the bare LFs before sending.
    async with raw(gateway_process.port) as client:
        await client.greet()
        reply = await transaction(client, smuggled)
        assert reply.startswith("554 5.6.0 Bare CR or LF")
        reply = await transaction(client, statement("the-only-one"))
        assert reply.startswith("250 2.0.0 Queued as")
    [received] = await peer.wait_for(1, within=15)
    await asyncio.sleep(1.0)  # anything else would have arrived by now
    assert len(peer.messages) == 1
    assert b"Subject: the-only-one" in received.data
    assert peer.delivered_to("victim@example.org") == []


async def test_a_port_in_use_is_one_readable_error(gateway_process: GatewayProcess) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", gateway_process.port))
        taken.listen()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(gateway_process.config),
            cwd=gateway_process.workdir,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "event=start_failed" in err.decode()
    assert "Traceback" not in err.decode()

"""The whole gateway as a separate process: `python -m gateway --config FILE`, fed by real
SMTP clients, delivering to the recording peer (tests/gateway/conftest.py) over a real
socket. Its key store is initialised on first start, as on a fresh machine."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
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

from keys import store as key_store
from keys.archive import load_archive
from tests.checks import dkimpy_results, mail_dkim_results, openssl_verifies
from tests.gateway.conftest import Peer
from tests.gateway.test_smtp_handler import raw, transaction
from tests.support import DOMAIN, free_port, scrape, statement
from tlog import merkle, note
from tlog.tiles import TileStore
from verifier.report import Verdict
from verifier.settings import Limits
from verifier.trust import Trust
from verifier.verify import verify_email

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

    async def queue_list(self, *args: str) -> str:
        """The output of `python -m gateway queue list ARGS` on this gateway's spool."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(self.config),
            "queue",
            "list",
            *args,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, out
        return out.decode()

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        async with asyncio.timeout(10):
            await self.process.wait()

    async def kill_if_running(self) -> None:
        """The clean-up after a test, which may have failed before it stopped the gateway."""
        if self.process is not None and self.process.returncode is None:
            await self.kill()

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(f"no graceful stop within 20 s:\n{self.log()[-4000:]}") from None


@pytest.fixture
async def gateway_process(tmp_path: Path, peer: Peer) -> AsyncIterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path, peer)
    yield gateway
    await gateway.kill_if_running()


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
    # The peer holds the message a moment before the gateway has its 250 and records it,
    # and the spool shows the record a moment before the scheduler counts it.
    for _ in range(50):
        scraped = await scrape(gateway_process.metrics_port)
        if all(
            line in scraped
            for line in ("sealpost_queue_depth 0", "sealpost_recipients_delivered_total 1")
        ):
            break
        await asyncio.sleep(0.1)
    assert "sealpost_messages_received_total 1" in scraped
    assert "sealpost_documents_sealed_total 1" in scraped
    assert "sealpost_recipients_delivered_total 1" in scraped
    assert "sealpost_queue_depth 0" in scraped
    # From its start, the gateway says which generation it signs with, until when.
    assert re.search(
        rf'^sealpost_signing_generation{{domain="{DOMAIN}",generation="\w+"}} 1$', scraped, re.M
    )
    assert f'sealpost_signing_certificate_expiry_timestamp_seconds{{domain="{DOMAIN}"' in scraped
    assert await gateway_process.terminate() == 0
    log = gateway_process.log()
    assert f"event=signing_generation domain={DOMAIN} generation=" in log
    # First start: the key store was made and its DNS records printed.
    assert "event=keys_initialised" in log
    assert "s202" in log
    assert "._domainkey.caisses.example. 3600 IN TXT" in log
    # One line per accepted message, the handler's (the spool's own is not written for it).
    assert len(re.findall(r"event=queued queue_id=\S+ client=.* documents=1 result=250", log)) == 1
    assert log.count("event=queued") == 1
    assert "event=stopped" in log
    assert "Votre" not in log  # never a body in the log
    assert "0 message(s)" in await gateway_process.queue_list()


async def send_one(port: int, marker: str) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    async with client:
        _, reply = await client.sendmail(
            f"decomptes@{DOMAIN}", ["membre@example.org"], statement(marker)
        )
    assert reply.startswith("2.0.0 Queued as"), reply


def published_records(workdir: Path) -> dict[str, str]:
    """The TXT records of every key the gateway's store published, read from its public
    archive: what a receiving server would find in DNS."""
    archive = load_archive(workdir / "var/public")
    return {
        f"{key.selector}._domainkey.{key.domain}": key.dns_txt()
        for key in archive.dkim_keys
        if key.state in ("active", "retired")
    }


def selectors(data: bytes) -> list[str]:
    """The s= tag of each DKIM-Signature field."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    fields = message.get_all("DKIM-Signature") or []
    return [re.search(r"\bs=([\w-]+)", re.sub(r"\s+", "", f)).group(1) for f in fields]  # type: ignore[union-attr]


async def test_what_leaves_the_gateway_passes_the_independent_checkers(
    gateway_process: GatewayProcess, peer: Peer, tmp_path: Path
) -> None:
    await gateway_process.start()
    await send_one(gateway_process.port, "checked")
    [received] = await peer.wait_for(1, within=15)
    records = published_records(gateway_process.workdir)

    assert dkimpy_results(received.data, records) == [True, True]
    verdicts = mail_dkim_results(received.data, records, tmp_path)
    assert [v.split()[0] for v in verdicts] == ["pass", "pass"], verdicts
    assert {v.split()[1] for v in verdicts} == {"a=rsa-sha256", "a=ed25519-sha256"}

    message = email.message_from_bytes(received.data, policy=email.policy.default)
    parts = {p.get_filename(): p.get_payload(decode=True) for p in message.iter_attachments()}
    document, signature = parts["decompte-1.pdf"], parts["decompte-1.pdf.p7s"]
    root = (gateway_process.workdir / "var/public/root.pem").read_bytes()
    assert isinstance(document, bytes)
    assert isinstance(signature, bytes)
    assert openssl_verifies(signature, document, root, tmp_path)
    changed = document[:40] + bytes([document[40] ^ 1]) + document[41:]
    assert not openssl_verifies(signature, changed, root, tmp_path)


async def test_a_key_rotation_reaches_the_running_gateway(
    gateway_process: GatewayProcess, peer: Peer
) -> None:
    await gateway_process.start()
    await send_one(gateway_process.port, "before")
    [before] = await peer.wait_for(1, within=15)

    keys_dir, public = gateway_process.workdir / "var/keys", gateway_process.workdir / "var/public"
    generation = key_store.rotate(keys_dir, public, DOMAIN)
    key_store.activate(keys_dir, public, DOMAIN, force=True)
    new = sorted(k.selector for k in generation.dkim)

    # The gateway looks at the store at most once a second; sessions are not dropped.
    for n in range(30):
        await send_one(gateway_process.port, f"after-{n}")
        received = await peer.wait_for(n + 2, within=15)
        if sorted(selectors(received[-1].data)) == new:
            break
        await asyncio.sleep(0.2)
    assert sorted(selectors(before.data)) != new
    assert sorted(selectors(received[-1].data)) == new
    assert dkimpy_results(received[-1].data, published_records(gateway_process.workdir)) == [
        True,
        True,
    ]


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
    # The statement log lost nothing either: every message that arrived is in it (the
    # verifier finds its entry, proven included in a signed checkpoint), and each
    # checkpoint published across the kill is consistent with the next.
    public = gateway_process.workdir / "var" / "public"
    trust = Trust(load_archive(public), public)
    for message in peer.messages:
        report = verify_email(message.data, trust, Limits())
        assert report.verdict is Verdict.AUTHENTIC, report.reason
        assert report.log is not None
        assert report.log.status == "logged"
    assert_log_consistent(public)


def assert_log_consistent(public: Path) -> None:
    """Every checkpoint the log published is consistent with the one after it."""
    (log,) = load_archive(public).logs
    directory = public / log.path
    verifier = note.Verifier.from_text(log.key)
    tiles = TileStore(directory)
    history = sorted(int(p.name) for p in (directory / "checkpoints").iterdir() if p.name.isdigit())
    checkpoints = [
        note.Checkpoint.parse(
            note.open_note((directory / "checkpoints" / str(size)).read_bytes(), [verifier]).text
        )
        for size in history
    ]
    assert checkpoints[-1].size == tiles.size
    for old, new in itertools.pairwise(checkpoints):
        proof = tiles.consistency_proof(old.size, new.size) if old.size else []
        assert old.size == 0 or merkle.verify_consistency(
            old.size, new.size, old.root, new.root, proof
        )


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
        assert reply.startswith("550 5.6.0 Bare CR or LF")
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


async def test_a_utf8_address_reaches_a_hop_without_smtputf8_only_as_a_bounce(
    gateway_process: GatewayProcess, peer: Peer
) -> None:
    """RFC 6531 3.4, through the whole gateway: SMTPUTF8 kept from MAIL to delivery, and a
    next hop that does not offer it gets a DSN for the sender, never the message."""
    peer.withhold = {"SMTPUTF8"}
    await gateway_process.start()
    async with raw(gateway_process.port) as client:
        await client.greet()
        assert (await client.command(f"MAIL FROM:<decomptes@{DOMAIN}> SMTPUTF8")).startswith("250 ")
        assert (await client.command("RCPT TO:<jörg@example.org>")).startswith("250 ")
        assert (await client.command("DATA")).startswith("354 ")
        await client.send(statement("utf8") + b".\r\n")
        assert (await client.reply()).startswith("250 ")
    [bounce] = await peer.wait_for(1, within=15)
    assert bounce.sender == ""
    assert bounce.recipients == [f"decomptes@{DOMAIN}"]
    text = bounce.data.decode()
    assert "report-type=global-delivery-status" in text
    assert "Final-Recipient: utf-8; jörg@example.org\r\n" in text
    assert "Status: 5.6.7\r\n" in text
    assert peer.rcpt_attempts == [f"decomptes@{DOMAIN}"]

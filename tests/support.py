"""Small things tests across packages need: a free loopback port, a statement email and
the document and signature sealed into it, a scrape of the gateway's metrics, a clock the
test moves by hand."""

from __future__ import annotations

import asyncio
import base64
import email.policy
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

DOMAIN = "caisses.example"
# Not a real PDF: sealing and verification look at the content type and the bytes only.
PDF = b"%PDF-1.4\n% statement\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if `process` has not exited after `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def statement(marker: str, pdf: bytes = PDF) -> bytes:
    """A statement from the fund with one PDF; `marker` is its Subject and Message-ID, so
    each copy that arrives can be told apart. CRLF line ends, as SMTP carries it."""
    encoded = base64.encodebytes(pdf).replace(b"\n", b"\r\n").decode()
    return (
        f"From: Caisses Sociales <decomptes@{DOMAIN}>\r\nTo: membre@example.org\r\n"
        f"Subject: {marker}\r\nMessage-ID: <{marker}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="sep"\r\n\r\n'
        "--sep\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nVotre décompte.\r\n"
        '--sep\r\nContent-Type: application/pdf; name="decompte-1.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="decompte-1.pdf"\r\n\r\n'
        f"{encoded}--sep--\r\n"
    ).encode()


def document_and_signature(sealed: bytes) -> tuple[str, bytes, bytes]:
    """The file name, the document and its detached .p7s, as the gateway sealed them into
    the one statement of `sealed`."""
    message = message_from_bytes(sealed, policy=email.policy.SMTP)
    assert isinstance(message, EmailMessage)
    parts = {part.get_filename(): part.get_payload(decode=True) for part in message.walk()}
    (name,) = [n for n in parts if n and f"{n}.p7s" in parts]
    document, signature = parts[name], parts[f"{name}.p7s"]
    assert isinstance(name, str)
    assert isinstance(document, bytes)
    assert isinstance(signature, bytes)
    return name, document, signature


@dataclass
class Clock:
    """A clock the test moves by hand (`clock.now += 60`): no sleeping."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


async def scrape(port: int) -> str:
    """The gateway's /metrics page, HTTP headers included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: gateway\r\n\r\n")
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    return response.decode()


ROOT = Path(__file__).resolve().parents[1]
TSA_SCRIPT = ROOT / "scripts" / "tsa.py"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Tsa:
    url: str
    ca_pem: Path


def start_tsa(directory: Path) -> Iterator[Tsa]:
    """Runs scripts/tsa.py (a local RFC 3161 TSA on openssl ts) until the caller is done."""
    process = subprocess.Popen(
        [sys.executable, str(TSA_SCRIPT), str(directory), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        try:
            first = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"scripts/tsa.py did not start within {START_TIMEOUT_S}s")
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert match, f"scripts/tsa.py printed {first!r}, rc={process.poll()}"
        yield Tsa(match.group(0), directory / "ca.pem")
    finally:
        stop(process)
        stdout.close()


def child_pids(pid: int) -> list[int]:
    """The live (not zombie) children of `pid`, read from /proc."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [child for child in pids if _stat(child)[1:2] == [str(pid)] and alive(child)]


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _stat(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []

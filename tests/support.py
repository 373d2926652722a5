"""Small things tests across packages need: a free loopback port, a statement email,
a scrape of the gateway's metrics."""

from __future__ import annotations

import asyncio
import base64
import socket

DOMAIN = "caisses.example"
# Not a real PDF: sealing and verification look at the content type and the bytes only.
PDF = b"%PDF-1.4\n% statement\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


async def scrape(port: int) -> str:
    """The gateway's /metrics page, HTTP headers included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: gateway\r\n\r\n")
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    return response.decode()

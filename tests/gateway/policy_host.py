"""An HTTPS host for MTA-STS policies on 127.0.0.1: a real TLS server (a trustme
certificate for the names given) answering every request with what the test sets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trustme


@dataclass
class PolicyHost:
    body: bytes = b""
    status: str = "200 OK"
    content_type: str = "text/plain"
    extra_headers: str = ""
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)


@contextlib.asynccontextmanager
async def serve(ca: trustme.CA, *names: str) -> AsyncIterator[PolicyHost]:
    host = PolicyHost()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            path = lines[0].split(" ")[1]
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            host.requests.append((path, headers.get("Host", headers.get("host", "")).strip()))
            writer.write(
                (
                    f"HTTP/1.1 {host.status}\r\nContent-Type: {host.content_type}\r\n"
                    f"Content-Length: {len(host.body)}\r\n{host.extra_headers}"
                    "Connection: close\r\n\r\n"
                ).encode()
                + host.body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", 0, ssl=context)
    host.port = server.sockets[0].getsockname()[1]
    try:
        yield host
    finally:
        server.close()

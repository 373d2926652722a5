"""A tiny DNS server on 127.0.0.1 (UDP and TCP, same port) in the test's event loop.

It answers from a table of records in zone-file text and stands in for a validating
resolver: names under a zone listed in ``signed`` get the AD bit, in answers and in
denials alike, the way a validating resolver marks a DNSSEC-signed zone. Unknown names
get NXDOMAIN; a name (or name and type) in ``fail`` gets SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclass
class Zone:
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    signed: set[str] = field(default_factory=set)  # zone apexes whose answers are validated
    # Answered with SERVFAIL: a name (every type) or a (name, type).
    fail: set[str | tuple[str, str]] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)
    messages: list[dns.message.Message] = field(default_factory=list)  # every query as sent

    def add(self, name: str, rdtype: str, *rdatas: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rdtype.upper()), []).extend(rdatas)

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        self.messages.append(query)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.fail or (name, rdtype) in self.fail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if any(name == z or name.endswith("." + z) for z in self.signed):
            response.flags |= dns.flags.AD
        found = self.records.get((name, rdtype))
        if found:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, "IN", rdtype, found)
            )
        elif not any(key[0] == name for key in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.zone.answer(data), addr)


@contextlib.asynccontextmanager
async def serve(zone: Zone) -> AsyncIterator[int]:
    """Serves ``zone`` until the block ends; yields the port (UDP and TCP)."""

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = zone.answer(await reader.readexactly(length))
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Udp(zone), local_addr=("127.0.0.1", port)
    )
    try:
        yield port
    finally:
        transport.close()
        server.close()

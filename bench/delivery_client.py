"""CPU of the outbound SMTP client per message, in-process: N deliveries of the bench's
statement (../shared/bench/postfix-opendkim/message.eml, line ends made CRLF, one
recipient) through one `gateway.delivery.Delivery` and one pooled connection, to a raw
SMTP server that answers at once. The server runs in a child process, so the figure is the
client's own CPU (time.process_time) per delivery, connection set-up excluded.

    .venv/bin/python bench/delivery_client.py [--messages 2000] [--rounds 5] [--servers ...]

Printed, per server kind (offering PIPELINING or not): the best and the median round, in
microseconds of CPU per delivery. Run it in two trees (e.g. main's and a branch's) to
compare them; on a shared machine compare medians of the same run, never one figure alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gateway.delivery import Delivery, Smarthost

KINDS = ("lock-step", "pipelining")
MESSAGE_FILE = Path(__file__).resolve().parents[2] / "shared/bench/postfix-opendkim/message.eml"


async def serve(pipelining: bool) -> None:
    """Answer every command of a segment in one write, at once; print the port."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink.test ESMTP\r\n")
        pending, in_data = b"", False
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(1 << 16):
                pending += chunk
                out = bytearray()
                while True:
                    if in_data:
                        end = pending.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        pending, in_data = pending[end + 5 :], False
                        out += b"250 2.0.0 queued\r\n"
                        continue
                    line, sep, rest = pending.partition(b"\r\n")
                    if not sep:
                        break
                    pending, verb = rest, line[:4].upper()
                    if verb == b"EHLO":
                        offer = b"250-PIPELINING\r\n" if pipelining else b""
                        out += b"250-sink.test\r\n" + offer + b"250 8BITMIME\r\n"
                    elif verb == b"DATA":
                        out += b"354 go ahead\r\n"
                        in_data = True
                        pending = b"\r\n" + pending  # the body's first line follows a CRLF
                    elif verb == b"QUIT":
                        writer.write(bytes(out) + b"221 bye\r\n")
                        writer.close()
                        return
                    else:
                        out += b"250 2.0.0 ok\r\n"
                if out:
                    writer.write(bytes(out))

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def measure(port: int, message: bytes, messages: int, rounds: int) -> list[float]:
    delivery = Delivery(Smarthost("127.0.0.1", port), local_hostname="gw.test", timeout=10)
    per_delivery: list[float] = []
    try:
        # The first delivery opens the connection; the others reuse it.
        (first,) = await delivery.deliver("s@caisses.example", ["a@insurer.example"], message)
        assert first.status == "delivered", first
        for round_ in range(rounds + 1):  # the first warms up (allocator, caches): dropped
            start = time.process_time()
            for _ in range(messages):
                (outcome,) = await delivery.deliver(
                    "s@caisses.example", ["a@insurer.example"], message
                )
                assert outcome.status == "delivered", outcome
            if round_:
                per_delivery.append((time.process_time() - start) / messages * 1e6)
        assert delivery.connections_opened == 1
    finally:
        await delivery.close()
    return per_delivery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=KINDS,
        default=list(KINDS),
        help="which servers, in this order (default: both)",
    )
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve == "pipelining"))
        return
    raw = MESSAGE_FILE.read_bytes()
    message = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for kind in args.servers:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            figures = asyncio.run(measure(port, message, args.messages, args.rounds))
        finally:
            server.terminate()
            server.wait(timeout=10)
        print(
            f"server {kind:10}: {statistics.median(figures):6.0f} us CPU per delivery "
            f"(median of {args.rounds} x {args.messages}; best {min(figures):.0f})"
        )


if __name__ == "__main__":
    main()

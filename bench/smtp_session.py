"""Server CPU per inbound SMTP session, as a lane spends it, with nothing else in the way.

    .venv/bin/python bench/smtp_session.py [--sessions 4000] [--parallel 20]
        [--handler real|null] [--client smtp-source|ehlo] [--profile FILE] [--repeat 3]

The lane's relay listener (`gateway.server.start`, STARTTLS offered, the default limits)
runs in this process on 127.0.0.1; Postfix's ``smtp-source`` drives it from another
process exactly as the end-to-end bench does (one message per connection: greeting, EHLO,
MAIL, RCPT, DATA with the bench's 27 KB message, QUIT, each waiting for its reply), so
the client's CPU is not counted. The figure is this process's CPU time
(`time.process_time`) per session.

`--client ehlo`: smtp-source says HELO; most clients (Postfix's smtp, aiosmtplib) say
EHLO, whose reply has eight lines. This client (Python, blocking sockets, a thread per
parallel session, in its own process) does the same session with EHLO.

`--handler real`: the gateway's Handler with its policy checks, the sealer and the spool
replaced by stand-ins that return at once (this script only; the tests use real ones).
`--handler null`: a DATA hook that answers 250 at once, for the session machinery alone.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiosmtpd.smtp import Envelope, Session

from gateway import server
from gateway.__main__ import session_limits
from gateway.metrics import Metrics
from gateway.settings import ClientSettings, LimitsSettings
from gateway.smtp_handler import AuthGuard, GatewaySMTP, Handler, Sessions
from gateway.spool import Envelope as SpoolEnvelope

MESSAGE = Path(__file__).resolve().parents[2] / "shared/bench/postfix-opendkim/message.eml"
SENDER = "statements@caisses.example"
RECIPIENT = "customer@example.net"
HELO = "client.caisses.example"


@dataclass(frozen=True)
class _Sealed:
    data: bytes
    documents: tuple[str, ...] = ()
    entry: bytes = b""


class _InstantSealer:
    async def seal(self, raw: bytes, domain: str) -> _Sealed:
        return _Sealed(raw)


class _InstantSpool:
    def __init__(self) -> None:
        self.count = 0

    async def put(self, envelope: SpoolEnvelope) -> str:
        self.count += 1
        return f"{self.count:019X}"


class _NullHandler(Handler):
    async def handle_DATA(self, server: GatewaySMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Queued as 0000000000000000001"


def _handler(kind: str) -> Handler:
    limits = LimitsSettings()
    cls = _NullHandler if kind == "null" else Handler
    return cls(
        clients=(
            ClientSettings(
                name="bench", networks=("127.0.0.1/32",), sender_domains=("caisses.example",)
            ),
        ),
        signing_domains=lambda: ("caisses.example",),
        sealer=_InstantSealer(),
        spool=_InstantSpool(),
        metrics=Metrics(),
        auth_guard=AuthGuard(5, 10, lockout=900.0, delay=1.0),
        max_recipients=limits.max_recipients,
        max_line_length=limits.max_line_length,
    )


def _tls(directory: Path) -> ssl.SSLContext:
    cert, key = directory / "cert.pem", directory / "key.pem"
    server.ensure_self_signed(cert, key, "localhost")
    return server.tls_context(cert, key)


def _source(
    client: str, port: int, sessions: int, parallel: int, message: Path
) -> subprocess.Popen[bytes]:
    if client == "ehlo":
        argv = [sys.executable, __file__, "--ehlo-client", str(port)]
        argv += [
            "--sessions",
            str(sessions),
            "--parallel",
            str(parallel),
            "--message",
            str(message),
        ]
    else:
        argv = ["smtp-source", "-s", str(parallel), "-m", str(sessions), "-F", str(message)]
        argv += ["-f", SENDER, "-t", RECIPIENT, "-M", HELO, f"127.0.0.1:{port}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL)


def _ehlo_client(port: int, sessions: int, parallel: int, message: Path) -> None:
    """smtp-source's session with EHLO: one message per connection, each reply awaited."""
    body = message.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    body = body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    left = [sessions]
    lock = threading.Lock()

    def reply(file: Any) -> None:
        while True:
            line = file.readline()
            if not line.startswith((b"2", b"3")):
                raise SystemExit(f"unexpected reply {line!r}")
            if line[3:4] != b"-":
                return

    def run() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            with socket.create_connection(("127.0.0.1", port)) as sock:
                file = sock.makefile("rb")
                reply(file)
                for command in (f"EHLO {HELO}", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>"):
                    sock.sendall(command.encode() + b"\r\n")
                    reply(file)
                sock.sendall(b"DATA\r\n")
                reply(file)
                sock.sendall(body)
                reply(file)
                sock.sendall(b"QUIT\r\n")
                reply(file)

    threads = [threading.Thread(target=run) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def _run(args: argparse.Namespace, tls: ssl.SSLContext) -> list[float]:
    limits = LimitsSettings()
    receiver = await server.start(
        _handler(args.handler),
        [server.ListenerSpec("relay", "127.0.0.1", 0)],
        hostname="gateway.caisses.example",
        tls=tls,
        limits=session_limits(limits),
        sessions=Sessions(limits.max_connections, limits.max_connections_per_ip),
    )
    port = receiver.address("relay")[1]
    loop = asyncio.get_running_loop()
    results: list[float] = []
    try:
        # A warm-up run, then the measured ones.
        for count in [min(args.sessions, 400)] + [args.sessions] * args.repeat:
            profiler = cProfile.Profile() if args.profile and count == args.sessions else None
            started = time.process_time()
            times = os.times()
            if profiler is not None:
                profiler.enable()
            source = _source(args.client, port, count, args.parallel, args.message)
            await loop.run_in_executor(None, source.wait)
            if profiler is not None:
                profiler.disable()
            used = time.process_time() - started
            after = os.times()
            user, system = after.user - times.user, after.system - times.system
            if source.returncode != 0:
                raise SystemExit(f"smtp-source exit {source.returncode}")
            if count == args.sessions:
                results.append(used / count * 1e6)
                print(
                    f"{count} sessions: {results[-1]:.0f} us of server CPU per session "
                    f"(user {user / count * 1e6:.0f}, system {system / count * 1e6:.0f})"
                )
            if profiler is not None:
                profiler.dump_stats(args.profile)
                stats = pstats.Stats(profiler)
                stats.sort_stats("tottime").print_stats(25)
                args.profile = None  # one profiled run
    finally:
        await receiver.close(1.0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=4000)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--handler", choices=("real", "null"), default="real")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", help="write cProfile stats of one run to this file")
    parser.add_argument("--message", type=Path, default=MESSAGE)
    parser.add_argument("--client", choices=("smtp-source", "ehlo"), default="smtp-source")
    parser.add_argument("--ehlo-client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ehlo_client:
        _ehlo_client(args.ehlo_client, args.sessions, args.parallel, args.message)
        return
    # As a lane logs: every line formatted and written (here to /dev/null), aiosmtpd's own
    # chatter off.
    with open(os.devnull, "w") as sink:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sink,
        )
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory() as directory:
            tls = _tls(Path(directory))
            results = asyncio.run(_run(args, tls))
    results.sort()
    print(f"median {results[len(results) // 2]:.0f} us of server CPU per session")


if __name__ == "__main__":
    main()

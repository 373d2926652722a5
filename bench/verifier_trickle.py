"""Benchmark (not a test): a slow-request attack on a real `sealpost-verifier` (1 worker,
default timeouts) on 127.0.0.1, while normal verifications go on beside it.

    .venv/bin/python bench/verifier_trickle.py [--connections 200] [--rate 10] [--prefill 0]

Half the attacking connections trickle request headers (one byte a second, never ending
them); the other half send complete headers declaring a ~9.9 MB body, then `--prefill`
bytes of it at once, then trickle the rest one byte a second. Meanwhile a separate
thread verifies a real sealed statement through the API, one new connection each, at
`--rate` a second. Prints the server's RSS before / peak / after (from /proc, psutil not
assumed), how each kind of attacking connection was answered and cut (median / max),
and p50 / p99 of the normal verifications during the attack. Targets: RSS up by at most
50 MB, p99 under 1 s, every trickle cut within a minute. The rate limit is off (every
client here is 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verifier_api import free_port, process_tree, wait_ready  # noqa: E402

from tests.conftest import make_material  # noqa: E402
from tests.verifier.conftest import (  # noqa: E402
    KeyHistory,
    reference_message,
    seal,
    write_archive,
)

DECLARED = 9_900_000


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """`field` of /proc/PID/status summed over the server and any worker processes."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak = max(self.peak, rss_kib(self.pid))


@dataclass
class Cut:
    kind: str
    status: str  # the status line's code, or "none" when closed without an answer
    answered: float | None  # seconds from connecting to the first byte of the answer
    closed: float | None  # seconds from connecting to the close; None: still open


async def trickler(kind: str, port: int, prefill: int, limit: float) -> Cut:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    if kind == "headers":
        writer.write(b"POST /api/v1/verify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    else:
        writer.write(
            b"POST /api/v1/verify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: message/rfc822\r\nContent-Length: "
            + str(DECLARED).encode()
            + b"\r\n\r\n"
            + b"x" * prefill
        )

    async def feed() -> None:
        try:
            while True:
                await writer.drain()
                await asyncio.sleep(1)
                writer.write(b"a")
        except (ConnectionError, RuntimeError):
            return

    feeder = asyncio.create_task(feed())
    answer = b""
    answered: float | None = None
    closed: float | None = None
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                if answered is None:
                    answered = time.monotonic() - started
                answer += chunk[: 64 - len(answer)]
        closed = time.monotonic() - started
    except ConnectionError:
        closed = time.monotonic() - started
    except TimeoutError:
        pass
    finally:
        feeder.cancel()
        writer.close()
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "none"
    return Cut(kind, status, answered, closed)


async def attack(port: int, connections: int, prefill: int, limit: float) -> list[Cut]:
    kinds = ["headers" if i % 2 == 0 else "body" for i in range(connections)]
    return list(await asyncio.gather(*(trickler(k, port, prefill, limit) for k in kinds)))


class Verifications(threading.Thread):
    """Normal API verifications at a fixed rate (open loop), one connection each."""

    def __init__(self, port: int, email: bytes, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.email, self.rate = port, email, rate
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.stop = threading.Event()

    def one(self) -> None:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(
                "POST", "/api/v1/verify", self.email, {"Content-Type": "message/rfc822"}
            )
            response = connection.getresponse()
            body = response.read()
            ok = response.status == 200 and b'"verdict":"authentic"' in body
            self.statuses["200 authentic" if ok else str(response.status)] += 1
        except OSError as exc:
            self.statuses[type(exc).__name__] += 1
        finally:
            connection.close()
        self.latencies.append(time.perf_counter() - started)

    def run(self) -> None:
        period = 1 / self.rate
        due = time.monotonic()
        while not self.stop.is_set():
            self.one()
            due += period
            self.stop.wait(max(0.0, due - time.monotonic()))


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):5.1f} s, max {max(values):5.1f} s"


def report(cuts: list[Cut], limit: float) -> None:
    for kind in ("headers", "body"):
        mine = [c for c in cuts if c.kind == kind]
        statuses = Counter(c.status for c in mine)
        closed = [c.closed for c in mine if c.closed is not None]
        print(f"trickling {kind:<8} {len(mine)} connections, answers {dict(statuses)}")
        print(f"  closed               {len(closed)} of {len(mine)}, {spread(closed)}")
        for status in sorted(statuses):
            these = [c for c in mine if c.status == status]
            shown = [c.answered for c in these if c.answered is not None]
            gone = [c.closed for c in these if c.closed is not None]
            print(f"    {status:<4} answered       {spread(shown)}; closed {spread(gone)}")
    still = sum(c.closed is None for c in cuts)
    print(f"still open after {limit:.0f} s: {still}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10, help="normal verifications/s")
    parser.add_argument("--prefill", type=int, default=0, help="body bytes sent at once")
    parser.add_argument("--limit", type=float, default=90, help="longest wait for cuts, s")
    args = parser.parse_args()

    material = make_material()
    email = seal(reference_message(), material)
    with tempfile.TemporaryDirectory(prefix="sealpost-bench-") as tmp:
        archive = write_archive(Path(tmp) / "public", [(material, KeyHistory())])
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [
            sys.executable, "-m", "verifier", "--port", str(port), "--archive", str(archive),
            "--workers", "1", "--rate-limit", "0",
        ]  # fmt: skip
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            asyncio.run(wait_ready(f"http://127.0.0.1:{port}", time.monotonic() + 30))
            warm = Verifications(port, email, 1000)
            for _ in range(30):
                warm.one()
            time.sleep(1)
            before = rss_kib(server.pid)
            sampler = RssSampler(server.pid)
            sampler.start()
            normal = Verifications(port, email, args.rate)
            normal.start()
            started = time.monotonic()
            cuts = asyncio.run(attack(port, args.connections, args.prefill, args.limit))
            attack_seconds = time.monotonic() - started
            normal.stop.set()
            normal.join(timeout=40)
            sampler.stop.set()
            sampler.join(timeout=5)
            time.sleep(2)
            after = rss_kib(server.pid)
            hwm = rss_kib(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=10)
    latencies = sorted(normal.latencies)
    print(f"attack               {args.connections} connections, prefill {args.prefill} B, "
          f"{attack_seconds:.1f} s until the last was cut")  # fmt: skip
    report(cuts, args.limit)
    print(f"normal verifications {len(latencies)} at {args.rate:g}/s: {dict(normal.statuses)}")
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        p50, top = statistics.median(latencies), latencies[-1]
        print(f"  latency            p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
              f"max {top * 1000:.0f} ms")  # fmt: skip
    print(f"server RSS           before {before / 1024:.0f} MiB, peak {sampler.peak / 1024:.0f} "
          f"MiB (+{(sampler.peak - before) / 1024:.0f}), after {after / 1024:.0f} MiB, "
          f"VmHWM {hwm / 1024:.0f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark (not a test): API verifications of sealed statement emails against a real
`sealpost-verifier` (uvicorn, N worker processes) on 127.0.0.1.

    .venv/bin/python bench/verifier_api.py [--requests 2000] [--concurrency 16] [--workers 2]
        [--log-entries N] [--compare TREE --rounds 3]

With --log-entries N, the archive lists a statement log of N entries (the statement's own
among them, near the end), so each verification also finds its entry and proves it in
the checkpoint (no timestamp token: no TSA is started).

Prints verifications/s, p50/p99 latency, the server's peak RSS and the CPU time its
processes spent per verification (user + system, from /proc, the load tool excluded):
on a shared machine verifications/s are noise, CPU per verification much less so.
Target on a 2-core machine: 300 verifications/s with p99 under 150 ms.

With --compare TREE (another checkout of the repository, e.g. `git worktree add` or
`git archive main | tar -x -C /tmp/base`), each round serves the same email from this
tree and from TREE back to back, and prints the ratio of their CPU per verification.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.log_writer import LogConfig, LogWriter  # noqa: E402
from gateway.seal import DocumentRules  # noqa: E402
from gateway.seal import seal as gateway_seal  # noqa: E402
from gateway.spool import Envelope, Spool  # noqa: E402
from tests.conftest import make_material  # noqa: E402
from tests.verifier.conftest import (  # noqa: E402
    KeyHistory,
    reference_message,
    write_archive,
)
from tlog import note  # noqa: E402
from tlog.entry import Entry  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_tree(pid: int) -> list[int]:
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found.extend(process_tree(int(child)))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server and its worker processes so far."""
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) summed over the server and its worker processes."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


async def wait_ready(url: str, deadline: float) -> None:
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the verifier did not start")


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    """One HTTP/1.1 exchange on a kept-alive connection. A bare client, so that the load
    tool's own cost (httpx costs more CPU per request than the verifier) stays small on
    the two cores it shares with the server."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200 ") or b'"verdict":"authentic"' not in body:
        raise SystemExit(f"unexpected answer: {head.splitlines()[0]!r}")
    return body


async def load(port: int, email: bytes, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    remaining = iter(range(requests))
    request = (
        b"POST /api/v1/verify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: message/rfc822\r\nContent-Length: "
        + str(len(email)).encode()
        + b"\r\n\r\n"
        + email
    )

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in remaining:
                started = time.perf_counter()
                await _post(reader, writer, request)
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


LOG_ORIGIN = "caisses.example/statements/bench"


def add_log(archive: Path, own_entry: bytes, count: int) -> None:
    """A statement log of `count` entries beside the archive, written by the gateway's own
    writer, and listed in archive.json."""
    signer_text, verifier_text = note.generate_key(LOG_ORIGIN)
    directory = archive / "log" / "bench"
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    entries = [
        Entry(when, "caisses.example", "202601", "bh", (secrets.token_hex(32),), ()).encode()
        for _ in range(max(0, count - 1))
    ]
    entries.insert(max(0, len(entries) - 10), own_entry)

    async def write() -> None:
        spool = Spool.open(archive.parent / "spool")
        config = LogConfig(directory, note.Signer.from_text(signer_text), stamp_interval=0.0)
        writer = LogWriter(spool, config)
        for start in range(0, len(entries), 500):  # concurrent puts share one commit
            await asyncio.gather(
                *(
                    spool.put(Envelope("a@caisses.example", ["m@example.org"], b"x", log_entry=e))
                    for e in entries[start : start + 500]
                )
            )
        await writer.integrate()
        await writer.stop()
        await spool.close()

    asyncio.run(write())
    path = archive / "archive.json"
    document = json.loads(path.read_text())
    document["logs"] = [
        {"origin": LOG_ORIGIN, "key": verifier_text, "started_at": "2020-01-01T00:00:00Z",
         "path": "log/bench"}
    ]  # fmt: skip
    (archive / "archive.json.tmp").write_text(json.dumps(document))
    (archive / "archive.json.tmp").replace(path)


@dataclass(frozen=True)
class Result:
    latencies: list[float]
    elapsed: float
    cpu: float  # seconds, server processes
    client_cpu: float  # seconds, this process (the load)
    rss_kib: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    @property
    def cpu_ms(self) -> float:
        return self.cpu * 1000 / len(self.latencies)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000


def run_server(tree: Path, archive: Path, email: bytes, args: argparse.Namespace) -> Result:
    """Serves the verifier of `tree` and measures `args.requests` verifications."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [
        sys.executable, "-m", "verifier", "--port", str(port), "--archive", str(archive),
        "--workers", str(args.workers), "--rate-limit", "0",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        asyncio.run(wait_ready(url, time.monotonic() + 30))
        asyncio.run(load(port, email, min(50, args.requests), args.concurrency))  # warm-up
        cpu_before = cpu_seconds(server.pid)
        client_before = time.process_time()
        started = time.perf_counter()
        latencies = asyncio.run(load(port, email, args.requests, args.concurrency))
        elapsed = time.perf_counter() - started
        client = time.process_time() - client_before
        cpu = cpu_seconds(server.pid) - cpu_before
        rss = peak_rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return Result(latencies, elapsed, cpu, client, rss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-entries", type=int, default=0, help="a statement log this big")
    parser.add_argument("--compare", type=Path, help="another tree to serve, round by round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with --compare")
    args = parser.parse_args()

    material = make_material()
    sealed = gateway_seal(reference_message(), material, DocumentRules())
    email = sealed.data
    with tempfile.TemporaryDirectory(prefix="sealpost-bench-") as tmp:
        archive = write_archive(Path(tmp) / "public", [(material, KeyHistory())])
        if args.log_entries:
            add_log(archive, sealed.entry, args.log_entries)
        if args.compare is not None:
            return compare(args.compare.resolve(), archive, email, args)
        result = run_server(ROOT, archive, email, args)
    print(f"email size           {len(email) / 1024:.1f} KB")
    print(f"verifications        {len(result.latencies)} with {args.concurrency} clients")
    print(f"server workers       {args.workers}")
    print(f"statement log        {args.log_entries or 'none'} entries")
    print(f"verifications/s      {result.rate:.0f}")
    print(f"latency p50          {statistics.median(result.latencies) * 1000:.1f} ms")
    print(f"latency p99          {result.percentile(0.99):.1f} ms")
    print(f"server CPU           {result.cpu_ms:.2f} ms per verification")
    client_ms = result.client_cpu * 1000 / len(result.latencies)
    print(f"load tool CPU        {client_ms:.2f} ms per verification")
    print(f"peak RSS (server)    {result.rss_kib / 1024:.0f} MiB")
    return 0


def compare(base: Path, archive: Path, email: bytes, args: argparse.Namespace) -> int:
    """Rounds of (this tree, `base`) back to back: the ratio of CPU per verification is
    what a busy machine leaves comparable."""
    ratios = []
    print(f"this tree {ROOT} against {base}: {args.requests} verifications each")
    for number in range(1, args.rounds + 1):
        ours = run_server(ROOT, archive, email, args)
        theirs = run_server(base, archive, email, args)
        ratios.append(ours.cpu_ms / theirs.cpu_ms)
        print(
            f"round {number}: CPU {ours.cpu_ms:.2f} / {theirs.cpu_ms:.2f} ms per verification"
            f" = {ratios[-1]:.2f}; {ours.rate:.0f} / {theirs.rate:.0f} verifications/s;"
            f" p99 {ours.percentile(0.99):.0f} / {theirs.percentile(0.99):.0f} ms"
        )
    print(f"median CPU ratio (this tree / base): {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

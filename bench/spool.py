"""Spool put() throughput: N concurrent putters of ~28 KB messages, durable commits.

    .venv/bin/python bench/spool.py [--messages 3000] [--putters 20] [--size 28000]

Prints messages/s, p50/p99 put latency and the number of commits (fsyncs) used.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gateway.spool as spool_module
from gateway.spool import Envelope, Spool


async def run(messages: int, putters: int, size: int, path: Path) -> None:
    commits = 0
    real_commit = spool_module._commit

    def counting(conn, writes):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return real_commit(conn, writes)

    spool_module._commit = counting
    spool = Spool.open(path)
    latencies: list[float] = []
    body = b"Subject: bench\r\n\r\n" + b"z" * size
    left = messages

    async def putter() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            await spool.put(Envelope("s@caisses.example", ["a@insurer.example"], body, "bench"))
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(putter() for _ in range(putters)))
    elapsed = time.perf_counter() - start
    await spool.close()
    latencies.sort()
    print(
        f"{messages} puts of {len(body)} bytes, {putters} putters: "
        f"{messages / elapsed:.0f} msgs/s, p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
        f"{commits} commits ({messages / commits:.1f} messages per fsync)"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--putters", type=int, default=20)
    p.add_argument("--size", type=int, default=28000)
    p.add_argument("--dir", type=Path, default=None, help="spool directory (default: a temp dir)")
    args = p.parse_args()
    if args.dir is not None:
        asyncio.run(run(args.messages, args.putters, args.size, args.dir))
        return
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1]) as tmp:
        asyncio.run(run(args.messages, args.putters, args.size, Path(tmp)))


if __name__ == "__main__":
    main()

"""CPU per message of the scheduler's read of a due message, both ways the spool offers:
`due` + `load` + `next_due` (three calls to the spool's thread, the data read back from
SQLite and hashed again) against `load_due` (one call; a first attempt's bytes from
memory, later ones from disk), in batches of ``--batch``.

    .venv/bin/python bench/spool_reads.py [--messages 200] [--batch 1] [--held-bytes N]

``--held-bytes 0`` keeps nothing in memory: every read is from disk, as after a restart.

Each way reads the same kind of freshly put messages (the bench's 27 KB statement); the
figure is this process's CPU (every thread) per message read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.spool import HELD_BYTES, Envelope, Spool

MESSAGE = Path("/work/shared/bench/postfix-opendkim/message.eml")


def statement() -> bytes:
    raw = MESSAGE.read_bytes() if MESSAGE.exists() else b"Subject: s\n\n" + b"z" * 27_000
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def _fill(spool: Spool, count: int) -> None:
    data = statement()
    for _ in range(count):
        await spool.put(Envelope("s@caisses.example", ["a@insurer.example"], data, "bench"))


async def _by_three_calls(spool: Spool, count: int, batch: int) -> None:
    taken: list[str] = []
    while len(taken) < count:
        ids = await spool.due(time.time() + 1, batch, exclude=taken)
        for queue_id in ids:
            await spool.load(queue_id)
        taken += ids
        await spool.next_due(exclude=taken)


async def _by_load_due(spool: Spool, count: int, batch: int) -> None:
    taken: list[str] = []
    while len(taken) < count:
        due = await spool.load_due(time.time() + 1, batch, exclude=taken)
        taken += [m.id for m in due.messages] + due.unread


async def run(count: int, batch: int, held: int, directory: Path) -> None:
    for name, read in (("due+load+next_due", _by_three_calls), ("load_due", _by_load_due)):
        spool = Spool.open(directory / name, held_bytes=held)
        await _fill(spool, count)
        started = time.process_time()
        await read(spool, count, batch)
        cpu = time.process_time() - started
        await spool.close()
        print(
            f"{name:>18}: {cpu / count * 1e6:5.0f} us CPU per message"
            f" (batches of {batch}, {held} bytes held at most)"
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=200)  # 200 x 28 KB: all fit in memory
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--held-bytes", type=int, default=HELD_BYTES)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.messages, args.batch, args.held_bytes, Path(tmp)))


if __name__ == "__main__":
    main()

"""CPU per message of one lane's spool and scheduler, in-process: what the SMTP process
spends between the handler's put and the recorded delivery, without SMTP on either side.

    .venv/bin/python bench/spool_lane.py [--messages 2000] [--rate 185] [--profile FILE]

Puts the bench's statement (27 KB, CRLF) at ``--rate`` messages/s with its statement-log
entry, as the handler does with the log on (through the gateway's `_NotifyingSpool`); a
separate process plays the log writer (reads the entries, releases them every 0.25 s); the
lane's own watcher sees the release and wakes a real Scheduler, whose deliverer answers
250 after ``--delivery-ms``. Prints this process's CPU (user + system, every thread) per
message (its INFO log lines written to a file, as the gateway writes them). With
``--profile`` the run is under cProfile (slower; for the shape, not the
figure).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import multiprocessing
import multiprocessing.synchronize
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.__main__ import _NotifyingSpool
from gateway.delivery import Outcome
from gateway.mail_params import MailParams
from gateway.scheduler import Scheduler
from gateway.spool import Envelope, Spool

MESSAGE = Path("/work/shared/bench/postfix-opendkim/message.eml")
INTERVAL = 0.25


def statement() -> bytes:
    raw = MESSAGE.read_bytes() if MESSAGE.exists() else b"Subject: s\n\n" + b"z" * 27_000
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class Answers250:
    def __init__(self, delay: float) -> None:
        self._delay = delay
        self.delivered = 0

    async def deliver(
        self, sender: str, recipients: Sequence[str], data: bytes, params: MailParams
    ) -> list[Outcome]:
        await asyncio.sleep(self._delay)
        self.delivered += len(recipients)
        return [Outcome(r, "delivered", "250 2.0.0 ok", "relay.test") for r in recipients]


def _log_writer(path: Path, stop: multiprocessing.synchronize.Event) -> None:
    async def run() -> None:
        spool = Spool.open(path)
        size = await spool.log_size()
        while not stop.is_set():
            entries = await spool.log_entries(20_000)
            if entries:
                size += len(entries)
                await spool.log_published(entries[-1].seq, size)
            await asyncio.sleep(INTERVAL)
        await spool.close()

    asyncio.run(run())


async def _seal(raw: bytes, domain: str) -> bytes:
    return raw


async def run(
    path: Path, messages: int, rate: float, delivery_ms: float, profile: Path | None = None
) -> tuple[float, float]:
    spool = Spool.open(path)
    thread_profile = cProfile.Profile()
    if profile is not None:  # the spool's own thread, where SQLite runs
        spool._executor.submit(thread_profile.enable).result()
    deliverer = Answers250(delivery_ms / 1000)
    scheduler = Scheduler(spool, deliverer, _seal, reporting_mta="gw.test", poll_interval=5.0)
    front = _NotifyingSpool(spool, scheduler)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    writer = context.Process(target=_log_writer, args=(path, stop))
    writer.start()

    async def watch() -> None:  # what gateway.log_process.LogProcess does in the lane
        size = await spool.log_size()
        while True:
            await asyncio.sleep(INTERVAL)
            now = await spool.log_size()
            if now != size:
                size = now
                scheduler.notify()

    data = statement()
    scheduler.start()
    watcher = asyncio.get_running_loop().create_task(watch())
    puts: set[asyncio.Task[str]] = set()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for n in range(messages):
        due = started + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        envelope = Envelope(
            "decomptes@caisses.example", ["a@insurer.example"], data, "bench", log_entry=b"e" * 90
        )
        task = asyncio.get_running_loop().create_task(front.put(envelope))
        puts.add(task)
        task.add_done_callback(puts.discard)
    async with asyncio.timeout(120):
        while deliverer.delivered < messages or await spool.depth():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    after = resource.getrusage(resource.RUSAGE_SELF)
    watcher.cancel()
    if profile is not None:
        spool._executor.submit(thread_profile.disable).result()
        thread_profile.dump_stats(f"{profile}.spool-thread")
    await scheduler.stop()
    await spool.close()
    stop.set()
    writer.join(10)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return user / messages * 1e6, system / messages * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--rate", type=float, default=185.0)
    p.add_argument("--delivery-ms", type=float, default=2.0)
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1]) as tmp:
        # The gateway's log format, to a file: its INFO lines are part of the cost.
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            filename=Path(tmp) / "gateway.log",
        )
        work = run(Path(tmp), args.messages, args.rate, args.delivery_ms, args.profile)
        if args.profile is None:
            user, system = asyncio.run(work)
        else:
            profiler = cProfile.Profile()
            user, system = profiler.runcall(asyncio.run, work)
            profiler.dump_stats(args.profile)
    print(
        f"{args.messages} messages at {args.rate:.0f}/s: {user + system:.0f} us CPU per message"
        f" ({user:.0f} user, {system:.0f} system)"
    )


if __name__ == "__main__":
    main()

"""The statement log's writer, in a process of its own.

The SMTP process is the gateway's busiest: every millisecond spent there on tiles,
hashes, signatures and fsyncs is a millisecond less for mail. So that process only
commits each entry with its message; this child reads the spool (SQLite in WAL mode takes
a second process), writes the log and releases the messages, and the SMTP process learns
of a release by the log size the spool records (one small read per interval).

The child stops when asked (it publishes what waits and keeps the last checkpoint first)
and when the gateway dies, even by SIGKILL: it watches its parent. A child that dies is
started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.log_writer import LogConfig, LogWriter
from gateway.spool import Spool
from tlog import note

log = logging.getLogger("sealpost.log")

# How often the child checks that its parent lives, and that it was not asked to stop.
_WATCH = 0.2
# How long the child may take to publish what waits, keep its checkpoint and exit.
_STOP_WAIT = 30.0


@dataclass(frozen=True)
class LogProcessConfig:
    """What the child needs, in plain values (keys are not picklable objects)."""

    spool_path: Path
    directory: Path
    signer_key: str
    interval: float
    stamp_interval: float
    tsa_url: str
    tsa_timeout: float
    tsa_roots: tuple[bytes, ...]
    log_level: int = logging.INFO


def _child(config: LogProcessConfig, parent: int, stop: multiprocessing.synchronize.Event) -> None:
    # Ctrl-C and SIGTERM are the parent's to handle: it sets `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_serve(config, parent, stop))


async def _serve(
    config: LogProcessConfig, parent: int, stop: multiprocessing.synchronize.Event
) -> None:
    spool = Spool.open(config.spool_path)
    writer = LogWriter(
        spool,
        LogConfig(
            directory=config.directory,
            signer=note.Signer.from_text(config.signer_key),
            interval=config.interval,
            stamp_interval=config.stamp_interval,
            tsa_url=config.tsa_url,
            tsa_timeout=config.tsa_timeout,
            tsa_roots=config.tsa_roots,
        ),
    )
    writer.start()
    try:
        await _until_told_or_orphaned(stop, parent)
    finally:
        await writer.stop()
        await spool.close()


async def _until_told_or_orphaned(stop: multiprocessing.synchronize.Event, parent: int) -> None:
    # A multiprocessing Event cannot be awaited, and a parent's death signals nothing.
    while not stop.is_set() and os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(_WATCH)


class LogProcess:
    """Runs the writer in a child process and tells the scheduler when messages are
    released (the spool's log size moved)."""

    def __init__(
        self, config: LogProcessConfig, spool: Spool, on_released: Callable[[], None]
    ) -> None:
        self._config = config
        self._spool = spool
        self._on_released = on_released
        # spawn: the child starts clean, without the gateway's threads, sockets and loop.
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._run(), name="sealpost-log")

    def _spawn(self) -> None:
        process = self._context.Process(
            target=_child,
            args=(self._config, os.getpid(), self._stop),
            name="sealpost-log-writer",
            daemon=False,
        )
        process.start()
        self._process = process

    async def _run(self) -> None:
        size = await self._spool.log_size()
        while True:
            await asyncio.sleep(self._config.interval)
            with contextlib.suppress(Exception):  # a busy spool: the next look will do
                now = await self._spool.log_size()
                if now != size:
                    size = now
                    self._on_released()
            process = self._process
            if process is not None and not process.is_alive():
                log.error("event=log_writer_exited code=%s: starting it again", process.exitcode)
                self._spawn()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait([self._watch])
            self._watch = None
        process = self._process
        if process is None:
            return
        self._stop.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, process.join, _STOP_WAIT)
        if process.is_alive():
            process.terminate()
            await loop.run_in_executor(None, process.join, 5.0)

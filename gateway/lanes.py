"""Lanes: several SMTP processes on the same listening ports (SO_REUSEPORT), the way
Postfix runs several smtpd. The kernel spreads connections over them; each lane seals,
spools (into a shard of its own) and delivers its own mail, with nothing shared but the
key store. One event loop on one core cannot seal at the peer's rate; one per core can.

Each lane is, to everything outside, a node of its own: its spool shard
`<spool.path>/lane-N`, its statement log (key `<log.key>` with `-laneN` before the
suffix), its metrics on `metrics.listen`'s port + N. The parent prepares what lanes must
not race for (the key store on first start, the self-signed TLS pair, the lanes' log keys),
starts them, starts again one that dies, and on SIGTERM stops them all gracefully. A lane
whose parent dies stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gateway.settings import Settings, parse_listen

log = logging.getLogger("sealpost.gateway")

# A lane that dies sooner than this after its start will not do better the next time (a
# port in use, a broken store): give up rather than loop.
_EARLY_EXIT = 5.0


def lane_settings(settings: Settings, lane: int) -> Settings:
    """The settings one lane runs with."""
    spool = replace(settings.spool, path=str(Path(settings.spool.path) / f"lane-{lane}"))
    metrics = settings.metrics
    if metrics.listen:
        host, port = parse_listen(metrics.listen)
        shown = f"[{host}]" if ":" in host else host
        metrics = replace(metrics, listen=f"{shown}:{port + lane}")
    statement_log = settings.log
    if statement_log.key:
        key = Path(statement_log.key)
        statement_log = replace(
            statement_log, key=str(key.with_name(f"{key.stem}-lane{lane}{key.suffix}"))
        )
    return replace(settings, spool=spool, metrics=metrics, log=statement_log)


def spool_paths(settings: Settings) -> list[Path]:
    """Every spool shard of this node, for the queue tool."""
    if settings.gateway.lanes <= 1:
        return [Path(settings.spool.path)]
    return [Path(lane_settings(settings, i).spool.path) for i in range(settings.gateway.lanes)]


async def supervise(command: Sequence[str], lanes: int, grace: float) -> int:
    """Runs `command + ["--lane", N]` for each lane until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running: dict[int, tuple[asyncio.subprocess.Process, float]] = {}

    async def start(lane: int) -> None:
        process = await asyncio.create_subprocess_exec(
            *command, "--lane", str(lane), "--parent", str(os.getpid())
        )
        running[lane] = (process, time.monotonic())

    for lane in range(lanes):
        await start(lane)
    log.info("event=lanes_started lanes=%d", lanes)
    failed = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await stop.wait()
        for lane, (process, started) in list(running.items()):
            if process.returncode is None or stop.is_set():
                continue
            if time.monotonic() - started < _EARLY_EXIT:
                log.error("event=lane_failed lane=%d code=%s", lane, process.returncode)
                failed = True
                stop.set()
                break
            log.error(
                "event=lane_exited lane=%d code=%s: starting it again", lane, process.returncode
            )
            await start(lane)
    await _stop_all([p for p, _ in running.values()], grace)
    log.info("event=stopped")
    return 1 if failed else 0


async def _stop_all(processes: list[asyncio.subprocess.Process], grace: float) -> None:
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            async with asyncio.timeout(grace + 10):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

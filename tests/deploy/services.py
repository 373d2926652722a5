"""Sealpost's programs as real processes for the deployment tests: an environment free of
the caller's SEALPOST_* settings, a bounded wait for the listening port, and the
process's output kept in a log file the test can read."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).parents[2]


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any SEALPOST_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALPOST_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Poll ``check`` until it holds; fails after ``within`` seconds. Polling, because what
    is awaited lives in another process (a health state, a metric, a spool)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - no event crosses a process boundary
            await asyncio.sleep(0.1)


async def wait_for_port(port: int, within: float, alive: Service | None = None) -> None:
    """Until something accepts connections on 127.0.0.1:port; fails after ``within``."""
    async with asyncio.timeout(within):
        while True:
            if alive is not None:
                alive.check_alive()
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.1)


class Service:
    """One long-running program; each start appends to ``<name>.log`` in ``workdir``."""

    def __init__(
        self, name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = dict(env)
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, port: int, within: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        await wait_for_port(port, within, self)

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crash or a power cut."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            async with asyncio.timeout(10):
                await self.process.wait()

    async def stop(self, within: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within ``within`` seconds."""
        if not self.running:
            return None if self.process is None else self.process.returncode
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(within):
                return await self.process.wait()
        except TimeoutError:
            await self.kill()
            return self.process.returncode

"""Several verifier processes on one port, each with its own socket: all serve, all stop
with their parent, even when it is killed."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support import alive, child_pids
from tests.verifier.conftest import run_verifier, wait_until_up
from verifier.workers import free_port


def _start(archive_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port("127.0.0.1")
    process = run_verifier(
        "--port", str(port), "--archive", str(archive_dir), "--workers", "2", "--rate-limit", "0"
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_up(process, url + "/healthz")
    return process, url


def _wait_gone(pids: list[int], within: float) -> None:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers still running: {pids}"
        time.sleep(0.2)


def test_each_worker_listens_and_all_stop_on_sigterm(archive_dir: Path) -> None:
    process, url = _start(archive_dir)
    try:
        workers = child_pids(process.pid)
        assert len(workers) >= 2
        for _ in range(20):
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
    _wait_gone(workers, 10)


def test_workers_stop_when_their_parent_is_killed(archive_dir: Path) -> None:
    process, _ = _start(archive_dir)
    workers = child_pids(process.pid)
    assert len(workers) >= 2
    process.kill()
    process.wait(timeout=10)
    _wait_gone(workers, 15)

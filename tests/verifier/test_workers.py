"""Several verifier processes on one port, each with its own socket: all serve, all stop
with their parent, even when it is killed."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import alive, child_pids
from tests.verifier.conftest import run_verifier, wait_until_up
from verifier import workers
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


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_workers_connections_send_without_waiting_for_acks(host: str) -> None:
    """Nagle's algorithm off (TCP_NODELAY) on every connection a worker's socket accepts,
    as asyncio serves it for uvicorn: an answer's head and body go out at once, not the
    body after the client's delayed ACK (40 ms a request)."""
    sock = workers.listening_socket(host, 0)
    port = sock.getsockname()[1]

    async def accepted_nodelay() -> int:
        found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Peek(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                conn = transport.get_extra_info("socket")
                found.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Peek, sock=sock)
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return await asyncio.wait_for(found, 10)
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0

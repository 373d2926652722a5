"""Several verifier processes, each on its own listening socket for the same port
(SO_REUSEPORT), so that the kernel spreads connections over them.

uvicorn's own workers share one socket, and asyncio accepts a whole burst of connections
in whichever process wakes first: under 16 kept-alive clients one worker served nearly
all of them (101% of a core against 3%). With one socket per process, each connection is
placed by the kernel and every core works.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

import uvicorn

log = logging.getLogger("verifier")

# A worker that dies sooner than this after its start will not do better next time.
_EARLY_EXIT = 5.0


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # connections whose socket says so, and an accepted socket copies the listener's
    # `proto`, which is 0 when left out. With Nagle on, uvicorn's two writes per answer
    # (head, then body) waited for the client's delayed ACK: 40 ms per request, which
    # capped 16 clients at 300 verifications/s with the CPU a third idle.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def free_port(host: str) -> int:
    with contextlib.closing(listening_socket(host, 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


def _worker(host: str, port: int, options: dict[str, Any], parent: int) -> None:
    sock = listening_socket(host, port)
    config = uvicorn.Config("verifier.app:app_from_env", factory=True, **options)
    server = uvicorn.Server(config)

    def orphaned() -> None:  # a worker whose parent died (even by SIGKILL) stops
        while os.getppid() == parent and not server.should_exit:
            time.sleep(1.0)
        server.should_exit = True

    threading.Thread(target=orphaned, name="verifier-parent-watch", daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])


def serve(host: str, port: int, workers: int, options: dict[str, Any]) -> int:
    """Runs `workers` uvicorn processes on (host, port) until SIGTERM or SIGINT."""
    if port == 0:
        port = free_port(host)
    context = multiprocessing.get_context("spawn")
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running: dict[int, tuple[multiprocessing.process.BaseProcess, float]] = {}

    def start(index: int) -> None:
        process = context.Process(
            target=_worker, args=(host, port, options, os.getpid()), name=f"verifier-{index}"
        )
        process.start()
        running[index] = (process, time.monotonic())

    for index in range(workers):
        start(index)
    log.info("verifier workers=%d listening on %s:%d", workers, host, port)
    failed = False
    while not stop:
        time.sleep(0.5)
        for index, (process, started) in list(running.items()):
            if process.is_alive() or stop:
                continue
            if time.monotonic() - started < _EARLY_EXIT:
                failed = stop = True
                break
            start(index)
    for process, _ in running.values():
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process, _ in running.values():
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    return 1 if failed else 0

"""Sealing off the event loop: a pool of worker processes, each with its own keys.

Sealing is CPU work (about 2.5 ms a statement, most of it hashing and OpenSSL), so one
process cannot both serve SMTP and seal at the rate the gateway must sustain. Workers are
separate processes, not threads, so they use the other cores. Private keys do not pickle,
so each worker opens the key store itself; `SigningKeys` notices a rotation on disk, so
workers follow it without a restart.

Whatever goes wrong reaches the caller as SealError: UnsealableMessage when the message
itself is at fault (a document that does not decode), which the SMTP layer refuses with
550 5.6.0 saying why; anything else (no active key for the domain, a worker that died)
is answered 451 4.3.0: the client keeps the message and retries, nothing is sent unsealed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from gateway.seal import DocumentRules, Sealed, SealError, seal
from keys.signing import NoActiveKey, SigningKeys

log = logging.getLogger(__name__)

# The state of one worker process, set by its initializer.
_worker: tuple[SigningKeys, DocumentRules] | None = None


class Sealer:
    """Seals in `workers` processes, or inline when `workers` is 0 (tests, small
    deployments: the event loop then waits about 2 ms per statement)."""

    def __init__(self, store_dir: Path, rules: DocumentRules, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 (inline) or more, not {workers}")
        self._store_dir = store_dir
        self._rules = rules
        self._workers = workers
        self._keys = SigningKeys(store_dir) if workers == 0 else None
        self._pool = self._new_pool() if workers else None

    async def seal(self, raw: bytes, domain: str) -> Sealed:
        if self._keys is not None:
            return _seal(self._keys, self._rules, raw, domain)
        pool = self._pool
        if pool is None:
            raise SealError("the gateway is shutting down; try again later")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, _seal_in_worker, raw, domain)
        except BrokenProcessPool:
            # A worker died (killed, out of memory). The pool cannot be used again, so
            # start a new one; this message is retried by its sender.
            log.error("a sealing worker died; starting a new pool")
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            raise SealError("the sealing worker stopped unexpectedly; try again later") from None

    def worker_pids(self) -> tuple[int, ...]:
        """Process ids of the live workers, for metrics and operations."""
        processes = getattr(self._pool, "_processes", None) or {}
        return tuple(sorted(processes))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _new_pool(self) -> ProcessPoolExecutor:
        # forkserver: workers do not inherit the gateway's threads, sockets and event loop
        # (forking a threaded process can copy a held lock into the child). Like spawn, it
        # re-imports the program's main module in each worker, so the entry point keeps
        # its `if __name__ == "__main__":` guard.
        method = (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        pool = ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(self._store_dir, self._rules, os.getpid()),
        )
        # Start every worker now rather than on the first messages.
        for _ in range(self._workers):
            pool.submit(_ready)
        return pool


def _seal(keys: SigningKeys, rules: DocumentRules, raw: bytes, domain: str) -> Sealed:
    try:
        return seal(raw, keys.material(domain), rules)
    except NoActiveKey as error:
        raise SealError(f"no signing key for {domain}: {error}") from error
    except SealError:
        raise
    except Exception as error:
        # Not every exception survives the trip back from a worker (some do not pickle);
        # its text does. The traceback stays in this process's log.
        log.exception("sealing failed unexpectedly")
        raise SealError(f"sealing failed: {type(error).__name__}: {error}") from None


def _init_worker(store_dir: Path, rules: DocumentRules, gateway_pid: int) -> None:
    global _worker
    # Ctrl-C and stop signals are the parent's to handle; it shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = (SigningKeys(store_dir), rules)
    threading.Thread(target=_exit_with, args=(gateway_pid,), daemon=True).start()


def _exit_with(gateway_pid: int) -> None:
    """End this worker once the gateway is gone. After a SIGKILL nothing else would: the
    worker waits on its task queue forever, and since it holds the forkserver's liveness
    pipe, the forkserver stays too (about 55 MB left behind per worker and restart)."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(gateway_pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # the pid now belongs to another user's process
            os._exit(0)


def _ready() -> None:
    """Nothing: submitted once per worker to start it."""


def _seal_in_worker(raw: bytes, domain: str) -> Sealed:
    if _worker is None:
        raise RuntimeError("_seal_in_worker runs only in a process started by Sealer")
    keys, rules = _worker
    return _seal(keys, rules, raw, domain)

"""Benchmark (not a test): what a request costs in the state the verifier's workers share
(verifier/shared.py), in this process, on one connection to a fresh runtime directory.

    .venv/bin/python bench/verifier_shared.py [--requests 10000] [--tree TREE]

Prints, per request, the CPU time and the wall time (what the event loop waits) of its
metrics (an upload begun, a verification, the upload ended) and of one quota's `take()`.
--tree measures another checkout (e.g. `git archive main | tar -x -C /tmp/base`), one
after the other on the same machine. Contention between workers is not here: see
bench/README.md for what it costs under bench/verifier_api.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def per_request(work: Callable[[int], None], requests: int) -> tuple[float, float]:
    """Microseconds of CPU and of wall clock per call of `work`."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(requests):
        work(i)
    return (
        (time.process_time() - cpu) * 1e6 / requests,
        (time.perf_counter() - wall) * 1e6 / requests,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--tree", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from verifier.metrics import Metrics
    from verifier.ratelimit import RateLimiter
    from verifier.shared import SharedState, prepare

    with tempfile.TemporaryDirectory(prefix="sealpost-bench-") as tmp:
        database, _ = prepare(Path(tmp) / "run")
        metrics = Metrics(SharedState(database))

        def request_metrics(i: int) -> None:
            metrics.upload(+1)
            metrics.verification("authentic", None, 0.004)
            metrics.upload(-1)

        limiter = RateLimiter(SharedState(database), 10**9)

        def take(i: int) -> None:
            limiter.take(f"ip:10.0.{i % 50}.1")

        measured = per_request(request_metrics, args.requests)
        close = getattr(metrics, "close", None)
        if close is not None:
            close()
        taken = per_request(take, args.requests)
    print(f"tree                 {args.tree.resolve()}")
    print(f"metrics of a request {measured[0]:.1f} us CPU, {measured[1]:.1f} us wall")
    print(f"quota take()         {taken[0]:.1f} us CPU, {taken[1]:.1f} us wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())

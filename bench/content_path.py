"""Micro-benchmark: the CPU of one message's content path in a gateway lane.

    .venv/bin/python bench/content_path.py [--message FILE] [--rounds N]

From the moment DATA is complete to the sealed bytes handed to the spool, as
`Handler.handle_DATA` runs it with inline sealing (workers 0): the policy checks on the
content, then `Sealer.seal` (MIME walk, CMS `.p7s`, both DKIM signatures, the
statement-log entry). Prints microseconds per message for the whole path and for each
piece, in CPU time. Figures on a shared machine swing: compare the best of a few runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from gateway import policy
from gateway.seal import DocumentRules, seal
from gateway.sealer import Sealer
from keys import store
from keys.signing import SigningKeys

REFERENCE = Path(__file__).resolve().parents[2] / "shared/bench/postfix-opendkim/message.eml"
DOMAIN = "caisses.example"
MAX_LINE = 998


def checks(raw: bytes) -> str | policy.Rejection:
    """The content checks, in handle_DATA's order."""
    return (
        policy.check_lines(raw, MAX_LINE)
        or policy.check_forbidden_bytes(raw)
        or policy.check_header_lines(raw)
        or policy.check_repeated_fields(raw)
        or policy.header_from_domain(raw)
    )


def best_us(run: Callable[[], object], rounds: int, repeat: int = 5) -> float:
    """The best of `repeat` means over `rounds` calls, in microseconds of this process's
    CPU time (the machine is shared: wall time counts the other processes too)."""
    run()
    times = timeit.repeat(run, number=rounds, repeat=repeat, timer=time.process_time)
    return min(times) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--message", type=Path, default=REFERENCE)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    message = args.message.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with tempfile.TemporaryDirectory() as base:
        store.init_domain(Path(base) / "store", Path(base) / "public", DOMAIN)
        sealer = Sealer(Path(base) / "store", DocumentRules(), workers=0)
        material = SigningKeys(Path(base) / "store").material(DOMAIN)
        rules = DocumentRules()

        def content_path() -> None:
            domain = checks(message)
            assert isinstance(domain, str)
            # Inline sealing never awaits: stepping the coroutine once runs it whole,
            # without timing an event loop's own overhead.
            step = sealer.seal(message, domain)
            try:
                step.send(None)
            except StopIteration:
                return
            raise AssertionError("inline sealing awaited something")

        rounds = args.rounds
        pieces: dict[str, Callable[[], object]] = {
            "check_lines": lambda: policy.check_lines(message, MAX_LINE),
            "check_forbidden_bytes": lambda: policy.check_forbidden_bytes(message),
            "check_header_lines": lambda: policy.check_header_lines(message),
            "check_repeated_fields": lambda: policy.check_repeated_fields(message),
            "header_from_domain": lambda: policy.header_from_domain(message),
            "all checks": lambda: checks(message),
            "seal (gateway.seal.seal)": lambda: seal(message, material, rules),
        }
        for name, run in pieces.items():
            print(f"{name:28} {best_us(run, rounds if 'seal' in name else rounds * 20):9.1f} us")
        totals = [best_us(content_path, rounds, repeat=1) for _ in range(5)]
        print(
            f"{'content path (whole)':28} {min(totals):9.1f} us"
            f"  (median {statistics.median(totals):.1f})"
        )


if __name__ == "__main__":
    main()

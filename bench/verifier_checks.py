"""Benchmark (not a test): the CPU one verification's checks take, stage by stage, in one
thread of this process (no HTTP, no threads, no other process to share the cores with).

    .venv/bin/python bench/verifier_checks.py [--verifications 1000] [--tree TREE]

--tree serves the checks of another checkout (e.g. `git archive main | tar -x -C
/tmp/base`), so two trees can be compared one after the other on the same email. Each
stage's figure includes the stages listed under it; timing them costs a little too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# (module[:class], attribute, label): the functions timed, where their callers look them up.
STAGES = [
    ("verifier.intake", "parse", "intake.parse (MIME tree, header block)"),
    ("verifier.mime", "read", "  mime.read"),
    ("verifier.verify", "check_dkim", "check_dkim (both signatures)"),
    ("dkim", "rfc822_parse", "  dkimpy's message split"),
    ("dkim:DKIM", "verify", "  dkimpy's verify, signature by signature"),
    ("verifier.verify", "_documents", "_documents (pairing and CMS)"),
    ("verifier.verify", "check_document", "  check_document"),
    ("verifier.verify", "_log", "_log (statement log)"),
    ("verifier.intake", "describe", "describe"),
    ("verifier.serialize", "report_json", "report_json"),
]


def _timed(spent: dict[str, float], label: str, function: Callable[..., Any]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - started

    return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verifications", type=int, default=1000)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose checks run")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))

    import importlib

    from gateway.seal import DocumentRules, seal
    from tests.conftest import make_material
    from tests.verifier.conftest import KeyHistory, reference_message, write_archive
    from verifier import i18n, serialize, verify
    from verifier.settings import Limits
    from verifier.trust import TrustSource

    spent: dict[str, float] = {}
    for where, name, label in STAGES:
        module, _, cls = where.partition(":")
        owner: Any = importlib.import_module(module)
        if cls:
            owner = getattr(owner, cls)
        setattr(owner, name, _timed(spent, label, getattr(owner, name)))

    material = make_material()
    email = seal(reference_message(), material, DocumentRules()).data
    with tempfile.TemporaryDirectory(prefix="sealpost-bench-") as tmp:
        archive = write_archive(Path(tmp) / "public", [(material, KeyHistory())])
        source, limits, translate = TrustSource(archive), Limits(), i18n.translator("fr")

        def one() -> None:
            report = verify.verify_email(email, source.get(), limits)
            serialize.report_json(report, translate, "fr")

        for _ in range(min(100, args.verifications)):
            one()
        spent.clear()
        started = time.process_time()
        for _ in range(args.verifications):
            one()
        total = time.process_time() - started
    per = 1000 / args.verifications
    print(f"tree                 {args.tree.resolve()}")
    print(f"checks               {total * per:.3f} ms CPU per verification (one thread)")
    for _, _, label in STAGES:
        print(f"  {spent.get(label, 0.0) * per:7.3f} ms  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

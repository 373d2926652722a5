"""`sealpost-log`: check the statement log's proofs offline, for insurers and operators.

    sealpost-log report REPORT.json --archive archive.json
        the log section of a verifier's JSON report: its checkpoint is signed by a log the
        archive lists, and its entry is included in it (RFC 9162)
    sealpost-log inclusion --key KEY --checkpoint FILE --entry FILE --index N [HASH ...]
    sealpost-log consistency --key KEY --old FILE --new FILE [HASH ...]
        the two proofs, from their parts (hashes in base64, as the report carries them)
    sealpost-log audit DIRECTORY --key KEY
        a whole log as published: every checkpoint kept is signed, and consistent with the
        next, and the latest one covers the tiles

KEY is a C2SP signed-note verifier key (the "key" of a log in the public archive).
Exit codes: 0 verified, 1 not verified (the reason is printed), 2 usage or unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tlog import merkle, note
from tlog.tiles import TileStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Failed(Exception):
    """The proof does not hold; the message says which part."""


def _checkpoint(data: bytes, key: str) -> note.Checkpoint:
    try:
        opened = note.open_note(data, [note.Verifier.from_text(key)])
    except note.NoteError as exc:
        raise Failed(f"the checkpoint is not signed by {key.split('+')[0]}: {exc}") from exc
    return note.Checkpoint.parse(opened.text)


def _hashes(values: Sequence[str]) -> list[bytes]:
    try:
        return [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"a proof hash is not base64: {exc}") from exc


def check_inclusion(
    key: str, checkpoint: bytes, entry: bytes, index: int, proof: list[bytes]
) -> str:
    tree = _checkpoint(checkpoint, key)
    if not merkle.verify_inclusion(merkle.leaf_hash(entry), index, tree.size, proof, tree.root):
        raise Failed(f"entry {index} is not included in the checkpoint of size {tree.size}")
    return f"entry {index} is included in {tree.origin} at size {tree.size}"


def check_consistency(key: str, old: bytes, new: bytes, proof: list[bytes]) -> str:
    first, second = _checkpoint(old, key), _checkpoint(new, key)
    if first.origin != second.origin:
        raise Failed("the checkpoints are of two different logs")
    if first.size == 0 or (first.size == second.size and first.root == second.root):
        return f"size {first.size} is consistent with size {second.size}"
    if not merkle.verify_consistency(first.size, second.size, first.root, second.root, proof):
        raise Failed(f"size {first.size} is not consistent with size {second.size}")
    return f"size {first.size} is consistent with size {second.size} ({first.origin})"


def check_report(report: dict[str, object], archive: dict[str, object]) -> str:
    log = report.get("log")
    if not isinstance(log, dict) or log.get("status") != "logged":
        raise Failed("the report names no log entry")
    logs = archive.get("logs")
    keys = {g["origin"]: g["key"] for g in logs} if isinstance(logs, list) else {}
    origin = log.get("origin")
    if origin not in keys:
        raise Failed(f"the archive lists no log {origin!r}")
    return check_inclusion(
        str(keys[origin]),
        str(log["checkpoint"]).encode("utf-8"),
        str(log["entry"]).encode("ascii"),
        int(str(log["index"])),
        _hashes([str(h) for h in log["inclusion_proof"]]),
    )


def audit(directory: Path, key: str) -> str:
    history = directory / "checkpoints"
    sizes = sorted(int(p.name) for p in history.iterdir() if p.name.isdigit())
    if not sizes:
        raise Failed(f"no checkpoint in {history}")
    trees = [_checkpoint((history / str(size)).read_bytes(), key) for size in sizes]
    for size, tree in zip(sizes, trees, strict=True):
        if tree.size != size:
            raise Failed(f"checkpoints/{size} holds a checkpoint of size {tree.size}")
    tiles = TileStore(directory)
    for old, new in itertools.pairwise(trees):
        proof = tiles.consistency_proof(old.size, new.size) if old.size else []
        if old.size and not merkle.verify_consistency(
            old.size, new.size, old.root, new.root, proof
        ):
            raise Failed(f"size {old.size} is not consistent with size {new.size}")
    latest = _checkpoint((directory / "checkpoint").read_bytes(), key)
    if latest != trees[-1] or tiles.root(latest.size) != latest.root:
        raise Failed("the latest checkpoint does not match the tiles")
    return f"{len(trees)} checkpoints, each consistent with the next; {latest.size} entries"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealpost-log",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="exit codes: 0 verified, 1 not verified, 2 usage or unreadable input",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="the log section of a verifier's JSON report")
    report.add_argument("report", type=Path)
    report.add_argument("--archive", type=Path, required=True, help="the public archive.json")
    inclusion = commands.add_parser("inclusion", help="an RFC 9162 inclusion proof")
    inclusion.add_argument("--key", required=True)
    inclusion.add_argument("--checkpoint", type=Path, required=True)
    inclusion.add_argument("--entry", type=Path, required=True)
    inclusion.add_argument("--index", type=int, required=True)
    inclusion.add_argument("hashes", nargs="*", metavar="HASH")
    consistency = commands.add_parser("consistency", help="an RFC 9162 consistency proof")
    consistency.add_argument("--key", required=True)
    consistency.add_argument("--old", type=Path, required=True)
    consistency.add_argument("--new", type=Path, required=True)
    consistency.add_argument("hashes", nargs="*", metavar="HASH")
    audit_cmd = commands.add_parser("audit", help="a published log directory, whole")
    audit_cmd.add_argument("directory", type=Path)
    audit_cmd.add_argument("--key", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            result = check_report(
                json.loads(args.report.read_text(encoding="utf-8")),
                json.loads(args.archive.read_text(encoding="utf-8")),
            )
        elif args.command == "inclusion":
            result = check_inclusion(
                args.key,
                args.checkpoint.read_bytes(),
                args.entry.read_bytes(),
                args.index,
                _hashes(args.hashes),
            )
        elif args.command == "consistency":
            result = check_consistency(
                args.key, args.old.read_bytes(), args.new.read_bytes(), _hashes(args.hashes)
            )
        else:
            result = audit(args.directory, args.key)
    except Failed as exc:
        print(f"NOT VERIFIED: {exc}")
        return EXIT_FAILED
    except (OSError, ValueError, KeyError, TypeError, note.NoteError) as exc:
        print(f"sealpost-log: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"verified: {result}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

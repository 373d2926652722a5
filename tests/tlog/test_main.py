"""`sealpost-log`: the proofs an insurer or an operator checks offline."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tlog import note
from tlog.__main__ import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from tlog.tiles import TileStore

ORIGIN = "test.example/statements/gw1"


@pytest.fixture
def log(tmp_path: Path) -> tuple[Path, str, TileStore]:
    signer_text, verifier_text = note.generate_key(ORIGIN)
    signer = note.Signer.from_text(signer_text)
    directory = tmp_path / "log"
    tiles = TileStore(directory)
    history = directory / "checkpoints"
    history.mkdir(parents=True)
    for batch in (
        [b"a\n", b"b\n", b"c\n"],
        [b"d%d\n" % i for i in range(5)],
        [b"e%d\n" % i for i in range(300)],
    ):
        size = tiles.append(batch)
        signed = note.sign_note(note.Checkpoint(ORIGIN, size, tiles.root(size)).format(), [signer])
        (history / str(size)).write_bytes(signed)
        (directory / "checkpoint").write_bytes(signed)
    return directory, verifier_text, tiles


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def test_an_inclusion_proof_verifies_and_a_wrong_index_does_not(
    log: tuple[Path, str, TileStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, key, tiles = log
    entry = tmp_path / "entry"
    entry.write_bytes(tiles.entry(4))
    proof = _b64(tiles.inclusion_proof(4, 8))
    args = ["inclusion", "--key", key, "--checkpoint", str(directory / "checkpoints" / "8")]
    assert main([*args, "--entry", str(entry), "--index", "4", *proof]) == EXIT_OK
    assert "included" in capsys.readouterr().out
    assert main([*args, "--entry", str(entry), "--index", "5", *proof]) == EXIT_FAILED
    other_key = note.generate_key(ORIGIN)[1]
    wrong = ["inclusion", "--key", other_key, "--checkpoint", str(directory / "checkpoint")]
    assert main([*wrong, "--entry", str(entry), "--index", "4", *proof]) == EXIT_FAILED


def test_a_consistency_proof_verifies_between_two_checkpoints(
    log: tuple[Path, str, TileStore],
) -> None:
    directory, key, tiles = log
    history = directory / "checkpoints"
    args = ["consistency", "--key", key, "--old", str(history / "3"), "--new", str(history / "8")]
    assert main([*args, *_b64(tiles.consistency_proof(3, 8))]) == EXIT_OK
    assert main([*args, *_b64(tiles.consistency_proof(3, 308))]) == EXIT_FAILED
    assert main([*args, "not base64!"]) == EXIT_USAGE


def test_an_audit_checks_every_checkpoint_kept(
    log: tuple[Path, str, TileStore], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, key, _ = log
    assert main(["audit", str(directory), "--key", key]) == EXIT_OK
    assert "3 checkpoints" in capsys.readouterr().out
    # A checkpoint that does not extend the earlier ones: a forked log.
    signer_text = None
    history = directory / "checkpoints"
    forked = TileStore(directory.parent / "fork")
    size = forked.append([b"x\n"] * 8)
    signer_text, fork_key = note.generate_key(ORIGIN)
    assert fork_key != key
    (history / "8").write_bytes(
        note.sign_note(
            note.Checkpoint(ORIGIN, size, forked.root(size)).format(),
            [note.Signer.from_text(signer_text)],
        )
    )
    assert main(["audit", str(directory), "--key", key]) == EXIT_FAILED

"""The runtime directory where one verifier's workers share their state."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from verifier.shared import DATABASE, RuntimeDirError, SharedState, prepare

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_starts_from_an_empty_private_state(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    database, lock = prepare(directory)
    SharedState(database).execute("INSERT INTO hits (bucket, at) VALUES ('ip:192.0.2.1', 1.0)")
    os.close(lock)
    database, lock = prepare(directory)  # the next run
    try:
        assert SharedState(database).read("SELECT count(*) FROM hits") == [(0,)]
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    finally:
        os.close(lock)


def test_a_second_verifier_cannot_take_a_directory_in_use(tmp_path: Path) -> None:
    _, lock = prepare(tmp_path / "run")
    try:
        with pytest.raises(RuntimeDirError, match="in use by another verifier"):
            prepare(tmp_path / "run")
    finally:
        os.close(lock)


def test_the_command_says_so_and_exits_2(tmp_path: Path, archive_dir: Path) -> None:
    _, lock = prepare(tmp_path / "run")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "verifier", "--port", "0", "--archive", str(archive_dir),
             "--runtime-dir", str(tmp_path / "run"), "--metrics-listen", ""],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
    finally:
        os.close(lock)
    assert result.returncode == 2
    assert "in use by another verifier" in result.stderr
    assert (tmp_path / "run" / DATABASE).exists()


def test_an_unusable_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RuntimeDirError, match="runtime directory"):
        prepare(blocker / "run")

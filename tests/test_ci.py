"""What CI promises: `make test` cannot go green while a part of the suite silently did not
run. The browser tests skip on a developer's machine without Chromium, and fail in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSER_TESTS = "tests/verifier/test_browser.py"


def _run_browser_tests(ci: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["SEALPOST_TEST_CHROMIUM"] = str(tmp_path / "no-chromium-here")
    if ci:
        env["CI"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", BROWSER_TESTS]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_without_chromium_the_browser_tests_fail_in_ci(tmp_path: Path) -> None:
    result = _run_browser_tests(ci=True, tmp_path=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "chromium is not installed" in result.stdout
    assert "the browser tests cannot run" in result.stdout


def test_without_chromium_the_browser_tests_skip_elsewhere(tmp_path: Path) -> None:
    result = _run_browser_tests(ci=False, tmp_path=tmp_path)
    # Alone, the skipped module leaves nothing collected (exit 5); in the suite, nothing failed.
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout
    assert "1 skipped" in result.stdout


def test_the_ci_script_runs_make_test_as_ci() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert "make test" in commands
    exported = [i for i, line in enumerate(commands) if line.startswith("export CI=")]
    assert exported
    assert exported[0] < commands.index("make test")


@pytest.mark.parametrize(
    "script", [".ci/run", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("scripts/*.sh"))]
)
def test_every_shell_script_parses(script: str) -> None:
    """`bash -n`: a broken quote in a comment once made .ci/run fail before its first line."""
    result = subprocess.run(
        ["bash", "-n", script], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr

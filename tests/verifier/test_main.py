"""`sealpost-verifier` as ops start it: a real process, a real port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from verifier.__main__ import parse_args
from verifier.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_no_arguments_means_the_embedded_defaults() -> None:
    settings = parse_args([], Settings())
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.archive_dir == Path("var/public")


def test_the_command_serves_the_archive_it_is_given(archive_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "verifier", "--port", str(port), "--archive", str(archive_dir)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the verifier did not start"
                assert process.poll() is None, "the verifier exited"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_missing_archive_is_named_on_the_first_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "verifier", "--port", str(port), "--archive", str(tmp_path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        first = process.stderr.readline().decode()
    finally:
        process.kill()
        process.wait(timeout=10)
    assert "warning: no public archive at" in first
    assert str(tmp_path / "archive.json") in first

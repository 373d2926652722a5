"""The access log names each request's path and language, never the rest of its query:
a token or anything else a client puts in a URL stays out of the log."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.verifier.conftest import run_verifier, wait_until_up
from verifier.access_log import redact_path
from verifier.workers import free_port

TOKEN = "spt_" + "S3cr3tT0kenValue" * 3


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/", "/"),
        ("/?lang=fr", "/?lang=fr"),
        ("/verify?lang=en", "/verify?lang=en"),
        (f"/api/v1/verify?access_token={TOKEN}", "/api/v1/verify?[1 redacted]"),
        (f"/?lang=fr&access_token={TOKEN}", "/?lang=fr&[1 redacted]"),
        ("/?lang=<script>", "/?[1 redacted]"),
        (f"/?{TOKEN}", "/?[1 redacted]"),
        ("/?", "/"),
    ],
)
def test_only_the_language_of_a_query_is_logged(path: str, logged: str) -> None:
    assert redact_path(path) == logged


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_token_in_a_url_never_reaches_the_log(archive_dir: Path, workers: str) -> None:
    port = free_port("127.0.0.1")
    process = run_verifier(
        "--port", str(port), "--archive", str(archive_dir), "--workers", workers,
        stderr=subprocess.STDOUT, stdout=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, url + "/healthz")
        answer = httpx.post(
            f"{url}/api/v1/verify?access_token={TOKEN}",
            content=b"From: a@b.example\r\n\r\nx\r\n",
            headers={"Content-Type": "message/rfc822"},
            timeout=10,
        )
        assert answer.status_code == 401
        assert httpx.get(f"{url}/?lang=en&t={TOKEN}", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=40)
    log = out.decode("utf-8", "replace")  # uvicorn's access log goes to stdout
    assert "/api/v1/verify?[1 redacted]" in log  # the request is logged, its query is not
    assert "/?lang=en&[1 redacted]" in log
    assert TOKEN not in log
    assert "S3cr3t" not in log

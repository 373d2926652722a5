"""The verifier's metrics: Prometheus text of the host's totals, whatever process counted
them, served on their own port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.verifier.conftest import make_settings, run_verifier, serve, wait_until_up
from verifier import metrics as metrics_module
from verifier.app import create_app
from verifier.endpoints import HttpError
from verifier.metrics import REJECTION_REASONS, UPLOADS, Metrics, render
from verifier.metrics import serve as serve_metrics
from verifier.shared import SharedState, prepare
from verifier.workers import free_port


def values(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = value
    return found


def test_every_process_adds_to_the_same_totals(tmp_path: Path) -> None:
    database, _ = prepare(tmp_path / "run")
    first, second = Metrics(SharedState(database)), Metrics(SharedState(database))
    first.verification("authentic", "MUTAZUR", 0.004)
    second.verification("authentic", "MUTAZUR", 0.2)
    second.verification("tampered", None, 30.0)
    first.rejection("rate_limited")
    second.rejection("rate_limited")
    first.flush()
    second.flush()
    text = render(SharedState(database))
    found = values(text)
    assert found['sealpost_verifier_verifications_total{org="MUTAZUR",verdict="authentic"}'] == "2"
    assert found['sealpost_verifier_verifications_total{org="anonymous",verdict="tampered"}'] == "1"
    assert found['sealpost_verifier_rejections_total{reason="rate_limited"}'] == "2"
    # Cumulative buckets, as Prometheus reads them.
    assert found['sealpost_verifier_verification_seconds_bucket{le="0.005"}'] == "1"
    assert found['sealpost_verifier_verification_seconds_bucket{le="0.25"}'] == "2"
    assert found['sealpost_verifier_verification_seconds_bucket{le="10.0"}'] == "2"
    assert found['sealpost_verifier_verification_seconds_bucket{le="+Inf"}'] == "3"
    assert found["sealpost_verifier_verification_seconds_count"] == "3"
    assert float(found["sealpost_verifier_verification_seconds_sum"]) == 30.204
    assert "# TYPE sealpost_verifier_verification_seconds histogram" in text
    assert "# TYPE sealpost_verifier_uploads_in_progress gauge" in text


def test_a_worker_counts_in_memory_and_adds_them_to_the_host_when_it_flushes(
    tmp_path: Path,
) -> None:
    database, _ = prepare(tmp_path / "run")
    scraper = SharedState(database)
    metrics = Metrics(SharedState(database), interval=3600)
    metrics.verification("authentic", None, 0.004)
    metrics.upload(+1)
    before = values(render(scraper))
    assert before["sealpost_verifier_verification_seconds_count"] == "0"
    assert before[UPLOADS] == "0"
    metrics.flush()
    metrics.verification("authentic", None, 0.004)
    metrics.flush()
    metrics.flush()  # nothing new: nothing added twice
    after = values(render(scraper))
    assert (
        after['sealpost_verifier_verifications_total{org="anonymous",verdict="authentic"}'] == "2"
    )
    assert after["sealpost_verifier_verification_seconds_count"] == "2"
    assert after[UPLOADS] == "1"
    metrics.upload(-1)
    metrics.close()  # a worker stopping: its last counts are written
    assert values(render(scraper))[UPLOADS] == "0"


def test_the_flusher_writes_on_its_own_every_interval(tmp_path: Path) -> None:
    database, _ = prepare(tmp_path / "run")
    scraper = SharedState(database)
    metrics = Metrics(SharedState(database), interval=0.05)
    metrics.rejection("busy")
    deadline = time.monotonic() + 10
    while values(render(scraper)).get('sealpost_verifier_rejections_total{reason="busy"}') != "1":
        assert time.monotonic() < deadline, "never flushed"
        time.sleep(0.02)
    metrics.close()


def test_counts_that_could_not_be_written_wait_for_the_next_flush(tmp_path: Path) -> None:
    database, _ = prepare(tmp_path / "run")
    scraper = SharedState(database)
    metrics = Metrics(SharedState(database), interval=3600)
    metrics.rejection("timeout")
    scraper.execute("DROP TABLE counters")
    metrics.flush()  # fails: logged, kept
    scraper.execute(
        "CREATE TABLE counters (name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL,"
        " PRIMARY KEY (name, labels))"
    )
    metrics.rejection("timeout")
    metrics.flush()
    assert values(render(scraper))['sealpost_verifier_rejections_total{reason="timeout"}'] == "2"


def test_many_series_are_written_in_parts_and_all_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "_SERIES_PER_WRITE", 2)
    database, _ = prepare(tmp_path / "run")
    metrics = Metrics(SharedState(database), interval=3600)
    for reason in REJECTION_REASONS:
        metrics.rejection(reason)
    metrics.flush()
    found = values(render(SharedState(database)))
    for reason in REJECTION_REASONS:
        assert found[f'sealpost_verifier_rejections_total{{reason="{reason}"}}'] == "1"


def test_an_empty_host_still_describes_every_metric() -> None:
    found = values(render(SharedState.in_memory()))
    assert found["sealpost_verifier_uploads_in_progress"] == "0"
    assert found["sealpost_verifier_verification_seconds_count"] == "0"


def test_uploads_of_a_worker_that_died_no_longer_count(tmp_path: Path) -> None:
    state = SharedState.in_memory()
    metrics = Metrics(state)
    metrics.upload(+1)
    metrics.flush()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    state.execute(
        "INSERT INTO gauges (name, pid, value) VALUES (?, ?, 3)", (UPLOADS, int(dead.stdout))
    )
    assert values(render(state))[UPLOADS] == "1"


def test_an_upload_in_progress_is_counted_until_it_ends(tmp_path: Path, archive_dir: Path) -> None:
    database, _ = prepare(tmp_path / "run")
    scraper = SharedState(database)  # the launcher's own connection
    app = create_app(make_settings(archive_dir, runtime_dir=str(tmp_path / "run")))

    def uploads() -> str:
        return values(render(scraper))[UPLOADS]

    def wait_for(expected: str) -> None:
        deadline = time.monotonic() + 10
        while uploads() != expected:
            assert time.monotonic() < deadline, f"uploads in progress stayed {uploads()}"
            time.sleep(0.05)

    with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                b"POST /api/v1/verify HTTP/1.1\r\nHost: v\r\nContent-Type: message/rfc822\r\n"
                b"Content-Length: 1000\r\n\r\nFrom: a"
            )
            wait_for("1")
        wait_for("0")


def test_the_endpoint_answers_get_metrics_only() -> None:
    state = SharedState.in_memory()
    metrics = Metrics(state)
    metrics.rejection("too_large")
    metrics.flush()
    port = free_port("127.0.0.1")
    server = serve_metrics(state, "127.0.0.1", port)
    try:
        base = f"http://127.0.0.1:{port}"
        response = httpx.get(base + "/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert 'sealpost_verifier_rejections_total{reason="too_large"} 1' in response.text
        assert httpx.get(base + "/", timeout=5).status_code == 404
        assert httpx.post(base + "/metrics", timeout=5).status_code == 405
    finally:
        server.shutdown()
        server.server_close()


def test_the_launcher_serves_metrics_and_survives_a_taken_port(archive_dir: Path) -> None:
    """A metrics port in use is reported; verification goes on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        port = free_port("127.0.0.1")
        process = run_verifier(
            "--port", str(port), "--archive", str(archive_dir),
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stderr is not None
            lines = [process.stderr.readline().decode() for _ in range(2)]
            assert any(f"no metrics on 127.0.0.1:{metrics_port}" in line for line in lines)
            wait_until_up(process, f"http://127.0.0.1:{port}/healthz")
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_every_rejection_reason_is_explained_in_the_docs() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    verifier_docs = docs[docs.index("## Verifier") :]
    for reason in REJECTION_REASONS:
        assert f"`{reason}`" in verifier_docs, reason
    errors = [
        HttpError(400, "error_bad_request", detail="x"),
        HttpError(400, "error_bad_request", detail="disconnected"),
        HttpError(408, "error_body_timeout"),
        HttpError(413, "error_too_many_emails"),
        HttpError(415, "error_bad_request"),
        HttpError(429, "error_rate_limited"),
        HttpError(429, "error_batch_over_quota"),
        HttpError(503, "error_busy"),
        HttpError(503, "error_log_unavailable"),
    ]
    assert {e.code for e in errors} <= set(REJECTION_REASONS)

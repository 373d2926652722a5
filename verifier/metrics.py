"""The verifier's Prometheus metrics, for the whole host: every worker process adds to
counters in the shared state, and a scrape reads their sums there.

Labels carry only what we chose: a verdict code, an organisation's code, a rejection
reason. Nothing from an upload (its sender, subject, file name) is ever a label.
"""

from __future__ import annotations

import http.server
import logging
import math
import os
import socket
import sqlite3
import threading
import weakref
from collections.abc import Iterable

from verifier.shared import SharedState

log = logging.getLogger("verifier")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A verification takes a few milliseconds; the upper buckets catch a queue behind the
# check slots, a huge message or a starved host.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ANONYMOUS = "anonymous"  # never an organisation code, which is upper case

# Why a verification request got no report; docs/metrics.md explains each.
REJECTION_REASONS = (
    "rate_limited",
    "batch_over_quota",
    "unauthorized",
    "too_large",
    "too_many_emails",
    "timeout",
    "busy",
    "bad_request",
    "unsupported_media_type",
    "disconnected",
    "unavailable",
    "log_unavailable",
)

VERIFICATIONS = "sealpost_verifier_verifications_total"
REJECTIONS = "sealpost_verifier_rejections_total"
LATENCY = "sealpost_verifier_verification_seconds"
UPLOADS = "sealpost_verifier_uploads_in_progress"

_HELP = {
    VERIFICATIONS: ("counter", "Verifications answered with a report, by verdict and org."),
    REJECTIONS: ("counter", "Verification requests refused, by reason."),
    LATENCY: ("histogram", "Time to verify one email, waiting for a check slot included."),
    UPLOADS: ("gauge", "Uploads being received or verified, on every worker of the host."),
}


# How long a worker keeps its counts before adding them to the host's totals: one write a
# second per worker instead of three per request (each a turn at the lock the workers share,
# on the event loop). A scrape (every 15 s or more) sees the host at most this much late.
FLUSH_INTERVAL = 1.0
# Three parameters a series, well within SQLite's 32,766 per statement.
_SERIES_PER_WRITE = 1000


class Metrics:
    """What one worker process records: kept in memory, written to the shared state by a
    thread of its own every `interval` seconds and at `close()`. A failure to write is
    logged, never a request's failure, and the counts wait for the next flush."""

    def __init__(self, state: SharedState, interval: float = FLUSH_INTERVAL) -> None:
        self._state = state
        self._pid = os.getpid()
        self._interval = interval
        self._lock = threading.Lock()  # the event loop adds, the flusher takes
        self._pending: dict[tuple[str, str], float] = {}
        self._uploads = 0
        self._uploads_written: int | None = None
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    def verification(self, verdict: str, org: str | None, seconds: float) -> None:
        labels = _labels(verdict=verdict, org=org or ANONYMOUS)
        bucket = next((b for b in LATENCY_BUCKETS if seconds <= b), math.inf)
        with self._lock:
            self._add(VERIFICATIONS, labels, 1)
            self._add(f"{LATENCY}_bucket", _labels(le=_number(bucket)), 1)
            self._add(f"{LATENCY}_sum", "", seconds)
            self._add(f"{LATENCY}_count", "", 1)
        self._start()

    def rejection(self, reason: str) -> None:
        with self._lock:
            self._add(REJECTIONS, _labels(reason=reason), 1)
        self._start()

    def upload(self, delta: int) -> None:
        with self._lock:
            self._uploads += delta
        self._start()

    def flush(self) -> None:
        """Adds what this process counted since the last flush to the host's totals."""
        with self._lock:
            pending, self._pending = self._pending, {}
            uploads = self._uploads
        try:
            # The gauge first: a scrape that sees these counts sees the uploads that made them end.
            if uploads != self._uploads_written:
                self._state.execute(
                    "INSERT INTO gauges (name, pid, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (name, pid) DO UPDATE SET value = excluded.value",
                    (UPLOADS, self._pid, uploads),
                )
                self._uploads_written = uploads
            # One statement (for up to _SERIES_PER_WRITE series, far more than a second
            # brings): the histogram's buckets, sum and count change together.
            series = list(pending.items())
            for start in range(0, len(series), _SERIES_PER_WRITE):
                chunk = series[start : start + _SERIES_PER_WRITE]
                rows = ", ".join(["(?, ?, ?)"] * len(chunk))
                self._state.execute(
                    f"INSERT INTO counters (name, labels, value) VALUES {rows} "  # noqa: S608 - placeholders only
                    "ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
                    [v for (name, labels), amount in chunk for v in (name, labels, amount)],
                )
                for key, _ in chunk:  # written: not to be added again after a failure
                    del pending[key]
        except sqlite3.Error as exc:
            log.warning("metrics not recorded yet: %s", exc)
            with self._lock:
                for key, amount in pending.items():
                    self._pending[key] = self._pending.get(key, 0) + amount

    def close(self) -> None:
        """The last flush (a worker stopping); the flusher thread ends."""
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self.flush()

    def _add(self, name: str, labels: str, amount: float) -> None:
        key = (name, labels)
        self._pending[key] = self._pending.get(key, 0) + amount

    def _start(self) -> None:
        if self._flusher is None and not self._closed.is_set():
            with self._lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=_flush_every,
                        args=(weakref.ref(self), self._interval, self._closed),
                        name="verifier-metrics-flush",
                        daemon=True,
                    )
                    self._flusher.start()


def _flush_every(metrics: weakref.ref[Metrics], interval: float, closed: threading.Event) -> None:
    """Holds the Metrics weakly: an app that is dropped (in tests) takes its thread along."""
    while not closed.wait(interval):
        found = metrics()
        if found is None:
            return
        found.flush()
        del found


def _labels(**pairs: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def _value(value: object) -> str:
    assert isinstance(value, int | float)
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(state: SharedState) -> str:
    """The host's metrics in the Prometheus text format."""
    counters: dict[str, dict[str, object]] = {}
    for name, labels, value in state.read("SELECT name, labels, value FROM counters"):
        assert isinstance(name, str)
        assert isinstance(labels, str)
        counters.setdefault(name, {})[labels] = value
    lines: list[str] = []
    for name in (VERIFICATIONS, REJECTIONS):
        lines += _head(name)
        series = sorted(counters.get(name, {}).items())
        lines += [f"{name}{{{labels}}} {_value(value)}" for labels, value in series]
    lines += _head(LATENCY)
    lines += _histogram(counters)
    lines += _head(UPLOADS)
    lines.append(f"{UPLOADS} {_uploads(state)}")
    return "\n".join(lines) + "\n"


def _head(name: str) -> list[str]:
    kind, text = _HELP[name]
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def _histogram(counters: dict[str, dict[str, object]]) -> Iterable[str]:
    buckets = counters.get(f"{LATENCY}_bucket", {})
    total = 0.0
    for bound in (*LATENCY_BUCKETS, math.inf):
        le = _number(bound)
        count = buckets.get(_labels(le=le), 0)
        assert isinstance(count, int | float)
        total += count
        yield f'{LATENCY}_bucket{{le="{le}"}} {_value(total)}'
    yield f"{LATENCY}_sum {_value(counters.get(f'{LATENCY}_sum', {}).get('', 0.0))}"
    yield f"{LATENCY}_count {_value(counters.get(f'{LATENCY}_count', {}).get('', 0))}"


def _uploads(state: SharedState) -> int:
    """The sum over live workers: a worker that died mid-upload leaves a row that no
    longer counts (its replacement has another pid)."""
    total = 0
    for pid, value in state.read("SELECT pid, value FROM gauges WHERE name = ?", (UPLOADS,)):
        assert isinstance(pid, int)
        assert isinstance(value, int | float)
        if _alive(pid):
            total += int(value)
    return total


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "sealpost-verifier-metrics"
    sys_version = ""
    timeout = 5.0
    server: _MetricsServer

    def do_GET(self) -> None:
        if self.path.partition("?")[0] != "/metrics":
            self._answer(404, b"not found; try /metrics\n")
            return
        try:
            body = render(self.server.state).encode("utf-8")
        except sqlite3.Error as exc:
            log.error("metrics: the shared state cannot be read: %s", exc)
            self._answer(500, b"metrics unavailable\n")
            return
        self._answer(200, body)

    def do_POST(self) -> None:
        self._answer(405, b"GET only\n")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds would drown the access log


class _MetricsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: SharedState, address: tuple[str, int]) -> None:
        self.state = state
        super().__init__(address, _Handler)


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


def serve(state: SharedState, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """Answers `GET /metrics` from a thread (of the launcher); 404 elsewhere, 405 for
    other methods. Runs until `shutdown()`."""
    kind = _MetricsServer6 if ":" in host else _MetricsServer
    server = kind(state, (host, port))
    threading.Thread(target=server.serve_forever, name="verifier-metrics", daemon=True).start()
    return server

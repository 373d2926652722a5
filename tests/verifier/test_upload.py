"""Uploads are bounded in time as in size (mod_reqtimeout's header= and body=,MinRate=), and
in the memory all uploads in progress share: real uvicorn with the production options on
127.0.0.1, real sockets sending bytes slowly, short configured timeouts."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.verifier.conftest import make_settings, serve
from verifier.__main__ import server_options
from verifier.app import create_app
from verifier.protocol import HeaderDeadlineProtocol
from verifier.settings import FORM_OVERHEAD, Limits, SettingsError, from_env
from verifier.upload import MemoryBudget, Pace, reservation

pytestmark = pytest.mark.usefixtures("no_network")

ROOT = Path(__file__).resolve().parents[2]
# Header deadline 1 s, body must start within 1 s, then at least 1000 bytes/s.
FAST = Limits(header_timeout_seconds=1, body_timeout_seconds=1, body_min_rate=1000)
# How late past a deadline a cut may come on a busy shared machine.
MARGIN = 1.5


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it
    at: float  # seconds from the start of the exchange to the first byte of the answer


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def connect(url: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Reads HTTP/1.1 responses off one connection, keeping what arrives past each."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> bytes:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return chunk

    def answer(self, started: float, timeout: float = 10, check_close: bool = True) -> Answer:
        """The next response; then (with `check_close`) whether the server closed the
        connection after it, waiting up to 2 s for that."""
        self.sock.settimeout(timeout)
        at = 0.0
        while b"\r\n\r\n" not in self.buffer:
            chunk = self._more()
            at = at or time.monotonic() - started
            assert chunk, f"closed without an answer after {time.monotonic() - started:.1f}s"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        at = at or time.monotonic() - started
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._more(), "closed in the middle of the answer"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        closed = False
        if check_close:
            self.sock.settimeout(2)
            try:
                closed = not self.buffer and self._more() == b""
            except TimeoutError:
                closed = False
        return Answer(int(lines[0].split()[1]), headers, body, closed, at)


def read_answer(sock: socket.socket, started: float, timeout: float = 10) -> Answer:
    return Reader(sock).answer(started, timeout)


def trickle(sock: socket.socket, data: bytes, step: int, pause: float, limit: float) -> float:
    """Sends `data` `step` bytes at a time, `pause` seconds apart, until it is all sent,
    the server answers or closes, or `limit` seconds pass; returns when it started."""
    started = time.monotonic()
    for offset in range(0, len(data), step):
        if time.monotonic() - started > limit:
            break
        if select.select([sock], [], [], 0)[0]:  # an answer, or the close, is there
            break
        try:
            sock.sendall(data[offset : offset + step])
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(pause)
    return started


def post_head(path: str, length: int, content_type: str = "message/rfc822") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def form_body(raw: bytes, boundary: str = "sealpost-test-boundary") -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="statement.eml"\r\nContent-Type: message/rfc822\r\n\r\n'
        ).encode()
        + raw
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def fast_server(archive_dir: Path) -> Iterator[str]:
    with serve(create_app(make_settings(archive_dir, limits=FAST))) as url:
        yield url


# --- request headers ---------------------------------------------------------------------


def test_a_connection_that_sends_nothing_gets_408_and_is_closed(fast_server: str) -> None:
    with connect(fast_server) as sock:
        answer = read_answer(sock, time.monotonic())
    assert answer.status == 408
    assert answer.closed
    assert 0.8 < answer.at < 1 + MARGIN
    assert b"Request headers not received in time" in answer.body


def test_trickled_headers_are_cut_within_the_deadline(fast_server: str) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    with connect(fast_server) as sock:
        started = trickle(sock, head, step=1, pause=0.05, limit=1 + MARGIN + 1)
        answer = read_answer(sock, started)
    assert answer.status == 408
    assert answer.closed
    assert 0.8 < answer.at < 1 + MARGIN


def test_each_kept_alive_request_has_its_own_header_deadline(fast_server: str) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connect(fast_server) as sock:
        reader = Reader(sock)
        for _ in range(3):  # well-behaved requests on one connection are not affected
            sock.sendall(request)
            assert reader.answer(time.monotonic(), check_close=False).status == 200
        # The next one trickles: each byte would restart uvicorn's keep-alive timer.
        started = trickle(sock, request[:-2] + b"X-Slow: " + b"a" * 100 + b"\r\n\r\n", 1, 0.05, 4)
        answer = reader.answer(started)
    assert answer.status == 408
    assert answer.closed
    assert 0.8 < answer.at < 1 + MARGIN


def test_pipelined_requests_are_served_and_the_idle_connection_then_cut(
    fast_server: str,
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connect(fast_server) as sock:
        reader = Reader(sock)
        started = time.monotonic()
        sock.sendall(request * 3)
        for _ in range(3):
            assert reader.answer(started, check_close=False).status == 200
        answer = reader.answer(started)
    assert answer.status == 408
    assert answer.closed
    assert 0.8 < answer.at < 1 + MARGIN


# --- the body ----------------------------------------------------------------------------


def test_a_body_that_does_not_start_gets_408(fast_server: str) -> None:
    with connect(fast_server) as sock:
        started = time.monotonic()
        sock.sendall(post_head("/api/v1/verify", 30_000))
        answer = read_answer(sock, started)
    assert answer.status == 408
    assert answer.closed
    assert 0.8 < answer.at < 1 + MARGIN
    assert json.loads(answer.body)["error"] == "timeout"


def test_a_trickled_body_gets_a_readable_408(fast_server: str, sealed: bytes) -> None:
    with connect(fast_server) as sock:
        sock.sendall(post_head("/api/v1/verify?lang=en", len(sealed)))
        # 10 bytes every 0.05 s is 200 bytes/s: the deadline is 1 s + 1 ms per byte.
        started = trickle(sock, sealed, step=10, pause=0.05, limit=4)
        answer = read_answer(sock, started)
    assert answer.status == 408
    assert answer.closed
    assert answer.at < 1.3 + MARGIN
    error = json.loads(answer.body)
    assert error["error"] == "timeout"
    assert "too slowly" in error["message"]
    assert "1000 bytes per second" in error["message"]


def test_a_body_sent_fast_then_held_gets_408(fast_server: str) -> None:
    # 20 KB at once earn 21 s at 1000 bytes/s; a pause is still bounded by 1 s.
    with connect(fast_server) as sock:
        sock.sendall(post_head("/api/v1/verify", 30_000) + b"x" * 20_000)
        answer = read_answer(sock, time.monotonic())
    assert answer.status == 408
    assert answer.at < 1 + MARGIN


def test_a_trickled_form_gets_the_408_page(fast_server: str, sealed: bytes) -> None:
    body, content_type = form_body(sealed)
    with connect(fast_server) as sock:
        sock.sendall(post_head("/verify", len(body), content_type))
        started = trickle(sock, body, step=10, pause=0.05, limit=4)
        answer = read_answer(sock, started)
    assert answer.status == 408
    assert answer.headers["content-type"].startswith("text/html")
    page = answer.body.decode()
    assert "arrivé trop lentement" in page  # French first
    assert sealed[:40].decode() not in page  # not a byte of the upload


def test_a_steady_upload_just_above_the_min_rate_passes(archive_dir: Path, sealed: bytes) -> None:
    # A 30 KB statement at 1000 bytes/s would take half a minute; the rule is the same
    # at 20,000 bytes/s, and the upload goes at 22,000 (1.1 times the minimum).
    limits = dataclasses.replace(FAST, body_min_rate=20_000)
    with serve(create_app(make_settings(archive_dir, limits=limits))) as url, connect(url) as sock:
        sock.sendall(post_head("/api/v1/verify", len(sealed)))
        started = trickle(sock, sealed, step=1100, pause=0.05, limit=10)
        answer = read_answer(sock, started)
        took = time.monotonic() - started
    assert answer.status == 200, answer.body[:200]
    assert json.loads(answer.body)["verdict"] == "authentic"
    assert took > len(sealed) / 22_000 * 0.8  # it really was that slow


# --- the memory budget -------------------------------------------------------------------

SMALL = 100_000  # largest upload in the budget tests: the budget holds one and a half


@pytest.fixture
def budget_server(archive_dir: Path) -> Iterator[str]:
    limits = dataclasses.replace(
        FAST,
        max_upload_bytes=SMALL,
        upload_memory_bytes=SMALL + FORM_OVERHEAD,
        body_timeout_seconds=3,  # the upload holding the budget waits for the test
    )
    with serve(create_app(make_settings(archive_dir, limits=limits))) as url:
        yield url


def hold_budget(url: str) -> socket.socket:
    """A connection in the middle of uploading SMALL bytes: it holds SMALL of the budget."""
    sock = connect(url)
    sock.sendall(post_head("/api/v1/verify", SMALL) + b"x" * 1000)
    time.sleep(0.3)  # the server has read the headers and reserved
    return sock


def exchange(url: str, request: bytes) -> Answer:
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(request)
        return Reader(sock).answer(started, check_close=False)


@pytest.mark.parametrize("path", ["/api/v1/verify", "/verify"])
def test_an_upload_over_the_memory_budget_gets_503_and_retry_after(
    budget_server: str, path: str, sealed: bytes
) -> None:
    holder = hold_budget(budget_server)
    try:
        started = time.monotonic()
        # Declares SMALL bytes, sends none: the answer comes before the body is read.
        with connect(budget_server) as sock:
            sock.sendall(post_head(path + "?lang=en", SMALL, "multipart/form-data; boundary=b"))
            answer = read_answer(sock, started)
        assert answer.status == 503
        assert answer.headers["retry-after"].isdigit()
        assert answer.at < 1
        if path.startswith("/api/"):
            assert json.loads(answer.body)["error"] == "busy"
        assert b"too many files" in answer.body
        # A statement (30 KB) still fits beside the upload in progress.
        small = exchange(budget_server, post_head("/api/v1/verify", len(sealed)) + sealed)
        assert small.status == 200
    finally:
        holder.close()


@pytest.mark.parametrize("ending", ["completes", "disconnects", "times_out"])
def test_the_budget_is_given_back_however_the_upload_ends(budget_server: str, ending: str) -> None:
    holder = hold_budget(budget_server)
    with holder:
        assert exchange(budget_server, post_head("/api/v1/verify", SMALL)).status == 503
        if ending == "completes":
            holder.sendall(b"x" * (SMALL - 1000))
            assert read_answer(holder, time.monotonic()).status == 422  # not an email
        elif ending == "times_out":
            assert read_answer(holder, time.monotonic()).status == 408
    later = post_head("/api/v1/verify", SMALL) + b"x" * SMALL
    for _ in range(20):  # a disconnect is noticed by the server a moment later
        answer = exchange(budget_server, later)
        if answer.status != 503:
            break
        time.sleep(0.1)
    assert answer.status == 422


# --- the parts ---------------------------------------------------------------------------


def test_the_body_deadline_grows_one_second_per_min_rate_bytes() -> None:
    pace = Pace(timeout=10, min_rate=1000)
    assert pace.deadline(100.0, 0) == 110.0
    assert pace.deadline(100.0, 10 * 1024 * 1024) == pytest.approx(100 + 10 + 10485.76)


def test_what_a_request_reserves() -> None:
    assert reservation("30000", 1000000) == 30000
    assert reservation("", 1000000) == 1000000  # chunked: the most it may hold
    assert reservation("2000000", 1000000) == 0  # over the limit: drained, never held
    budget = MemoryBudget(100)
    assert budget.take(60)
    assert not budget.take(41)
    budget.give_back(60)
    assert budget.take(100)


def test_the_new_settings_come_from_the_environment_and_are_checked() -> None:
    settings = from_env(
        {
            "SEALPOST_VERIFIER_HEADER_TIMEOUT": "5",
            "SEALPOST_VERIFIER_BODY_TIMEOUT": "6",
            "SEALPOST_VERIFIER_BODY_MIN_RATE": "500",
            "SEALPOST_VERIFIER_UPLOAD_MEMORY_BYTES": str(48 * 1024 * 1024),
        }
    )
    assert settings.limits.header_timeout_seconds == 5
    assert settings.limits.body_timeout_seconds == 6
    assert settings.limits.body_min_rate == 500
    assert settings.limits.upload_memory_bytes == 48 * 1024 * 1024
    with pytest.raises(SettingsError, match="HEADER_TIMEOUT"):
        from_env({"SEALPOST_VERIFIER_HEADER_TIMEOUT": "0"})
    with pytest.raises(SettingsError, match="UPLOAD_MEMORY_BYTES must be at least"):
        from_env({"SEALPOST_VERIFIER_UPLOAD_MEMORY_BYTES": str(10 * 1024 * 1024)})


def test_every_worker_gets_the_protocol_with_its_deadline() -> None:
    # uvicorn spawns its workers and pickles the options into them.
    options = server_options(make_settings(Path("x")))
    factory = pickle.loads(pickle.dumps(options["http"]))  # noqa: S301 (our own bytes)
    assert factory.func is HeaderDeadlineProtocol
    assert factory.keywords == {"header_timeout": 20}


def test_the_command_with_two_workers_cuts_a_silent_connection(archive_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEALPOST_VERIFIER_HEADER_TIMEOUT": "1"}
    command = [
        sys.executable, "-m", "verifier", "--port", str(port), "--archive", str(archive_dir),
        "--workers", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        answers: list[Answer] = []
        while len(answers) < 4:  # both workers, most likely, answer one of these
            assert time.monotonic() < deadline, "the verifier did not start"
            assert process.poll() is None, "the verifier exited"
            try:
                sock = connect(url)
            except ConnectionRefusedError:
                time.sleep(0.2)
                continue
            with sock:
                answers.append(read_answer(sock, time.monotonic()))
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert {a.status for a in answers} == {408}
    assert all(a.closed and a.at < 1 + MARGIN for a in answers)

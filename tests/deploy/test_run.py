"""``make run`` (scripts/run.sh) as a newcomer uses it: the banner comes once every port
answers, and the loopback client's trial password it prints opens the submission port
(STARTTLS, then AUTH), as swaks would use it. Run in a temporary directory on free ports."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.deploy.services import ROOT, environment
from tests.support import free_port

RUN = ROOT / "scripts" / "run.sh"
BANNER = "Sealpost is running"
START_WITHIN = 120  # seconds: the first start makes the keys, the TSA's CA, the log key


@dataclass(frozen=True)
class Started:
    workdir: Path
    banner: str
    ports: dict[str, int]


def _wait_for_banner(output: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace")
        if BANNER in text and text.rstrip().endswith("queue list"):
            return text[text.index(BANNER) :]
        if process.poll() is not None:
            raise AssertionError(f"run.sh exited {process.returncode}:\n{text}")
        time.sleep(0.1)
    raise AssertionError(f"no banner after {START_WITHIN} s:\n{output.read_text()}")


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    tmp_path = tmp_path_factory.mktemp("run")
    ports = {name: free_port() for name in ("relay", "submission", "metrics", "verifier", "tsa")}
    env = environment(
        {
            "BIN": str(Path(sys.executable).parent),
            "SEALPOST_RUN_DIR": str(tmp_path),
            "SEALPOST_RUN_TSA_PORT": str(ports["tsa"]),
            "SEALPOST_GATEWAY_RELAY_LISTEN": f"127.0.0.1:{ports['relay']}",
            "SEALPOST_GATEWAY_SUBMISSION_LISTEN": f"127.0.0.1:{ports['submission']}",
            "SEALPOST_GATEWAY_METRICS_LISTEN": f"127.0.0.1:{ports['metrics']}",
            "SEALPOST_GATEWAY_SEALING_WORKERS": "0",
            "SEALPOST_VERIFIER_PORT": str(ports["verifier"]),
        }
    )
    output = tmp_path / "run.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(RUN)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Started(tmp_path, _wait_for_banner(output, process), ports)
    finally:
        process.send_signal(signal.SIGTERM)  # run.sh stops its services in turn
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the session this test started
            process.wait(timeout=10)


def _trial_login(banner: str) -> tuple[str, str]:
    found = re.search(r"trial login\s+user (\S+), password (\S+)", banner)
    assert found is not None, banner
    return found.group(1), found.group(2)


def _submission(started: Started) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", started.ports["submission"], timeout=10)
    # The self-signed certificate make run made: trusted as itself, whatever name it bears.
    context = ssl.create_default_context(cafile=started.workdir / "var" / "tls" / "cert.pem")
    context.check_hostname = False
    smtp.starttls(context=context)
    return smtp


def test_the_banner_comes_once_every_port_answers(started: Started) -> None:
    for name, port in started.ports.items():
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # answered, at the moment the banner was read
        if name != "tsa":
            assert f"127.0.0.1:{port}" in started.banner, name


def test_the_trial_password_is_printed_kept_private_and_never_in_clear_elsewhere(
    started: Started,
) -> None:
    user, password = _trial_login(started.banner)
    assert user == "loopback"
    kept = started.workdir / "var" / "submission-password"
    assert kept.read_text().strip() == password
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert len(password) >= 20
    config = (started.workdir / "var" / "gateway.toml").read_text()
    assert password not in config
    assert 'password_hash = "scrypt$' in config
    assert f"--auth-password '{password}'" in started.banner  # the swaks line, ready to paste


def test_the_trial_password_opens_the_submission_port(started: Started) -> None:
    user, password = _trial_login(started.banner)
    with _submission(started) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login(user, password + "x")
        assert refused.value.smtp_code == 535
    with _submission(started) as smtp:
        code, _ = smtp.login(user, password)
        assert code == 235
        message = EmailMessage()
        message["From"] = "statements@caisses.example"
        message["To"] = "you@example.net"
        message["Subject"] = "make run trial"
        message["Date"] = "Mon, 30 Nov 2026 09:00:00 +0000"
        message["Message-ID"] = "<trial-1@caisses.example>"
        message.set_content("A trial through the submission port.")
        refusals = smtp.send_message(message)
        assert refusals == {}

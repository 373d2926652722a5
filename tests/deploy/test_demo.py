"""``make demo`` (scripts/demo.py) against a real gateway and verifier, each its own
process on free ports in a temporary directory, as ``make run`` starts them."""

from __future__ import annotations

import asyncio
import email
import email.policy
import importlib.util
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.services import ROOT, Service, environment
from tests.support import free_port

DEMO = ROOT / "scripts" / "demo.py"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sealpost_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


demo = load_demo()


@dataclass
class Running:
    workdir: Path
    relay: int
    verifier: int


@pytest.fixture
async def sealpost(tmp_path: Path) -> AsyncIterator[Running]:
    """Gateway and verifier on the embedded defaults but for their ports."""
    relay, http = free_port(), free_port()
    gateway = Service(
        "gateway",
        [sys.executable, "-m", "gateway"],
        tmp_path,
        environment(
            {
                "SEALPOST_GATEWAY_RELAY_LISTEN": f"127.0.0.1:{relay}",
                "SEALPOST_GATEWAY_SUBMISSION_LISTEN": "",
                "SEALPOST_GATEWAY_METRICS_LISTEN": "",
                "SEALPOST_GATEWAY_SEALING_WORKERS": "0",
            }
        ),
    )
    verifier = Service(
        "verifier", [sys.executable, "-m", "verifier", "--port", str(http)], tmp_path, environment()
    )
    try:
        # The gateway makes the key store and the public archive on its first start.
        await gateway.start(relay)
        await verifier.start(http)
        yield Running(tmp_path, relay, http)
    finally:
        await asyncio.gather(gateway.stop(), verifier.stop())


async def run_demo(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEMO),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_sealed_statements_are_authentic_and_the_altered_one_tampered(
    sealpost: Running,
) -> None:
    code, out, err = await run_demo(
        "--relay",
        f"127.0.0.1:{sealpost.relay}",
        "--verifier",
        f"http://127.0.0.1:{sealpost.verifier}",
        "--maildir",
        "var/outbox",
        "--wait",
        "20",
        cwd=sealpost.workdir,
    )
    assert code == 0, out + err
    verdicts = re.findall(r"^   (member|insurer|altered) +(\S+): verdict (\w+)$", out, re.M)
    assert verdicts == [
        ("member", "marie.dupont@example.org", "authentic"),
        ("insurer", "teletransmission@mutuelle-azur.example", "authentic"),
        ("altered", "marie.dupont@example.org", "tampered"),
    ]
    # Each delivered copy's seals are in the gateway's statement log (made on its first
    # start, without a time-stamp authority here).
    logged = re.findall(r"^ {12}logged: entry (\d+) of (\S+), time not certified", out, re.M)
    assert len(logged) == 2, out
    assert all(origin.startswith("caisses.example/statements/") for _, origin in logged)
    # The altered copy fails on its document, not only on DKIM.
    assert re.search(r"document decompte-2026-118734\.pdf .*: invalid \(digest_mismatch\)", out)
    # What reached the Maildir is the sealed message, with the subject RFC 2047 encoded.
    delivered = sorted((sealpost.workdir / "var/outbox/new").iterdir())
    assert len(delivered) == 2
    raw = delivered[0].read_bytes()
    assert b"Subject: Votre =?utf-8?q?d=C3=A9compte" in raw
    assert b'filename="decompte-2026-11873' in raw
    assert b".pdf.p7s" in raw


async def test_without_make_run_it_says_what_to_do(tmp_path: Path) -> None:
    code, _, err = await run_demo(
        "--relay", f"127.0.0.1:{free_port()}", "--verifier", "http://127.0.0.1:9", cwd=tmp_path
    )
    assert code == 2
    assert "does not answer" in err
    assert "Start `make run` first" in err
    assert "Traceback" not in err


def test_the_statement_pdf_is_well_formed() -> None:
    pdf = demo.statement_pdf(demo.STATEMENTS[0])
    assert pdf.startswith(b"%PDF-1.4\n")
    assert pdf.endswith(b"%%EOF\n")
    # startxref points at the table, and every table entry at its own object.
    xref_at = int(re.findall(rb"startxref\n(\d+)\n", pdf)[-1])
    assert pdf[xref_at:].startswith(b"xref\n0 6\n")
    entries = re.findall(rb"(\d{10}) 00000 n \n", pdf[xref_at:])
    assert len(entries) == 5
    for number, offset in enumerate(entries, start=1):
        assert pdf[int(offset) :].startswith(b"%d 0 obj\n" % number)
    # The content stream's declared length is its real length.
    length = int(re.findall(rb"/Length (\d+) >>\nstream\n", pdf)[0])
    stream = pdf.split(b"stream\n", 1)[1]
    assert stream[length:].startswith(b"endstream")
    assert "Décompte de prestations".encode("cp1252") in pdf


def test_the_subject_goes_out_rfc2047_encoded() -> None:
    message = demo.statement_email(demo.STATEMENTS[1], "decomptes@caisses.example")
    wire = message.as_bytes(policy=email.policy.SMTP)
    assert wire.isascii()
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    assert parsed["Subject"] == "Votre décompte de prestations n° 2026-118735"
    assert parsed["To"] == "teletransmission@mutuelle-azur.example"
    [pdf] = [p for p in parsed.walk() if p.get_content_type() == "application/pdf"]
    assert pdf.get_filename() == "decompte-2026-118735.pdf"

"""Fixtures for the verifier: a public archive written from SigningMaterial in exactly the
format of keys/archive.py, sealed statement emails, and the real-life transformations an
insurer's mail system applies to them."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.policy
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from starlette.types import ASGIApp

from keys import pki
from keys.archive import FORMAT, format_time
from keys.signing import SigningMaterial
from tests.checks import REFERENCE, crlf
from tests.conftest import make_material
from tests.support import ROOT
from verifier.__main__ import server_options
from verifier.app import create_app
from verifier.settings import Limits, Settings
from verifier.trust import Trust

PDF_NAME = "releve-2026-02.pdf"
SIGNATURE_TYPE = "application/pkcs7-signature"


def reference_message() -> bytes:
    """The reference statement email (about 27 KB), with CRLF line ends."""
    return crlf(REFERENCE.read_bytes())


# --- the public archive ----------------------------------------------------------------


@dataclass(frozen=True)
class KeyHistory:
    """How the archive should describe one generation's keys and certificate."""

    state: str = "active"
    compromised_at: dt.datetime | None = None
    # When the generation left service. By default 30 days ago, a minute after it started:
    # before anything a test seals, which then reads as signed after retirement.
    retired_at: dt.datetime | None = None


def _history(history: KeyHistory, start: dt.datetime) -> list[dict[str, str]]:
    state = history.state
    times = [start, start + dt.timedelta(minutes=1)]
    states = ["pending", "active"]
    left = history.retired_at or start + dt.timedelta(minutes=2)
    if state in ("retired", "withdrawn", "revoked"):
        states.append("retired")
        times.append(left)
    if state in ("withdrawn", "revoked"):
        states.append(state)
        times.append(left + dt.timedelta(minutes=1))
    if state == "pending":
        states = ["pending"]
    return [{"state": s, "at": format_time(t)} for s, t in zip(states, times, strict=False)]


def _revocation(history: KeyHistory, now: dt.datetime) -> dict[str, str] | None:
    if history.state != "revoked":
        return None
    compromised = history.compromised_at or now - dt.timedelta(days=1)
    return {
        "compromised_at": format_time(compromised),
        "reason": "key-compromise <script>alert(1)</script>",
        "revoked_at": format_time(now),
    }


def dkim_p_value(material: SigningMaterial, algorithm: str) -> str:
    if algorithm == "rsa":
        der = material.rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        der = material.ed25519_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return base64.b64encode(der).decode("ascii")


def archive_document(
    entries: list[tuple[SigningMaterial, KeyHistory]],
    extra_roots: tuple[x509.Certificate, ...] = (),
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=30)
    roots: dict[str, str] = {}
    dkim_keys: list[dict[str, Any]] = []
    certificates: list[dict[str, Any]] = []
    for material, history in entries:
        for root in (material.chain[-1], *extra_roots):
            roots[pki.fingerprint(root)] = pki.certificate_pem(root).decode("ascii")
        for algorithm, selector in (
            ("rsa", material.rsa_selector),
            ("ed25519", material.ed25519_selector),
        ):
            p = dkim_p_value(material, algorithm)
            dkim_keys.append(
                {
                    "domain": material.domain,
                    "selector": selector,
                    "generation": material.generation,
                    "algorithm": algorithm,
                    "public_key": p,
                    "sha256": hashlib.sha256(base64.b64decode(p)).hexdigest(),
                    "history": _history(history, start),
                    "revocation": _revocation(history, now),
                }
            )
        cert = material.certificate
        certificates.append(
            {
                "domain": material.domain,
                "serial": pki.serial_hex(cert),
                "generation": material.generation,
                "pem": pki.certificate_pem(cert).decode("ascii"),
                "sha256": pki.fingerprint(cert),
                "not_before": format_time(cert.not_valid_before_utc),
                "not_after": format_time(cert.not_valid_after_utc),
                "history": _history(history, start),
                "revocation": _revocation(history, now),
            }
        )
    return {
        "format": FORMAT,
        "generated_at": format_time(now),
        "roots": [{"pem": pem, "sha256": sha} for sha, pem in roots.items()],
        "dkim_keys": dkim_keys,
        "certificates": certificates,
    }


def write_archive(directory: Path, entries: list[tuple[SigningMaterial, KeyHistory]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    document = archive_document(entries)
    tmp = directory / "archive.json.tmp"
    tmp.write_text(json.dumps(document, indent=2), encoding="utf-8")
    tmp.replace(directory / "archive.json")  # by rename, as keys/export.py writes it
    roots = "".join(r["pem"] for r in document["roots"])
    (directory / "root.pem").write_text(roots, encoding="ascii")
    return directory


# --- sealing ---------------------------------------------------------------------------


def cms_detached(document: bytes, material: SigningMaterial) -> bytes:
    from cryptography.hazmat.primitives.serialization import pkcs7

    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(document)
        .add_signer(material.certificate, material.certificate_key, hashes.SHA256())
    )
    for issuer in material.chain:
        builder = builder.add_certificate(issuer)
    return builder.sign(
        serialization.Encoding.DER,
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
    )


OVERSIGNED = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version"]


def dkim_sign(raw: bytes, material: SigningMaterial) -> bytes:
    import dkim

    rsa_pem = material.rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    ed_seed = base64.b64encode(
        material.ed25519_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )
    headers = [*OVERSIGNED, b"content-type", *OVERSIGNED]
    signed = raw
    for selector, key, algorithm in (
        (material.rsa_selector, rsa_pem, b"rsa-sha256"),
        (material.ed25519_selector, ed_seed, b"ed25519-sha256"),
    ):
        header = dkim.sign(
            raw,
            selector.encode(),
            material.domain.encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
            signature_algorithm=algorithm,
        )
        signed = header + signed
    return signed


def seal_with_builders(raw: bytes, material: SigningMaterial) -> bytes:
    """What gateway/seal.py produces, built from dkimpy and cryptography's PKCS7 builder."""
    message = message_from_bytes(raw, policy=email.policy.SMTP)
    assert message.is_multipart()
    parts = message.get_payload()
    assert isinstance(parts, list)
    sealed: list[Message | str] = []
    for part in parts:
        assert isinstance(part, Message)
        sealed.append(part)
        if part.get_content_type() != "application/pdf":
            continue
        name = part.get_filename()
        payload = part.get_payload(decode=True)
        assert isinstance(name, str)
        assert isinstance(payload, bytes)
        signature = Message(policy=email.policy.SMTP)
        signature["Content-Type"] = f'{SIGNATURE_TYPE}; name="{name}.p7s"'
        signature["Content-Transfer-Encoding"] = "base64"
        signature["Content-Disposition"] = f'attachment; filename="{name}.p7s"'
        body = base64.encodebytes(cms_detached(payload, material)).decode("ascii")
        signature.set_payload(body.replace("\n", "\r\n"))
        sealed.append(signature)
    message.set_payload(sealed)
    data = message.as_bytes(policy=email.policy.SMTP)
    return dkim_sign(data, material)


def seal(raw: bytes, material: SigningMaterial) -> bytes:
    """The gateway's own sealing code: what insurers actually receive."""
    from gateway.seal import DocumentRules
    from gateway.seal import seal as gateway_seal

    return gateway_seal(raw, material, DocumentRules()).data


# --- real-life transformations -----------------------------------------------------------


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def replace_header(raw: bytes, name: bytes, value: bytes) -> bytes:
    head, body = split(raw)
    pattern = re.compile(rb"^" + name + rb":[^\r\n]*(\r\n[ \t][^\r\n]*)*", re.I | re.M)
    head, count = pattern.subn(name + b": " + value, head, count=1)
    assert count == 1
    return head + b"\r\n\r\n" + body


def pdf_block(raw: bytes) -> tuple[int, int]:
    """Start and end of the PDF's base64 text inside the raw message."""
    marker = f'filename="{PDF_NAME}"'.encode()
    start = raw.index(b"\r\n\r\n", raw.index(marker)) + 4
    end = raw.index(b"\r\n--", start)
    return start, end


def tamper_document(raw: bytes, offset: int = 400) -> bytes:
    """Changes one byte of the PDF, re-encoded with the same line layout."""
    start, end = pdf_block(raw)
    data = bytearray(base64.b64decode(raw[start:end]))
    data[offset] ^= 0x01
    lines = base64.encodebytes(bytes(data)).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return raw[:start] + lines + raw[end:]


def reencode_document(raw: bytes) -> bytes:
    """A relay re-wraps the PDF's base64 at 64 columns: same document, different body."""
    start, end = pdf_block(raw)
    data = base64.b64decode(raw[start:end])
    text = base64.b64encode(data)
    lines = b"\r\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return raw[:start] + lines + raw[end:]


def forward_as_attachment(raw: bytes, as_eml: bool = False) -> bytes:
    boundary = b"fwd-boundary-42"
    head = (
        b"From: Claims Officer <claims@insurer.example>\r\n"
        b"To: <checks@insurer.example>\r\n"
        b"Subject: Fwd: Votre releve\r\n"
        b"Date: Mon, 02 Mar 2026 09:00:00 +0100\r\n"
        b"Message-ID: <fwd-1@insurer.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
    )
    text = (
        b"--" + boundary + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"See the attached statement.\r\n"
    )
    if as_eml:
        encoded = base64.encodebytes(raw).replace(b"\n", b"\r\n")
        inner = (
            b"--" + boundary + b"\r\n"
            b'Content-Type: application/octet-stream; name="statement.eml"\r\n'
            b"Content-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="statement.eml"\r\n\r\n' + encoded
        )
    else:
        inner = (
            b"--" + boundary + b"\r\n"
            b"Content-Type: message/rfc822\r\n"
            b"Content-Disposition: attachment\r\n\r\n" + raw + b"\r\n"
        )
    return head + text + inner + b"--" + boundary + b"--\r\n"


def forward_inline(raw: bytes) -> bytes:
    """A forward that keeps the attachments but replaces the headers and adds text."""
    _, body = split(raw)
    message = message_from_bytes(raw, policy=email.policy.compat32)
    content_type = message["Content-Type"]
    head = (
        b"From: Claims Officer <claims@insurer.example>\r\n"
        b"To: <checks@insurer.example>\r\n"
        b"Subject: TR: Votre releve\r\n"
        b"Date: Mon, 02 Mar 2026 09:00:00 +0100\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
    )
    return head + body


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def material() -> SigningMaterial:
    return make_material()


@pytest.fixture(scope="session")
def sealed(material: SigningMaterial) -> bytes:
    return seal(reference_message(), material)


@pytest.fixture
def archive_dir(tmp_path: Path, material: SigningMaterial) -> Path:
    return write_archive(tmp_path / "public", [(material, KeyHistory("active"))])


@pytest.fixture(scope="session")
def trust(material: SigningMaterial, tmp_path_factory: pytest.TempPathFactory) -> Trust:
    from keys.archive import load_archive

    directory = write_archive(tmp_path_factory.mktemp("public"), [(material, KeyHistory("active"))])
    return Trust(load_archive(directory))


def trust_with(tmp_path: Path, entries: list[tuple[SigningMaterial, KeyHistory]]) -> Trust:
    from keys.archive import load_archive

    return Trust(load_archive(write_archive(tmp_path / "public", entries)))


@pytest.fixture
def limits() -> Limits:
    return Limits()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """DKIM keys come from the archive: any DNS query is a bug."""
    import dns.resolver

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the verifier queried DNS")

    monkeypatch.setattr(dns.resolver, "resolve", refuse)
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", refuse)


# --- a real server ---------------------------------------------------------------------


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Runs `app` under a real uvicorn on 127.0.0.1, port 0, in a thread; yields its URL.
    uvicorn gets the verifier's own options (its HTTP protocol with the header deadline)."""
    services = getattr(getattr(app, "state", None), "services", None)
    settings = services.settings if services is not None else Settings()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        access_log=False,
        **server_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="verifier-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def make_settings(archive: Path, **changes: Any) -> Settings:
    return dataclasses.replace(Settings(archive_dir=archive, rate_limit_per_minute=0), **changes)


@pytest.fixture
def server(archive_dir: Path) -> Iterator[str]:
    with serve(create_app(make_settings(archive_dir))) as url:
        yield url


def run_verifier(
    *args: str, stderr: int = subprocess.DEVNULL, stdout: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """`python -m verifier ARGS` from this checkout, as an operator starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "verifier", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=stdout,
        stderr=stderr,
    )


def wait_until_up(process: subprocess.Popen[bytes], url: str) -> None:
    """Returns once `url` answers 200, within 30 s and while the verifier runs."""
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "the verifier exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.2)

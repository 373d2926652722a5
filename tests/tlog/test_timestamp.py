"""RFC 3161 time-stamps on checkpoints, from a real local TSA (scripts/tsa.py, openssl ts).

Every token that tlog.timestamp accepts is also checked by `openssl ts -verify`, an
implementation independent of rfc3161-client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Tsa, start_tsa
from tlog import timestamp
from tlog.note import Checkpoint, Signer, generate_key, sign_note
from tlog.timestamp import TimestampError


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsa]:
    yield from start_tsa(tmp_path_factory.mktemp("tsa"))


@pytest.fixture(scope="module")
def other_tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsa]:
    yield from start_tsa(tmp_path_factory.mktemp("other-tsa"))


@pytest.fixture(scope="module")
def signed_checkpoint() -> bytes:
    skey, _ = generate_key("sealpost.example/log")
    checkpoint = Checkpoint("sealpost.example/log", 42, bytes(range(32)))
    return sign_note(checkpoint.format(), [Signer.from_text(skey)])


def _openssl_verify(tmp: Path, data: bytes, reply: bytes, ca_pem: Path, token: bool) -> bool:
    data_file, reply_file = tmp / "checkpoint", tmp / "reply.der"
    data_file.write_bytes(data)
    reply_file.write_bytes(reply)
    done = subprocess.run(
        [
            "openssl", "ts", "-verify", "-data", str(data_file), "-in", str(reply_file),
            *(["-token_in"] if token else []), "-CAfile", str(ca_pem),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    return done.returncode == 0 and b"Verification: OK" in done.stdout


def _token_of(tmp: Path, reply: bytes) -> bytes:
    reply_file, token_file = tmp / "reply.tsr", tmp / "token.der"
    reply_file.write_bytes(reply)
    subprocess.run(
        [
            "openssl", "ts", "-reply", "-in", str(reply_file), "-token_out",
            "-out", str(token_file),
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )  # fmt: skip
    return token_file.read_bytes()


def test_checkpoint_time_stamp_verifies_here_and_with_openssl(
    tsa: Tsa, signed_checkpoint: bytes, tmp_path: Path
) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=2)
    reply = timestamp.fetch(tsa.url, signed_checkpoint, timeout=30)
    info = timestamp.verify(reply, signed_checkpoint, [tsa.ca_pem.read_bytes()])
    assert before <= info.time <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    assert info.time.tzinfo is not None
    assert info.tsa_name == "Sealpost test TSA"
    assert info.serial > 0
    assert _openssl_verify(tmp_path, signed_checkpoint, reply, tsa.ca_pem, token=False)


def test_bare_token_verifies_too(tsa: Tsa, signed_checkpoint: bytes, tmp_path: Path) -> None:
    reply = timestamp.fetch(tsa.url, signed_checkpoint, timeout=30)
    token = _token_of(tmp_path, reply)
    assert token != reply
    info = timestamp.verify(token, signed_checkpoint, [tsa.ca_pem.read_bytes()])
    assert info.tsa_name == "Sealpost test TSA"
    assert _openssl_verify(tmp_path, signed_checkpoint, token, tsa.ca_pem, token=True)


def test_der_root_certificate_is_accepted(tsa: Tsa, signed_checkpoint: bytes) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(tsa.ca_pem.read_bytes()).public_bytes(Encoding.DER)
    reply = timestamp.fetch(tsa.url, signed_checkpoint, timeout=30)
    assert timestamp.verify(reply, signed_checkpoint, [der]).tsa_name == "Sealpost test TSA"


def test_changed_checkpoint_byte_fails_both(
    tsa: Tsa, signed_checkpoint: bytes, tmp_path: Path
) -> None:
    reply = timestamp.fetch(tsa.url, signed_checkpoint, timeout=30)
    changed = bytearray(signed_checkpoint)
    changed[len("sealpost.example/log\n")] ^= 0x01  # the tree size's first digit
    with pytest.raises(TimestampError, match="not these bytes"):
        timestamp.verify(reply, bytes(changed), [tsa.ca_pem.read_bytes()])
    assert not _openssl_verify(tmp_path, bytes(changed), reply, tsa.ca_pem, token=False)


def test_tampered_token_fails(tsa: Tsa, signed_checkpoint: bytes) -> None:
    reply = bytearray(timestamp.fetch(tsa.url, signed_checkpoint, timeout=30))
    # Change the TSTInfo's serial-number-or-time region, after the imprint: still parses,
    # no longer matches the signature.
    where = bytes(reply).index(b"\x18\x0f")  # GeneralizedTime, 15 bytes (YYYYMMDDhhmmssZ)
    reply[where + 2 + 3] ^= 0x01
    with pytest.raises(TimestampError, match="signature does not match"):
        timestamp.verify(bytes(reply), signed_checkpoint, [tsa.ca_pem.read_bytes()])


def test_tsa_whose_root_is_not_configured_fails(
    tsa: Tsa, other_tsa: Tsa, signed_checkpoint: bytes, tmp_path: Path
) -> None:
    reply = timestamp.fetch(other_tsa.url, signed_checkpoint, timeout=30)
    assert timestamp.verify(reply, signed_checkpoint, [other_tsa.ca_pem.read_bytes()])
    with pytest.raises(TimestampError, match="not trusted"):
        timestamp.verify(reply, signed_checkpoint, [tsa.ca_pem.read_bytes()])
    assert not _openssl_verify(tmp_path, signed_checkpoint, reply, tsa.ca_pem, token=False)
    with pytest.raises(TimestampError, match="no TSA certificate"):
        timestamp.verify(reply, signed_checkpoint, [])


def test_garbage_is_refused_with_readable_errors(tsa: Tsa, signed_checkpoint: bytes) -> None:
    ca = [tsa.ca_pem.read_bytes()]
    for garbage in [b"", b"\x30", b"not DER at all", b"\x30\x03\x02\x01\x00"]:
        with pytest.raises(TimestampError, match="RFC 3161"):
            timestamp.verify(garbage, signed_checkpoint, ca)
    with pytest.raises(TimestampError, match="unreadable"):
        timestamp.verify(b"\x30", signed_checkpoint, [b"-----BEGIN CERTIFICATE-----\nxx"])


def test_request_is_sha256_with_nonce_and_cert_request(
    signed_checkpoint: bytes, tmp_path: Path
) -> None:
    query = tmp_path / "q.tsq"
    query.write_bytes(timestamp.request(signed_checkpoint))
    shown = subprocess.run(
        ["openssl", "ts", "-query", "-in", str(query), "-text"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "Hash Algorithm: sha256" in shown
    assert "Certificate required: yes" in shown
    assert re.search(r"Nonce: 0x[0-9A-F]+", shown)
    digest = hashlib.sha256(signed_checkpoint).hexdigest()
    hex_dump = "".join(re.findall(r"- ((?:[0-9a-f]{2}[ -]){1,16})", shown)).replace("-", " ")
    assert hex_dump.replace(" ", "") == digest


def test_tsa_answers_bad_input_with_400_and_stays_up(tsa: Tsa) -> None:
    with httpx.Client(timeout=10) as client:
        headers = {"Content-Type": timestamp.QUERY_TYPE}
        assert client.post(tsa.url, content=b"garbage", headers=headers).status_code == 400
        assert client.post(tsa.url, content=b"x" * 100_000, headers=headers).status_code == 400
        assert client.post(tsa.url, content=b"garbage").status_code == 415
        assert client.get(tsa.url).status_code == 405
    # Still answering after all that.
    assert timestamp.fetch(tsa.url, b"checkpoint\n", timeout=30)


def test_unreachable_tsa_is_a_readable_error(signed_checkpoint: bytes) -> None:
    with pytest.raises(TimestampError, match="unreachable"):
        timestamp.fetch("http://127.0.0.1:9/", signed_checkpoint, timeout=5)

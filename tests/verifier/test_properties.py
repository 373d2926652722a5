"""No input makes the verifier crash, hang or answer 500: real sealed emails, mutated the
ways broken clients and hostile users mutate them."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.signing import SigningMaterial
from tests.verifier.conftest import (
    KeyHistory,
    forward_as_attachment,
    make_settings,
    serve,
    write_archive,
)
from verifier.app import create_app
from verifier.report import Verdict
from verifier.settings import Limits
from verifier.trust import Trust
from verifier.verify import verify_email

# Per verification, on a loaded 2-core machine; a real one takes about 5 ms.
TIME_BOUND = 2.0


def _truncate(raw: bytes, data: st.DataObject) -> bytes:
    return raw[: data.draw(st.integers(0, len(raw)))]


def _flip(raw: bytes, data: st.DataObject) -> bytes:
    if not raw:
        return raw
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(out) - 1))
        out[position] ^= data.draw(st.integers(1, 255))
    return bytes(out)


def _insert(raw: bytes, data: st.DataObject) -> bytes:
    position = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.binary(min_size=1, max_size=64))
    return raw[:position] + junk + raw[position:]


def _reencode(raw: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["lf", "cr", "mixed", "base64-body", "wrap"]))
    if how == "lf":
        return raw.replace(b"\r\n", b"\n")
    if how == "cr":
        return raw.replace(b"\r\n", b"\r")
    if how == "mixed":
        return raw.replace(b"\r\n", b"\n", data.draw(st.integers(1, 200)))
    head, _, body = raw.partition(b"\r\n\r\n")
    if how == "base64-body":
        return head + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body)
    width = data.draw(st.integers(10, 200))
    lines = body.split(b"\r\n")
    wrapped = [line[i : i + width] for line in lines for i in range(0, max(len(line), 1), width)]
    return head + b"\r\n\r\n" + b"\r\n".join(wrapped)


def _nest(raw: bytes, data: st.DataObject) -> bytes:
    for _ in range(data.draw(st.integers(1, 6))):
        raw = forward_as_attachment(raw, as_eml=data.draw(st.booleans()))
    return raw


def _huge_headers(raw: bytes, data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["long", "many", "folded", "dkim"]))
    if kind == "long":
        header = b"X-Long: " + b"a" * data.draw(st.integers(1000, 300_000)) + b"\r\n"
    elif kind == "many":
        header = b"X-Many: b\r\n" * data.draw(st.integers(100, 20_000))
    elif kind == "folded":
        header = b"Subject: x" + b"\r\n y" * data.draw(st.integers(100, 20_000)) + b"\r\n"
    else:
        header = b"DKIM-Signature: v=1; a=rsa-sha256; d=caisses.example; s=" + (
            b"x" * data.draw(st.integers(1, 5000)) + b"; h=from; bh=; b=\r\n"
        )
    return header + raw


# Header and MIME pieces a prober splices in where a line starts: parameters the email
# package's header registry chokes on, RFC 2231/2047 names, boundaries, DKIM tags.
_PIECES = [
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b'Content-Type: multipart/mixed; boundary=""\r\n',
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/signed; protocol=x; boundary=x\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"Content-Disposition: attachment; filename*=utf-8''%C3%A9%ZZ.pdf\r\n",
    b"Content-Disposition: attachment; filename*0*=us-ascii'en'a; filename*2=c.pdf\r\n",
    b'Content-Disposition: attachment; filename="=?utf-8?q?a=0D=0Ab?=.pdf"\r\n',
    'Content-Disposition: attachment; filename="é.pdf";é*\r\n'.encode(),
    b"From: Content-Type: multipart/mixed; boundary=x\r\n",
    b"From: =?utf-8?q?=FF?= <a@b.example>\r\n",
    b"Subject: =?utf-8?b?////?=\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=caisses.example; s=x; t=99999999999999999999;"
    b" l=-5; h=from; bh=; b=\r\n",
    b"DKIM-Signature: v=1; a=ed25519-sha256; d=caisses.example; s=\xff; h=; bh=!; b=!\r\n",
    b" continuation\r\n",
    b"Not a field\r\n",
    b"--x\r\n",
    b"--x--\r\n",
    b"\r\n",
]


def _splice(raw: bytes, data: st.DataObject) -> bytes:
    starts = [0, *(i + 2 for i in range(len(raw) - 1) if raw[i : i + 2] == b"\r\n")][:400]
    at = data.draw(st.sampled_from(starts))
    return raw[:at] + data.draw(st.sampled_from(_PIECES)) + raw[at:]


class Sample(bytes):
    """A sealed email whose repr stays short in Hypothesis' failure reports."""

    def __repr__(self) -> str:
        return f"<sealed statement, {len(self)} bytes>"


@pytest.fixture(scope="module")
def statement(sealed: bytes) -> Sample:
    return Sample(sealed)


MUTATIONS = [_truncate, _flip, _insert, _reencode, _nest, _huge_headers, _splice, _splice]


def mutate(raw: bytes, data: st.DataObject) -> bytes:
    for _ in range(data.draw(st.integers(1, 3))):
        raw = data.draw(st.sampled_from(MUTATIONS))(raw, data)
    return raw


@settings(
    max_examples=100,
    deadline=None,  # the bound is asserted below, with a margin for a loaded machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_statements_always_get_a_verdict(
    statement: Sample, trust: Trust, data: st.DataObject
) -> None:
    raw = mutate(bytes(statement), data)
    started = time.monotonic()
    report = verify_email(raw, trust, Limits())
    assert time.monotonic() - started < TIME_BOUND
    assert report.verdict in set(Verdict)
    # A mutation never turns into a proof: only an untouched message may be authentic,
    # or one whose changes DKIM does not cover (LF line ends, added unsigned headers).
    if report.verdict is Verdict.AUTHENTIC:
        assert any(c.status.value == "pass" for c in report.dkim)


@pytest.fixture(scope="module")
def property_server(
    material: SigningMaterial, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    archive = write_archive(tmp_path_factory.mktemp("public"), [(material, KeyHistory())])
    with serve(create_app(make_settings(Path(archive)))) as url:
        yield url


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), multipart=st.booleans())
def test_the_api_answers_2xx_or_4xx_for_anything(
    property_server: str, statement: Sample, data: st.DataObject, multipart: bool
) -> None:
    raw = mutate(bytes(statement), data)
    started = time.monotonic()
    if multipart:
        response = httpx.post(
            property_server + "/api/v1/verify",
            files={"file": ("x.eml", raw, "message/rfc822")},
            timeout=10,
        )
    else:
        response = httpx.post(
            property_server + "/api/v1/verify",
            content=raw,
            headers={"Content-Type": "message/rfc822"},
            timeout=10,
        )
    assert time.monotonic() - started < TIME_BOUND
    assert 200 <= response.status_code < 500
    body = response.json()
    if response.status_code in (200, 422):
        assert body["verdict"] in {v.value for v in Verdict}
        assert body["reason"] != "reason_not_email_unreadable"  # no swallowed crash
    else:
        assert body["error"]  # e.g. an empty file part: a readable 400


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=2000),
    content_type=st.sampled_from(
        ["message/rfc822", "multipart/form-data; boundary=x", "multipart/form-data", "text/plain"]
    ),
)
def test_arbitrary_bodies_never_make_a_500(
    property_server: str, body: bytes, content_type: str
) -> None:
    response = httpx.post(
        property_server + "/api/v1/verify",
        content=body,
        headers={"Content-Type": content_type},
        timeout=10,
    )
    assert 200 <= response.status_code < 500

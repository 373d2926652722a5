"""The MIME tree as byte spans: each part keeps the bytes it was sent with."""

from __future__ import annotations

import base64
import binascii
import re
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import mime

INNER = b"From: a@caisses.example\r\nSubject: x\r\n\r\nbody =3D not qp here\r\n"


def _multipart(*parts: bytes, kind: bytes = b"mixed", extra: bytes = b"") -> bytes:
    head = b"Content-Type: multipart/" + kind + b'; boundary="b"' + extra + b"\r\n\r\n"
    return head + b"".join(b"--b\r\n" + p + b"\r\n" for p in parts) + b"--b--\r\n"


def test_each_child_keeps_its_exact_bytes() -> None:
    data = _multipart(b"Content-Type: message/rfc822\r\n\r\n" + INNER)
    root = mime.read(data, 12, 200)
    (child,) = root.children
    assert child.content_type == "message/rfc822"
    assert child.body == INNER  # not re-serialised: the forwarded DKIM still verifies


@pytest.mark.parametrize("encoding", [b"base64", b"quoted-printable"])
def test_encoded_parts_decode_as_mail_programs_decode_them(encoding: bytes) -> None:
    import quopri

    if encoding == b"base64":
        body = base64.encodebytes(INNER).replace(b"\n", b"\r\n")
    else:
        body = quopri.encodestring(INNER)
    part = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: " + encoding
    root = mime.read(_multipart(part + b"\r\n\r\n" + body), 12, 200)
    assert root.children[0].decoded().replace(b"\r\n", b"\n") == INNER.replace(b"\r\n", b"\n")


def test_damaged_base64_is_read_leniently_not_fatally() -> None:
    part = mime.read(
        _multipart(b"Content-Transfer-Encoding: base64\r\n\r\nJVBE*Ri0x!LjQK\r\nJVB"), 12, 200
    ).children[0]
    assert part.decoded().startswith(b"%PDF-1.4")


def test_the_sender_s_own_smime_signature_is_told_apart() -> None:
    data = _multipart(
        b"Content-Type: text/plain\r\n\r\nsigned text",
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n\r\nMIIB",
        kind=b"signed",
        extra=b'; protocol="application/pkcs7-signature"',
    )
    first, second = mime.read(data, 12, 200).children
    assert not first.protocol_signature
    assert second.protocol_signature


def test_depth_and_part_count_are_bounded() -> None:
    nested = b"Content-Type: text/plain\r\n\r\nleaf"
    for level in range(20):
        nested = (
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
            + nested
            + b"\r\n--b%d--\r\n" % level
        )
    with pytest.raises(mime.TooComplex):
        mime.read(nested, 12, 200)
    with pytest.raises(mime.TooComplex):
        mime.read(_multipart(*[b"\r\nx"] * 10), 12, 5)


def test_the_close_delimiter_ends_the_children_and_a_missing_one_keeps_what_is_there() -> None:
    root = mime.read(_multipart(b"\r\none", b"\r\ntwo") + b"epilogue --b\r\n", 12, 200)
    assert [c.body for c in root.children] == [b"one", b"two"]
    truncated = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nonly'
    assert [c.body for c in mime.read(truncated, 12, 200).children] == [b"only"]


# --- the faster readings give the former ones' results -----------------------------------

_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")


def former_base64(body: bytes) -> bytes:
    """Part.decoded's former reading: junk removed by a regular expression first."""
    text = _BASE64_JUNK.sub(b"", body)
    try:
        return binascii.a2b_base64(text)
    except binascii.Error:
        pass
    try:
        return binascii.a2b_base64(text[: len(text) - len(text) % 4])
    except binascii.Error:
        return b""


def former_spans(body: bytes, boundary: bytes) -> list[tuple[int, int, bytes | None]]:
    delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    return [(m.start(), m.end(), m.group(1)) for m in delimiter.finditer(body)]


_B64_PIECES = [b"QUJD", b"QQ", b"Q", b"=", b"==", b"\r\n", b"\n", b" ", b"*", b"\x00", b"-"]
base64_bodies = st.one_of(
    st.lists(st.sampled_from(_B64_PIECES), max_size=40).map(b"".join),
    st.binary(max_size=120).map(base64.encodebytes),
    st.binary(max_size=80),
)


@settings(max_examples=500, deadline=None)
@given(body=base64_bodies)
def test_base64_decodes_as_it_did_with_the_junk_removed_first(body: bytes) -> None:
    part = mime.Part(headers=Message(), body=body, depth=0)
    part.headers["Content-Transfer-Encoding"] = "base64"
    assert part.decoded() == former_base64(body)


_SPAN_PIECES = [b"--b", b"--b--", b"--bb", b"-", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x"]


@settings(max_examples=500, deadline=None)
@given(
    body=st.lists(st.sampled_from(_SPAN_PIECES), max_size=40).map(b"".join),
    boundary=st.sampled_from([b"b", b"bb", b"b.b", b"=_x"]),
)
def test_delimiters_are_found_where_a_full_scan_finds_them(body: bytes, boundary: bytes) -> None:
    found = [(m.start(), m.end(), m.group(1)) for m in mime._delimiters(body, boundary)]
    assert found == former_spans(body, boundary)

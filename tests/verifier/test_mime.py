"""The MIME tree as byte spans: each part keeps the bytes it was sent with."""

from __future__ import annotations

import base64

import pytest

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

"""DKIM signing through OpenSSL gives exactly what dkimpy's own signer gives.

RSASSA-PKCS1-v1_5 and Ed25519 are deterministic, so with the same key, time, header list
and canonicalisation, the b= values must be equal byte for byte to those of dkimpy's
reference (pure-Python) signer.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import dkim_sign
from keys.signing import SigningMaterial

TIMESTAMP = 1_772_341_207
MESSAGE = (
    b'From: "Caisses Sociales" <statements@caisses.example>\r\n'
    b"To: <member@example.net>\r\n"
    b"To: <second@example.net>\r\n"
    b"Subject:   Votre   decompte \r\n"
    b"Date: Sun, 01 Mar 2026 06:00:00 +0100\r\n"
    b"Message-ID: <decompte-123@caisses.example>\r\n"
    b"X-Mailer: statements/1.0\r\n"
    b"\r\n"
    b"Bonjour,  \r\n\r\nvotre decompte.\r\n\r\n\r\n"
)


def tags(header: bytes) -> dict[str, str]:
    value = header.split(b":", 1)[1].decode()
    pairs = (tag.split("=", 1) for tag in value.split(";") if "=" in tag)
    return {name.strip(): re.sub(r"\s+", "", content) for name, content in pairs}


def signers(material: SigningMaterial) -> list[dkim_sign.Signer]:
    return [
        dkim_sign.Signer(material.rsa_selector, material.rsa_key),
        dkim_sign.Signer(material.ed25519_selector, material.ed25519_key),
    ]


def split_fields(headers: bytes) -> list[bytes]:
    return [field + b"\r\n" for field in re.split(rb"\r\n(?! )", headers.rstrip(b"\r\n"))]


def test_oversigning_counts_each_name_once_more_than_present() -> None:
    parsed, _ = dkim.rfc822_parse(MESSAGE)
    names = dkim_sign.oversigned(parsed)
    assert names.count(b"to") == 3
    assert names.count(b"from") == 2
    assert names.count(b"cc") == 1
    assert names.count(b"reply-to") == 1
    assert names.count(b"sender") == 1  # none present: an added one breaks the signature
    assert b"x-mailer" not in names


def test_signatures_equal_dkimpy_reference(
    signing_material: SigningMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = split_fields(
        dkim_sign.signature_headers(
            MESSAGE, signing_material.domain, signers(signing_material), TIMESTAMP
        )
    )
    parsed, _ = dkim.rfc822_parse(MESSAGE)
    include = list(dkim_sign.oversigned(parsed))
    monkeypatch.setattr(time, "time", lambda: float(TIMESTAMP))
    rsa_pem = signing_material.rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    ed_seed = signing_material.ed25519_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    references = [
        dkim.DKIM(MESSAGE).sign(
            signing_material.rsa_selector.encode(),
            signing_material.domain.encode(),
            rsa_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        ),
        dkim.DKIM(MESSAGE).sign(
            signing_material.ed25519_selector.encode(),
            signing_material.domain.encode(),
            base64.b64encode(ed_seed),
            signature_algorithm=b"ed25519-sha256",
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        ),
    ]
    assert len(ours) == 2
    for mine, reference in zip(ours, references, strict=True):
        assert tags(mine) == tags(reference)


def test_headers_are_folded_within_78_columns(signing_material: SigningMaterial) -> None:
    headers = dkim_sign.signature_headers(
        MESSAGE, signing_material.domain, signers(signing_material), TIMESTAMP
    )
    lines = headers.split(b"\r\n")
    assert lines[-1] == b""
    assert all(0 < len(line) <= 78 for line in lines[:-1])
    assert all(line.startswith((b"DKIM-Signature: ", b" ")) for line in lines[:-1])


def test_the_order_of_signers_is_kept(signing_material: SigningMaterial) -> None:
    ed_first = list(reversed(signers(signing_material)))
    fields = split_fields(
        dkim_sign.signature_headers(MESSAGE, signing_material.domain, ed_first, TIMESTAMP)
    )
    assert [tags(field)["a"] for field in fields] == ["ed25519-sha256", "rsa-sha256"]


def test_an_unparsable_message_raises_a_dkim_error(signing_material: SigningMaterial) -> None:
    with pytest.raises(dkim.DKIMException):
        dkim_sign.signature_headers(
            b"not a header line\r\n\r\nbody\r\n",
            signing_material.domain,
            signers(signing_material),
            TIMESTAMP,
        )


_LINES = st.sampled_from(
    [
        b"From: a@caisses.example", b"To: <m@example.org>", b"Subject: x  y\t",
        b" folded", b"\tfolded", b"From a@b Mon Nov 30", b"X-Empty:", b"x:y", b"",
        b"body line  ", b"--boundary", b"\xc3\xa9t\xc3\xa9", b"\r",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINES, max_size=12), end=st.sampled_from([b"\r\n", b"\n", b""]))
def test_the_signer_reads_a_message_exactly_as_dkimpy_does(lines: list[bytes], end: bytes) -> None:
    """The signer's own header/body split (it does not split the body into lines) agrees
    with dkimpy's on everything, or fails where dkimpy fails."""
    message = b"\r\n".join(lines) + end
    try:
        expected = dkim.rfc822_parse(message)
    except (dkim.MessageFormatError, IndexError) as exc:
        with pytest.raises(type(exc)):
            dkim_sign.parse(message)
        return
    headers, body = dkim_sign.parse(message)
    assert ([list(h) for h in headers], body) == ([list(h) for h in expected[0]], expected[1])


@settings(max_examples=500, deadline=None)
@given(
    body=st.lists(
        st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"  ", b"\r", b"\n", b"x y", b" \t "]),
        max_size=30,
    ).map(b"".join)
)
def test_the_relaxed_body_is_dkimpy_s(body: bytes) -> None:
    assert dkim_sign.relaxed_body(body) == Relaxed.canonicalize_body(body)


_FIELDS = st.lists(
    st.tuples(
        st.sampled_from([b"From", b"to", b"TO", b"Subject", b"X-Other", b"cc"]),
        st.sampled_from([b" a\r\n", b"  b  c \r\n", b"\r\n", b" x\r\n\ty\r\n"]),
    ),
    max_size=10,
)
_INCLUDE = st.lists(st.sampled_from([b"from", b"to", b"subject", b"cc", b"date"]), max_size=12)


@settings(max_examples=500, deadline=None)
@given(fields=_FIELDS, include=_INCLUDE)
def test_header_selection_is_dkimpy_s(
    fields: list[tuple[bytes, bytes]], include: list[bytes]
) -> None:
    """Bottom-up, each field taken once, a name with none left taking nothing."""
    assert dkim_sign.select_headers(fields, include) == dkim.select_headers(fields, include)


@settings(max_examples=300, deadline=None)
@given(fields=_FIELDS, include=_INCLUDE, signature=st.sampled_from([b" v=1; b=", b" a=b;\r\n b="]))
def test_the_shared_header_hash_is_dkimpy_s(
    fields: list[tuple[bytes, bytes]], include: list[bytes], signature: bytes
) -> None:
    """Hashing the selected fields once and the signature field on a copy gives the digest
    dkimpy's hash_headers gives, signature by signature."""
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    expected = hashlib.sha256()
    dkim.hash_headers(
        expected,
        relaxed,
        relaxed.canonicalize_headers(fields),
        include,
        (b"DKIM-Signature", signature),
        None,
    )
    ours = hashlib.sha256(dkim_sign.signed_header_bytes(fields, include))
    ((name, value),) = relaxed.canonicalize_headers([(b"DKIM-Signature", signature)])
    ours.update(name + b":" + value.rstrip())
    assert ours.digest() == expected.digest()


@settings(max_examples=500, deadline=None)
@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from([b"From", b"X-A ", b"SUBJECT\t", b"to"]),
            st.lists(
                st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"  ", b"\r", b"\n", b"\r\n\t"]),
                max_size=14,
            ).map(b"".join),
        ),
        max_size=5,
    )
)
def test_the_relaxed_headers_are_dkimpy_s(fields: list[tuple[bytes, bytes]]) -> None:
    assert dkim_sign.relaxed_headers(fields) == Relaxed.canonicalize_headers(fields)


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\n\r"]), max_size=20))
def test_a_bare_lf_is_found_where_the_counts_of_lf_and_crlf_differ(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    assert (dkim_sign.BARE_LF.search(data) is not None) == (
        data.count(b"\n") != data.count(b"\r\n")
    )
    assert dkim_sign.BARE_LF.sub(b"\r\n", data) == re.sub(rb"(?<!\r)\n", b"\r\n", data)

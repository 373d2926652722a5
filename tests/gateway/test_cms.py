"""The detached CMS signature: what is inside it, and what openssl makes of it."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization

from gateway import cms
from keys.signing import SigningMaterial
from tests.checks import openssl_verifies

DOCUMENT = b"%PDF-1.4\r\n" + bytes(range(256)) * 100 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def signature(signing_material: SigningMaterial) -> bytes:
    return cms.detached_signature(
        DOCUMENT,
        signing_material.certificate,
        signing_material.certificate_key,
        signing_material.chain,
    )


def signed_data(signature: bytes) -> asn1_cms.SignedData:
    info = asn1_cms.ContentInfo.load(signature)
    assert info["content_type"].native == "signed_data"
    data = info["content"]
    assert isinstance(data, asn1_cms.SignedData)
    return data


def test_it_is_detached_sha256_with_signed_attributes(signature: bytes) -> None:
    data = signed_data(signature)
    assert data["encap_content_info"]["content_type"].native == "data"
    assert data["encap_content_info"]["content"].native is None  # detached
    [signer] = data["signer_infos"]
    assert signer["digest_algorithm"]["algorithm"].native == "sha256"
    attributes = {a["type"].native: a["values"].native[0] for a in signer["signed_attrs"]}
    assert attributes["content_type"] == "data"
    assert attributes["message_digest"] == hashlib.sha256(DOCUMENT).digest()
    signing_time = attributes["signing_time"]
    assert isinstance(signing_time, dt.datetime)
    assert abs(signing_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


def test_it_carries_the_signer_certificate_and_the_chain(
    signature: bytes, signing_material: SigningMaterial
) -> None:
    carried = {c.chosen.dump() for c in signed_data(signature)["certificates"]}
    expected = {
        c.public_bytes(serialization.Encoding.DER)
        for c in (signing_material.certificate, *signing_material.chain)
    }
    assert carried == expected


def test_openssl_verifies_it_with_only_the_root(
    signature: bytes, signing_material: SigningMaterial, tmp_path: Path
) -> None:
    root = signing_material.chain[-1].public_bytes(serialization.Encoding.PEM)
    assert openssl_verifies(signature, DOCUMENT, root, tmp_path)


@pytest.mark.parametrize("position", [0, len(DOCUMENT) // 2, len(DOCUMENT) - 1])
def test_openssl_refuses_it_when_one_byte_changed(
    signature: bytes, signing_material: SigningMaterial, tmp_path: Path, position: int
) -> None:
    root = signing_material.chain[-1].public_bytes(serialization.Encoding.PEM)
    changed = bytearray(DOCUMENT)
    changed[position] ^= 0x20
    assert not openssl_verifies(signature, bytes(changed), root, tmp_path)


def test_line_ends_are_signed_as_they_are(
    signature: bytes, signing_material: SigningMaterial, tmp_path: Path
) -> None:
    # Binary mode: a document whose CRLF became LF is a different document.
    root = signing_material.chain[-1].public_bytes(serialization.Encoding.PEM)
    assert not openssl_verifies(signature, DOCUMENT.replace(b"\r\n", b"\n"), root, tmp_path)

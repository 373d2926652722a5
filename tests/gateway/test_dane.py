"""TLSA records for SMTP (RFC 7672): which are usable, and matching a real certificate."""

from __future__ import annotations

import hashlib
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.dane import Tlsa, matches, record_for, tlsa_name, unusable_reason, usable


@pytest.fixture(scope="module")
def certificate() -> bytes:
    pem = trustme.CA().issue_cert("mx.insurer.test").cert_chain_pems[0].bytes()
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.fixture(scope="module")
def other() -> bytes:
    pem = trustme.CA().issue_cert("mx.insurer.test").cert_chain_pems[0].bytes()
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_tlsa_name_is_port_and_protocol_under_the_mx_host() -> None:
    assert tlsa_name("mx.insurer.test.") == "_25._tcp.mx.insurer.test"


@pytest.mark.parametrize(
    ("selector", "mtype", "data"),
    [
        (1, 1, lambda d: hashlib.sha256(spki(d)).digest()),  # 3 1 1, the common one
        (0, 1, lambda d: hashlib.sha256(d).digest()),  # 3 0 1
        (1, 2, lambda d: hashlib.sha512(spki(d)).digest()),  # 3 1 2
        (0, 2, lambda d: hashlib.sha512(d).digest()),  # 3 0 2
        (1, 0, spki),  # 3 1 0: the whole key
        (0, 0, lambda d: d),  # 3 0 0: the whole certificate
    ],
)
def test_dane_ee_records_match_their_certificate_and_no_other(
    certificate: bytes, other: bytes, selector: int, mtype: int, data: object
) -> None:
    record = Tlsa(3, selector, mtype, data(certificate))  # type: ignore[operator]
    assert matches((record,), certificate) == record
    assert matches((record,), other) is None


def test_one_matching_record_among_several_is_enough(certificate: bytes, other: bytes) -> None:
    records = (record_for(other), record_for(certificate, 0, 2))
    assert matches(records, certificate) == records[1]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (Tlsa(0, 1, 1, b"\0" * 32), "PKIX"),
        (Tlsa(1, 1, 1, b"\0" * 32), "PKIX"),
        (Tlsa(2, 1, 1, b"\0" * 32), "DANE-TA"),
        (Tlsa(4, 1, 1, b"\0" * 32), "unknown usage"),
        (Tlsa(3, 2, 1, b"\0" * 32), "unknown selector"),
        (Tlsa(3, 1, 3, b"\0" * 32), "unknown matching type"),
        (Tlsa(3, 1, 1, b"\0" * 31), "31 octets"),
        (Tlsa(3, 1, 2, b"\0" * 32), "32 octets"),
        (Tlsa(3, 1, 0, b""), "0 octets"),
    ],
)
def test_records_smtp_cannot_use_are_named_with_the_reason(record: Tlsa, reason: str) -> None:
    assert reason in (unusable_reason(record) or "")
    assert usable((record,)) == ()


def test_an_unusable_record_never_matches_even_with_the_right_digest(certificate: bytes) -> None:
    pkix = Tlsa(1, 1, 1, hashlib.sha256(spki(certificate)).digest())
    assert matches((pkix,), certificate) is None


def test_garbage_instead_of_a_certificate_matches_nothing(certificate: bytes) -> None:
    assert matches((record_for(certificate),), b"not a certificate") is None

"""TLSA records for SMTP (RFC 7672): which are usable, and matching real certificates and
chains (DANE-EE and DANE-TA), the chain taken from a real TLS handshake."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.dane import (
    Tlsa,
    matches,
    peer_chain,
    record_for,
    tlsa_name,
    unusable_reason,
    usable,
    verify,
)


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


def test_a_certificate_with_an_impossible_version_matches_nothing(
    certificate: bytes, issued: tuple[trustme.CA, trustme.CA, list[bytes]]
) -> None:
    """cryptography raises InvalidVersion (not a ValueError) for X.509 v4+: a hostile MX
    sending one gets no match, not an exception out of delivery."""
    version = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2: X.509 v3
    at = certificate.index(version)
    forged = certificate[: at + 4] + b"\x07" + certificate[at + 5 :]
    assert matches((record_for(certificate),), forged) is None
    _, intermediate, chain = issued
    anchor = record_for(der(intermediate.cert_pem.bytes()), usage=2)
    assert verify((anchor,), [chain[0], forged], "mx.insurer.test") is None


# -- DANE-TA: a trust anchor in the chain the server sends ------------------------------------


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.fixture(scope="module")
def issued() -> tuple[trustme.CA, trustme.CA, list[bytes]]:
    """A root, an intermediate CA (the domain's anchor), and the chain a server sends."""
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("mx.insurer.test", "*.pool.insurer.test")
    return root, intermediate, [der(p.bytes()) for p in leaf.cert_chain_pems]


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1), (1, 2), (0, 0)])
def test_dane_ta_accepts_a_chain_up_to_the_anchor_for_the_mx_name(
    issued: tuple[trustme.CA, trustme.CA, list[bytes]], selector: int, mtype: int
) -> None:
    _, intermediate, chain = issued
    anchor = record_for(der(intermediate.cert_pem.bytes()), selector, mtype, usage=2)
    assert verify((anchor,), chain, "mx.insurer.test") == anchor
    assert verify((anchor,), chain, "a.pool.insurer.test.") == anchor


def test_dane_ta_checks_the_name_the_dates_and_the_signatures(
    issued: tuple[trustme.CA, trustme.CA, list[bytes]],
) -> None:
    _, intermediate, chain = issued
    anchor = record_for(der(intermediate.cert_pem.bytes()), usage=2)
    assert verify((anchor,), chain, "mx.elsewhere.test") is None
    assert verify((anchor,), chain, "a.b.pool.insurer.test") is None
    before_issue = dt.datetime(1999, 12, 31, tzinfo=dt.UTC)  # trustme: valid from 2000
    assert verify((anchor,), chain, "mx.insurer.test", now=before_issue) is None
    impostor = der(trustme.CA().issue_cert("mx.insurer.test").cert_chain_pems[0].bytes())
    assert verify((anchor,), [impostor, *chain[1:]], "mx.insurer.test") is None


def test_dane_ta_needs_the_anchor_in_the_chain(
    issued: tuple[trustme.CA, trustme.CA, list[bytes]],
) -> None:
    root, _, chain = issued  # the server does not send the root
    assert (
        verify((record_for(der(root.cert_pem.bytes()), usage=2),), chain, "mx.insurer.test") is None
    )


def test_a_dane_ta_record_of_the_server_certificate_itself_is_no_anchor(
    issued: tuple[trustme.CA, trustme.CA, list[bytes]],
) -> None:
    _, _, chain = issued
    assert verify((record_for(chain[0], usage=2),), chain, "mx.insurer.test") is None
    assert verify((record_for(chain[0], usage=3),), chain, "any.name.test") is not None


async def test_peer_chain_reads_what_a_real_server_sends(
    issued: tuple[trustme.CA, trustme.CA, list[bytes]],
) -> None:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("mx.insurer.test")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_side)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=server_side)
    client_side = ssl.create_default_context()
    client_side.check_hostname = False
    client_side.verify_mode = ssl.CERT_NONE  # as delivery does for DANE: the chain is checked after
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_side, server_hostname="mx.insurer.test"
    )
    try:
        chain = peer_chain(writer.get_extra_info("ssl_object"))
    finally:
        writer.close()
        server.close()
    assert chain == [der(p.bytes()) for p in leaf.cert_chain_pems]
    assert len(chain) == 2

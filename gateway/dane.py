"""DANE for SMTP (RFC 7672): TLSA records of an MX host, which of them SMTP can use, and
whether a peer's certificate chain satisfies them.

Usable: DANE-EE (usage 3) and DANE-TA (usage 2), with selector 0 (whole certificate) or 1
(public key) and matching type 0 (exact), 1 (SHA-256) or 2 (SHA-512).
- DANE-EE binds the server's own certificate or key: neither its name nor its dates are
  checked (RFC 7672 3.1.1).
- DANE-TA binds a trust anchor that the server must send in its chain (RFC 7672 3.1.2): the
  chain from the server's certificate up to that anchor is then checked as PKIX would
  (signatures, dates, CA constraints) and the certificate must name the MX host (3.2.2).
  A TA given only as a full key (2 1 0) and left out of the chain cannot be matched here.

Not usable, and said so in the log: PKIX-TA and PKIX-EE (usages 0 and 1), which SMTP
clients must not use (RFC 7672 3.1.3); unknown usages, selectors or matching types; data
of the wrong length for its digest. Records that exist but are all unusable still oblige
the client to encrypt (RFC 7672 2.2): that is the "encrypted" outcome of
`gateway.tls_policy`.
"""

from __future__ import annotations

import _ssl
import datetime as dt
import hashlib
import hmac
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
)

from keys import pki

DANE_TA = 2
DANE_EE = 3
_DIGEST_SIZES = {0: None, 1: 32, 2: 64}  # matching type -> length of its data (0: any)


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()[:16]}..."


def tlsa_name(host: str, port: int = 25) -> str:
    return f"_{port}._tcp.{host.rstrip('.')}"


def unusable_reason(record: Tlsa) -> str | None:
    """Why SMTP cannot use ``record``, or None when it can."""
    if record.usage in (0, 1):
        return f"usage {record.usage} (PKIX) is not for SMTP (RFC 7672 3.1.3)"
    if record.usage not in (DANE_TA, DANE_EE):
        return f"unknown usage {record.usage}"
    if record.selector not in (0, 1):
        return f"unknown selector {record.selector}"
    if record.mtype not in _DIGEST_SIZES:
        return f"unknown matching type {record.mtype}"
    size = _DIGEST_SIZES[record.mtype]
    if (size is not None and len(record.data) != size) or not record.data:
        return f"data of {len(record.data)} octets for matching type {record.mtype}"
    return None


def usable(records: tuple[Tlsa, ...]) -> tuple[Tlsa, ...]:
    return tuple(r for r in records if unusable_reason(r) is None)


def matches(records: tuple[Tlsa, ...], certificate_der: bytes) -> Tlsa | None:
    """The first usable record that selects this very certificate, or None."""
    try:
        certificate = pki.load_der_certificate(certificate_der)
    except ValueError:
        return None
    for record in usable(records):
        if hmac.compare_digest(_digest(record.mtype, _selected(record, certificate)), record.data):
            return record
    return None


def verify(
    records: tuple[Tlsa, ...], chain: list[bytes], host: str, now: dt.datetime | None = None
) -> Tlsa | None:
    """The record the peer's chain (its certificate first) satisfies, or None."""
    if not chain:
        return None
    end_entity = tuple(r for r in records if r.usage == DANE_EE)
    if (found := matches(end_entity, chain[0])) is not None:
        return found
    anchors = tuple(r for r in records if r.usage == DANE_TA)
    if not anchors:
        return None
    try:
        certificates = [pki.load_der_certificate(der) for der in chain]
    except ValueError:
        return None
    for der, certificate in zip(chain[1:], certificates[1:], strict=True):
        if (found := matches(anchors, der)) is not None and _chains_to(
            certificates, certificate, host, now
        ):
            return found
    return None


def _chains_to(
    chain: list[x509.Certificate], anchor: x509.Certificate, host: str, now: dt.datetime | None
) -> bool:
    # cryptography's default profile is the Web PKI's (CA/B Forum rules on extensions);
    # a DANE-TA anchor is the domain's own CA, held to PKIX only.
    builder = (
        PolicyBuilder()
        .store(Store([anchor]))
        .extension_policies(ca_policy=_CA_EXTENSIONS, ee_policy=_EE_EXTENSIONS)
    )
    if now is not None:
        builder = builder.time(now)
    try:
        verifier = builder.build_server_verifier(x509.DNSName(host.rstrip(".")))
        verifier.verify(chain[0], chain[1:])
    except Exception:  # VerificationError, or whatever else the peer's certificates break
        return False
    return True


_CA_EXTENSIONS = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, None
)
_EE_EXTENSIONS = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)


def peer_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The certificates the peer sent, its own first (DER), checked or not."""
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:  # Python 3.13 and later
        return [bytes(c) for c in public() or []]
    # 3.10 to 3.12 have it on the private C object only; tests/gateway/test_dane.py
    # fails if that changes.
    raw = ssl_object._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return [c.public_bytes(_ssl.ENCODING_DER) for c in raw or []]


def _selected(record: Tlsa, certificate: x509.Certificate) -> bytes:
    if record.selector == 0:
        return certificate.public_bytes(serialization.Encoding.DER)
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _digest(mtype: int, data: bytes) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def record_for(certificate_der: bytes, selector: int = 1, mtype: int = 1, usage: int = 3) -> Tlsa:
    """The record a server with this certificate (or this CA) publishes (ops and tests)."""
    certificate = pki.load_der_certificate(certificate_der)
    probe = Tlsa(usage, selector, mtype, b"")
    return Tlsa(usage, selector, mtype, _digest(mtype, _selected(probe, certificate)))

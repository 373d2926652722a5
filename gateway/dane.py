"""DANE for SMTP (RFC 7672): TLSA records of an MX host, which of them SMTP can use, and
whether a peer's certificate matches them.

Usable here: DANE-EE, usage 3, with selector 0 (whole certificate) or 1 (public key) and
matching type 0 (exact), 1 (SHA-256) or 2 (SHA-512). DANE-EE binds the server's own key,
so neither its name nor its dates are checked (RFC 7672 3.1.1).

Not usable here, and said so in the log: PKIX-TA and PKIX-EE (usages 0 and 1), which SMTP
clients must not use (RFC 7672 3.1.3); DANE-TA (usage 2), because matching it needs the
peer's whole chain, which Python's ssl module gives only from 3.13 on; unknown selectors or
matching types; and data of the wrong length for its digest. Records that exist but are
all unusable still oblige the client to encrypt (RFC 7672 2.2): that is the "encrypted"
outcome of `gateway.tls_policy`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

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
    if record.usage == DANE_TA:
        return "usage 2 (DANE-TA) is not supported by this gateway"
    if record.usage != DANE_EE:
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
    """The first usable record the peer's end-entity certificate matches, or None."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        return None
    for record in usable(records):
        if record.selector == 0:
            selected = certificate_der
        else:
            selected = certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        if hmac.compare_digest(_digest(record.mtype, selected), record.data):
            return record
    return None


def _digest(mtype: int, data: bytes) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def record_for(certificate_der: bytes, selector: int = 1, mtype: int = 1) -> Tlsa:
    """The DANE-EE record a server with this certificate publishes (ops and tests)."""
    certificate = x509.load_der_x509_certificate(certificate_der)
    selected = (
        certificate_der
        if selector == 0
        else certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Tlsa(DANE_EE, selector, mtype, _digest(mtype, selected))

"""RFC 3161 time-stamps on checkpoints: a time that does not rest on the fund's own keys.

The token certifies the SHA-256 of a checkpoint's signed note bytes. Requests are built and
responses parsed and verified by rfc3161-client (Trail of Bits, the library behind
sigstore-python's timestamps); this module adds the HTTP exchange and the checks a verdict
needs: the imprint is of these bytes, the signature holds, the chain ends at a configured
TSA root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from cryptography import x509
from cryptography.x509.oid import NameOID
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimeStampRequest,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
# A reply holds a token and a short chain: a few kilobytes. Anything far larger is not one.
MAX_REPLY_BYTES = 256 * 1024

_DIGESTS = {
    "2.16.840.1.101.3.4.2.1": ("SHA-256", hashlib.sha256),
    "2.16.840.1.101.3.4.2.2": ("SHA-384", hashlib.sha384),
    "2.16.840.1.101.3.4.2.3": ("SHA-512", hashlib.sha512),
}


class TimestampError(Exception):
    """A time-stamp that could not be had, read or trusted; the message says why."""


@dataclass(frozen=True)
class TimestampInfo:
    """What a verified token certifies: when, by which TSA, under which serial number."""

    time: dt.datetime
    tsa_name: str
    serial: int


def request(data: bytes) -> bytes:
    """A DER TimeStampReq for SHA-256(data), with a nonce and asking for the TSA certificate."""
    return _build_request(data).as_bytes()


def _build_request(data: bytes) -> TimeStampRequest:
    return (
        TimestampRequestBuilder()
        .data(data)
        .hash_algorithm(HashAlgorithm.SHA256)
        .nonce(nonce=True)
        .cert_request(cert_request=True)
        .build()
    )


def fetch(url: str, data: bytes, timeout: float) -> bytes:
    """Ask the TSA at `url` to time-stamp `data`; returns its DER TimeStampResp.

    The reply is checked against the request (granted, same imprint, same nonce) so that a
    stale or misdirected reply is caught here; trusting its signer is `verify`'s job.
    """
    built = _build_request(data)
    query = built.as_bytes()
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream(
                "POST", url, content=query, headers={"Content-Type": QUERY_TYPE}
            ) as reply,
        ):
            if reply.status_code != 200:
                raise TimestampError(f"TSA {url} answered HTTP {reply.status_code}")
            content_type = reply.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != REPLY_TYPE:
                raise TimestampError(f"TSA {url} answered {content_type or 'no content type'}")
            body = bytearray()
            for chunk in reply.iter_bytes():
                body += chunk
                if len(body) > MAX_REPLY_BYTES:
                    raise TimestampError(f"TSA {url} reply exceeds {MAX_REPLY_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise TimestampError(f"TSA {url} unreachable: {exc}") from None

    response = _parse(bytes(body))
    _check_granted(response)
    if response.tst_info.nonce != built.nonce:
        raise TimestampError(f"TSA {url} reply does not answer our request (nonce differs)")
    _check_imprint(response, data)
    return bytes(body)


def verify(
    response_or_token: bytes, data: bytes, tsa_certificates: Sequence[bytes]
) -> TimestampInfo:
    """Check a time-stamp over `data` and return what it certifies.

    `response_or_token` is a DER TimeStampResp or the bare token (CMS ContentInfo) inside
    one; `tsa_certificates` are the trusted TSA roots (PEM, possibly several per item, or
    DER). The imprint must be of `data`, the token's signature must hold, and the signing
    certificate must chain to one of the roots and carry the timeStamping purpose.
    """
    roots = _load_certificates(tsa_certificates)
    if not roots:
        raise TimestampError("no TSA certificate configured: a time-stamp cannot be trusted")
    response = _parse(_as_response(response_or_token))
    _check_granted(response)
    _check_imprint(response, data)

    builder = VerifierBuilder()
    for root in roots:
        builder = builder.add_root_certificate(root)
    try:
        builder.build().verify_message(response, data)
    except (VerificationError, ValueError) as exc:  # ValueError: from the CMS layer
        raise TimestampError(f"time-stamp not trusted: {_reason(str(exc))}") from exc

    info = response.tst_info
    time = info.gen_time
    if time.tzinfo is None:  # GeneralizedTime in a token is UTC by definition (RFC 3161 2.4.2)
        time = time.replace(tzinfo=dt.UTC)
    return TimestampInfo(time=time, tsa_name=_signer_name(response), serial=info.serial_number)


def _reason(detail: str) -> str:
    # The library passes OpenSSL's error stack through; say what it means first.
    if "certificate verify error" in detail:
        return f"the TSA certificate does not chain to a configured TSA root ({detail})"
    if "signature failure" in detail or "digest failure" in detail:
        return f"the token's signature does not match its content ({detail})"
    return detail


def _parse(der: bytes) -> TimeStampResponse:
    try:
        return decode_timestamp_response(der)
    except Exception as exc:  # the parser's errors are of several types, all "not a reply"
        raise TimestampError(f"not an RFC 3161 time-stamp response: {exc}") from None


def _check_granted(response: TimeStampResponse) -> None:
    if response.status not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        detail = "; ".join(response.status_string) or "no reason given"
        raise TimestampError(f"TSA refused the time-stamp (status {response.status}): {detail}")


def _check_imprint(response: TimeStampResponse, data: bytes) -> None:
    imprint = response.tst_info.message_imprint
    known = _DIGESTS.get(imprint.hash_algorithm.dotted_string)
    if known is None:
        raise TimestampError(f"time-stamp uses unsupported hash {imprint.hash_algorithm}")
    label, digest = known
    if digest(data).digest() != imprint.message:
        raise TimestampError(
            f"time-stamp certifies {label} {imprint.message.hex()[:16]}…, "
            f"not these bytes ({digest(data).hexdigest()[:16]}…)"
        )


def _as_response(der: bytes) -> bytes:
    """Wrap a bare token into a granted TimeStampResp, which is what the parser reads.

    A TimeStampResp is SEQUENCE { PKIStatusInfo SEQUENCE, token }; a token is a ContentInfo,
    SEQUENCE { OID, ... }: the tag of the first inner element tells them apart.
    """
    try:
        inner = _der_content_start(der, 0)
        first_inner_tag = der[inner]
    except (IndexError, ValueError):
        raise TimestampError("not an RFC 3161 time-stamp response or token (bad DER)") from None
    if der[0] != 0x30:
        raise TimestampError("not an RFC 3161 time-stamp response or token")
    if first_inner_tag == 0x30:
        return der
    status = bytes.fromhex("3003020100")  # PKIStatusInfo { status granted }
    return b"\x30" + _der_length(len(status) + len(der)) + status + der


def _der_content_start(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2
    size = first & 0x7F
    if not 0 < size <= 4:
        raise ValueError("unsupported DER length")
    return offset + 2 + size


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _load_certificates(blobs: Sequence[bytes]) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    for blob in blobs:
        try:
            if b"-----BEGIN" in blob:
                certificates.extend(x509.load_pem_x509_certificates(blob))
            else:
                certificates.append(x509.load_der_x509_certificate(blob))
        except (ValueError, x509.InvalidVersion) as exc:
            raise TimestampError(f"configured TSA certificate unreadable: {exc}") from None
    return certificates


def _signer_name(response: TimeStampResponse) -> str:
    """The signing certificate's common name (its whole subject if it has none).

    The certificate is the one the verification above chained to a root, so its name is
    vouched for; the token's optional tsa field is not checked by anyone.
    """
    signer_info = next(iter(response.signed_data.signer_infos))
    for der in response.signed_data.certificates:
        cert = x509.load_der_x509_certificate(der)
        if (cert.issuer, cert.serial_number) == (signer_info.issuer, signer_info.serial_number):
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            value = names[0].value if names else cert.subject.rfc4514_string()
            return value if isinstance(value, str) else value.decode(errors="replace")
    return "unknown TSA"

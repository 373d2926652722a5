"""Checks one statement document against its detached CMS signature (RFC 5652).

The same checks `openssl cms -verify -binary -content X.pdf -CAfile root.pem` makes, plus
what only the archive knows: that the signer certificate is one the fund published, its
state, and that the signing time lies inside its validity and before any compromise.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import threading
from typing import Any

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from keys.archive import format_time
from verifier.report import DocStatus, DocumentCheck, KeyInfo, SignerInfo
from verifier.service import outside_service, retired_at
from verifier.trust import Trust

# The signer's clock and ours may disagree a little; beyond this a signing time in the
# future is a lie.
CLOCK_SKEW = dt.timedelta(minutes=10)

_HASHES: dict[str, tuple[type[hashes.HashAlgorithm], str]] = {
    "sha256": (hashes.SHA256, "sha256"),
    "sha384": (hashes.SHA384, "sha384"),
    "sha512": (hashes.SHA512, "sha512"),
}


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class Signature:
    """A .p7s read once: the digest it states finds its document (signed_digest), then it
    is checked (check_document), without parsing it twice."""

    parts: tuple[asn1_cms.SignerInfo, asn1_cms.CMSAttributes, list[asn1_x509.Certificate]] | None
    problem: _Invalid | None  # why it cannot be read, when parts is None
    attributes: _Attributes | Exception | None = None  # read on first use, or why not


def read(signature: bytes) -> Signature:
    try:
        return Signature(_parse(signature), None)
    except _Invalid as exc:
        return Signature(None, exc)


def _attributes_of(signature: Signature) -> _Attributes:
    """The signed attributes, read once; raises what _attributes raises, every time."""
    assert signature.parts is not None
    if signature.attributes is None:
        try:
            signature.attributes = _attributes(signature.parts[1])
        except (_Invalid, ValueError, TypeError, KeyError, OverflowError) as exc:
            signature.attributes = exc
    if isinstance(signature.attributes, Exception):
        raise signature.attributes
    return signature.attributes


def check_document(
    filename: str,
    document: bytes | None,
    signature: bytes | Signature,
    trust: Trust,
    now: dt.datetime,
) -> DocumentCheck:
    """`document` is the decoded bytes of the signed file, None when it is missing.
    `signature`: the .p7s, or what read() made of it."""
    try:
        return _check(filename, document, signature, trust, now)
    except (ValueError, TypeError, KeyError, OverflowError, UnsupportedAlgorithm) as exc:
        # asn1crypto and cryptography parse lazily: a corrupt certificate or key inside
        # the .p7s can surface at any access, long after the first parse succeeded.
        return DocumentCheck(
            filename=filename,
            status=DocStatus.INVALID,
            size=None if document is None else len(document),
            sha256=None if document is None else hashlib.sha256(document).hexdigest(),
            reason="malformed_signature",
            detail=type(exc).__name__,
        )


def _check(
    filename: str,
    document: bytes | None,
    signature: bytes | Signature,
    trust: Trust,
    now: dt.datetime,
) -> DocumentCheck:
    size = None if document is None else len(document)
    sha256_digest = None if document is None else hashlib.sha256(document).digest()
    sha256 = None if sha256_digest is None else sha256_digest.hex()
    base = DocumentCheck(filename=filename, status=DocStatus.INVALID, size=size, sha256=sha256)
    if document is None:
        return _replace(base, reason="document_missing")
    if isinstance(signature, bytes):
        signature = read(signature)
    if signature.parts is None:
        assert signature.problem is not None
        return _replace(base, reason=signature.problem.reason, detail=signature.problem.detail)
    signer_info, signed_attrs, certificates = signature.parts
    try:
        digest_name = signer_info["digest_algorithm"]["algorithm"].native
        if digest_name not in _HASHES:
            raise _Invalid("unsupported_algorithm", str(digest_name))
        hash_cls, hashlib_name = _HASHES[digest_name]
        attrs = _attributes_of(signature)
        signer = _find_signer(signer_info["sid"], certificates, trust)
    except _Invalid as exc:
        return _replace(base, reason=exc.reason, detail=exc.detail)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        return _replace(base, reason="malformed_signature", detail=type(exc).__name__)

    signing_time = attrs.signing_time
    info = trust.derived("signer_info", signer, lambda: _signer_info(signer))
    base = _replace(base, signer=info, signing_time=signing_time)

    if hashlib_name == "sha256":
        digest = sha256_digest
    else:
        digest = hashlib.new(hashlib_name, document).digest()
    if digest != attrs.message_digest:
        return _replace(base, reason="digest_mismatch")
    try:
        _verify_signature(signer, signer_info, signed_attrs.dump(), hash_cls())
    except _Invalid as exc:
        return _replace(base, reason=exc.reason, detail=exc.detail)
    try:
        usage = trust.derived("usage_problem", signer, lambda: _usage_problem(signer))
    except x509.DuplicateExtension as exc:  # RFC 5280 4.2: cryptography will not read them
        return _replace(base, reason="malformed_signature", detail=type(exc).__name__)
    if usage is not None:
        return _replace(base, reason="wrong_key_usage", detail=usage)
    if trust.issuing_root(signer) is None:
        return _replace(base, reason="not_fund_root")
    published = trust.certificate(info.sha256)
    if published is None:
        return _replace(base, reason="certificate_not_in_archive")
    key = KeyInfo(
        generation=published.generation,
        state=published.state,
        retired_at=published.entered("retired"),
        compromised_at=published.revocation.compromised_at if published.revocation else None,
        revoked_at=published.revocation.revoked_at if published.revocation else None,
        revocation_reason=published.revocation.reason if published.revocation else None,
    )
    base = _replace(base, key=key)
    if signing_time is None:
        return _replace(base, reason="no_signing_time")
    if not info.not_before <= signing_time <= info.not_after:
        return _replace(base, reason="signed_outside_validity")
    if signing_time > now + CLOCK_SKEW:
        return _replace(base, reason="signed_in_future")
    if published.revocation is not None:
        if signing_time >= published.revocation.compromised_at:
            return _replace(base, status=DocStatus.REVOKED, reason="signed_after_compromise")
        return _replace(base, status=DocStatus.REVOKED, reason="revoked_key")
    outside = outside_service(published, signing_time)
    if outside is not None:
        retired = retired_at(published)
        detail = f"in service until {format_time(retired)}" if retired else "never activated"
        return _replace(base, reason=outside, detail=detail)
    return _replace(base, status=DocStatus.VALID, reason=None)


def _usage_problem(cert: x509.Certificate) -> str | None:
    """What `openssl cms -verify -purpose smimesign` would refuse in the signer: a CA, a
    key not for signatures, an extended key usage other than e-mail protection."""
    extensions = cert.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "a CA certificate"
    except x509.ExtensionNotFound:
        pass
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        if not (usage.digital_signature or usage.content_commitment):
            return "keyUsage has neither digitalSignature nor nonRepudiation"
    except x509.ExtensionNotFound:
        return "no keyUsage"
    try:
        extended = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.EMAIL_PROTECTION not in extended:
            return "extendedKeyUsage lacks emailProtection"
    except x509.ExtensionNotFound:
        return "no extendedKeyUsage"
    return None


def _replace(check: DocumentCheck, **changes: object) -> DocumentCheck:
    return dataclasses.replace(check, **changes)  # type: ignore[arg-type]


def _parse(
    signature: bytes,
) -> tuple[asn1_cms.SignerInfo, asn1_cms.CMSAttributes, list[asn1_x509.Certificate]]:
    try:
        info = asn1_cms.ContentInfo.load(signature, strict=True)
        if info["content_type"].native != "signed_data":
            raise _Invalid("not_signed_data", str(info["content_type"].native))
        signed = info["content"]
        if signed["encap_content_info"]["content"].native is not None:
            raise _Invalid("not_detached")
        signer_infos = signed["signer_infos"]
        if len(signer_infos) != 1:
            raise _Invalid("malformed_signature", f"{len(signer_infos)} signers")
        signer_info = signer_infos[0]
        signed_attrs = signer_info["signed_attrs"]
        if not isinstance(signed_attrs, asn1_cms.CMSAttributes) or len(signed_attrs) == 0:
            raise _Invalid("no_signed_attributes")
        certificates = [
            choice.chosen
            for choice in (signed["certificates"] or [])
            if choice.name == "certificate"
        ]
        return signer_info, signed_attrs, certificates
    except _Invalid:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise _Invalid("malformed_signature", type(exc).__name__) from exc


# The attributes a check reads. Every other one must still parse (asn1crypto refuses a
# malformed one, and so does the check), but the same few come with every statement (the
# gateway's S/MIME capabilities): one that parsed is known by its bytes.
_READ = frozenset({"message_digest", "content_type", "signing_time"})
_READABLE_MAX = 256
_readable_seen: set[bytes] = set()
_readable_lock = threading.Lock()


def _readable(attr: asn1_cms.CMSAttribute, values: Any) -> bool:
    """True, or what reading the attribute's value raises (never kept)."""
    der = attr.dump()
    with _readable_lock:
        if der in _readable_seen:
            return True
    values[0].native  # noqa: B018 - parsed for the errors it raises
    with _readable_lock:
        if len(_readable_seen) >= _READABLE_MAX:
            _readable_seen.clear()
        _readable_seen.add(der)
    return True


@dataclasses.dataclass(frozen=True)
class _Attributes:
    message_digest: bytes
    signing_time: dt.datetime | None


def _attributes(signed_attrs: asn1_cms.CMSAttributes) -> _Attributes:
    found: dict[str, object] = {}
    for attr in signed_attrs:
        kind = attr["type"].native
        values = attr["values"]
        if kind in found or len(values) != 1:
            # RFC 5652 5.3: these attributes are single-valued and appear once.
            if kind in _READ:
                raise _Invalid("malformed_signature", f"repeated {kind}")
            continue
        found[kind] = values[0].native if kind in _READ else _readable(attr, values)
    if found.get("content_type") != "data":
        raise _Invalid("malformed_signature", "content type attribute is not id-data")
    digest = found.get("message_digest")
    if not isinstance(digest, bytes):
        raise _Invalid("malformed_signature", "no message digest attribute")
    signing_time = found.get("signing_time")
    if signing_time is not None and not isinstance(signing_time, dt.datetime):
        raise _Invalid("malformed_signature", "unreadable signing time")
    return _Attributes(
        message_digest=digest,
        signing_time=signing_time.astimezone(dt.UTC) if signing_time else None,
    )


def _find_signer(
    sid: asn1_cms.SignerIdentifier, embedded: list[asn1_x509.Certificate], trust: Trust
) -> x509.Certificate:
    candidates = [trust.certificate_from_der(c.dump()) for c in embedded]
    candidates.extend(trust.archive_certificates())
    if sid.name == "issuer_and_serial_number":
        serial = sid.chosen["serial_number"].native
        issuer_der = sid.chosen["issuer"].dump()
        for cert in candidates:
            if cert.serial_number == serial and cert.issuer.public_bytes() == issuer_der:
                return cert
        # Same name, different DER encoding of it: compare the parsed names.
        wanted = asn1_x509.Name.load(issuer_der)
        for cert in candidates:
            if (
                cert.serial_number == serial
                and asn1_x509.Name.load(cert.issuer.public_bytes()) == wanted
            ):
                return cert
    elif sid.name == "subject_key_identifier":
        wanted_ski = sid.chosen.native
        for cert in candidates:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == wanted_ski:
                return cert
    raise _Invalid("signer_unknown")


def _verify_signature(
    signer: x509.Certificate,
    signer_info: asn1_cms.SignerInfo,
    signed_attrs_der: bytes,
    hash_algorithm: hashes.HashAlgorithm,
) -> None:
    # RFC 5652 5.4: the signature covers the DER of the attributes as a SET OF, not the
    # [0] IMPLICIT tag they travel under.
    data = b"\x31" + signed_attrs_der[1:]
    signature = signer_info["signature"].native
    algo = signer_info["signature_algorithm"].signature_algo
    public = signer.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey) and algo == "ecdsa":
            public.verify(signature, data, ec.ECDSA(hash_algorithm))
        elif isinstance(public, rsa.RSAPublicKey) and algo == "rsassa_pkcs1v15":
            public.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
        else:
            raise _Invalid("unsupported_algorithm", f"{algo} with {type(public).__name__}")
    except InvalidSignature as exc:
        raise _Invalid("bad_signature") from exc


def _signer_info(cert: x509.Certificate) -> SignerInfo:
    return SignerInfo(
        subject=_name_text(cert.subject),
        issuer=_name_text(cert.issuer),
        serial=format(cert.serial_number, "x"),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


# Control characters and bidirectional overrides could disguise what a user reads.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _name_text(name: x509.Name) -> str:
    """The name as a person reads it (most specific first), values unescaped: the page
    escapes them for HTML, and RFC 4514 backslashes would only get in the way."""
    parts = [
        f"{attr.rfc4514_attribute_name}={attr.value!s}"
        for rdn in reversed(name.rdns)
        for attr in rdn
    ]
    return _CONTROL.sub("\ufffd", ", ".join(parts))[:500]


def signed_digest(signature: bytes | Signature) -> tuple[str, bytes] | None:
    """The hash name and the digest a .p7s states for its document (None if unreadable):
    lets a signature find its document by content when a mail program renamed it."""
    if isinstance(signature, bytes):
        signature = read(signature)
    if signature.parts is None:
        return None
    try:
        name = signature.parts[0]["digest_algorithm"]["algorithm"].native
        if name not in _HASHES:
            return None
        return _HASHES[name][1], _attributes_of(signature).message_digest
    except (_Invalid, ValueError, TypeError, KeyError, OverflowError):
        return None

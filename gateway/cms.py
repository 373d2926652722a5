"""The detached CMS signature (RFC 5652) that travels next to each statement document.

A `.p7s` is DER `SignedData` without the content, SHA-256, with signed attributes
(contentType, messageDigest, signingTime) and the signer's certificate plus its issuers,
so `openssl cms -verify -binary -inform DER -content DOC -CAfile root.pem` needs nothing
but the fund's root to check it.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

# Binary: sign the bytes as they are. Without it OpenSSL would canonicalise line ends as
# for S/MIME text, and a PDF is not text.
_OPTIONS = (pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary)


def detached_signature(
    document: bytes,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    chain: Iterable[x509.Certificate],
) -> bytes:
    """DER CMS SignedData over `document` (its decoded bytes), content left out."""
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(document)
        .add_signer(certificate, key, hashes.SHA256())
    )
    for issuer in chain:
        builder = builder.add_certificate(issuer)
    return builder.sign(serialization.Encoding.DER, _OPTIONS)

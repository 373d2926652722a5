"""What the gateway needs to seal: the active signing material of a domain.

`SigningMaterial` is the contract between keys/ and gateway/. `SigningKeys` loads it from
a key store and notices a change on disk (a rotation), so a running gateway picks up a
new active generation without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


class NoActiveKey(Exception):
    """The store has no active generation for the domain (or no such domain)."""


@dataclass(frozen=True)
class SigningMaterial:
    domain: str
    generation: str
    rsa_selector: str
    rsa_key: rsa.RSAPrivateKey
    ed25519_selector: str
    ed25519_key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate
    certificate_key: ec.EllipticCurvePrivateKey
    # Issuer certificates up to and including the root, included in each CMS signature.
    chain: tuple[x509.Certificate, ...]

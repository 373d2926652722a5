"""Fixtures shared by every package's tests."""

from __future__ import annotations

import datetime as dt

import pytest

from keys import pki
from keys.signing import SigningMaterial

DOMAIN = "caisses.example"
ORG = "Caisses Sociales de Monaco"


def make_material(
    domain: str = DOMAIN,
    generation: str = "202611",
    issued_at: dt.datetime | None = None,
    org: str = ORG,
) -> SigningMaterial:
    """Signing material built straight from keys.pki, for tests that need no key store."""
    now = issued_at or dt.datetime.now(dt.UTC)
    root_key = pki.new_root_key()
    root = pki.make_root(root_key, org, now)
    cert_key = pki.new_signing_cert_key()
    certificate = pki.issue_signing_certificate(
        pki.Issuer(root, root_key), cert_key, org, domain, generation, now
    )
    return SigningMaterial(
        domain=domain,
        generation=generation,
        rsa_selector=f"s{generation}r",
        rsa_key=pki.new_rsa_key(),
        ed25519_selector=f"s{generation}e",
        ed25519_key=pki.new_ed25519_key(),
        certificate=certificate,
        certificate_key=cert_key,
        chain=(root,),
    )


@pytest.fixture(scope="session")
def signing_material() -> SigningMaterial:
    return make_material()

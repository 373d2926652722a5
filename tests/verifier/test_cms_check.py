"""The CMS checks one by one, and agreement with `openssl cms -verify` on the same files."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import algos
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys import pki
from keys.archive import parse_archive
from keys.signing import SigningMaterial
from tests.conftest import ORG
from tests.verifier.conftest import (
    KeyHistory,
    archive_document,
    cms_detached,
    trust_with,
    write_archive,
)
from verifier import cms_check
from verifier import trust as trust_module
from verifier.cms_check import check_document
from verifier.report import DocStatus
from verifier.trust import Trust, TrustSource

DOCUMENT = b"%PDF-1.4\n" + bytes(range(256)) * 40
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def signature(material: SigningMaterial) -> bytes:
    return cms_detached(DOCUMENT, material)


def test_a_valid_signature_reports_its_signer(
    material: SigningMaterial, signature: bytes, trust: Trust
) -> None:
    check = check_document("d.pdf", DOCUMENT, signature, trust, NOW)
    assert check.status is DocStatus.VALID, check.reason
    assert check.signer is not None
    assert check.signer.sha256 == pki.fingerprint(material.certificate)
    assert check.signer.serial == pki.serial_hex(material.certificate)
    assert "statement signing 202611" in check.signer.subject
    assert check.signing_time is not None
    # Signed by the fixture just now; NOW is the module's import, minutes ago in a long run.
    assert abs(check.signing_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


@pytest.mark.parametrize("offset", [0, 100, len(DOCUMENT) - 1])
def test_any_changed_byte_is_a_digest_mismatch(signature: bytes, trust: Trust, offset: int) -> None:
    changed = bytearray(DOCUMENT)
    changed[offset] ^= 0x80
    check = check_document("d.pdf", bytes(changed), signature, trust, NOW)
    assert check.status is DocStatus.INVALID
    assert check.reason == "digest_mismatch"


def test_a_signature_over_other_attributes_is_bad(signature: bytes, trust: Trust) -> None:
    """The digest attribute is intact but the signature value is not: the signed
    attributes are checked, not only the digest."""
    info = asn1_cms.ContentInfo.load(signature)
    signer = info["content"]["signer_infos"][0]
    raw = bytearray(signer["signature"].native)
    raw[-1] ^= 0x01
    signer["signature"] = bytes(raw)
    forged = info.dump(force=True)
    check = check_document("d.pdf", DOCUMENT, forged, trust, NOW)
    assert check.status is DocStatus.INVALID
    assert check.reason in ("bad_signature", "malformed_signature")


def test_a_certificate_from_another_root_is_not_the_fund_s(trust: Trust) -> None:
    from tests.conftest import make_material

    stranger = make_material()
    check = check_document("d.pdf", DOCUMENT, cms_detached(DOCUMENT, stranger), trust, NOW)
    assert check.reason == "not_fund_root"


def test_a_certificate_the_fund_never_published_is_refused(material: SigningMaterial) -> None:
    """Issued by a root the archive lists (by mistake, or by a thief of the root key) but
    not itself in the archive: not one of the fund's signing certificates."""
    key = pki.new_root_key()
    root = pki.make_root(key, ORG, NOW)
    cert_key = pki.new_signing_cert_key()
    cert = pki.issue_signing_certificate(
        pki.Issuer(root, key), cert_key, ORG, "caisses.example", "202611", NOW
    )
    unpublished = dataclasses.replace(
        material, certificate=cert, certificate_key=cert_key, chain=(root,)
    )
    trust = Trust(parse_archive(archive_document([(material, KeyHistory())], (root,))))
    signature = cms_detached(DOCUMENT, unpublished)
    assert check_document("d.pdf", DOCUMENT, signature, trust, NOW).reason == (
        "certificate_not_in_archive"
    )


def test_a_signing_time_outside_the_certificate_validity_is_refused(
    material: SigningMaterial, trust: Trust
) -> None:
    later = NOW + dt.timedelta(days=800)
    signature = _sign_at(material, later)
    check = check_document("d.pdf", DOCUMENT, signature, trust, later)
    assert check.reason == "signed_outside_validity"


def _sign_at(material: SigningMaterial, when: dt.datetime) -> bytes:
    """A detached signature whose signingTime is `when`, assembled with asn1crypto."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(DOCUMENT)
    attrs = asn1_cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["data"]},
            {"type": "signing_time", "values": [asn1_cms.Time({"utc_time": when})]},
            {"type": "message_digest", "values": [digest.finalize()]},
        ]
    )
    signature = material.certificate_key.sign(attrs.dump(), ec.ECDSA(hashes.SHA256()))
    cert = asn1_x509.Certificate.load(material.certificate.public_bytes(serialization.Encoding.DER))
    sha256 = algos.DigestAlgorithm({"algorithm": "sha256"})
    signer = asn1_cms.SignerInfo(
        {
            "version": "v1",
            "sid": asn1_cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": cert.issuer,
                        "serial_number": cert.serial_number,
                    }
                }
            ),
            "digest_algorithm": sha256,
            "signed_attrs": attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
            "signature": signature,
        }
    )
    signed = asn1_cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [sha256],
            "encap_content_info": {"content_type": "data"},
            "certificates": [cert],
            "signer_infos": [signer],
        }
    )
    der: bytes = asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
    return der


def test_a_hand_built_signature_verifies_like_the_builder_s(
    material: SigningMaterial, trust: Trust
) -> None:
    signature = _sign_at(material, NOW)
    assert check_document("d.pdf", DOCUMENT, signature, trust, NOW).status is DocStatus.VALID


def test_a_signing_time_in_the_future_is_refused(material: SigningMaterial, trust: Trust) -> None:
    signature = _sign_at(material, NOW + dt.timedelta(days=2))
    assert check_document("d.pdf", DOCUMENT, signature, trust, NOW).reason == "signed_in_future"


def test_an_attached_signature_is_not_a_detached_one(
    material: SigningMaterial, trust: Trust
) -> None:
    attached = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(DOCUMENT)
        .add_signer(material.certificate, material.certificate_key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    assert check_document("d.pdf", DOCUMENT, attached, trust, NOW).reason == "not_detached"


@pytest.mark.parametrize(
    "garbage", [b"", b"\x30", b"\x30\x03\x02\x01\x01", b"not der at all", b"\x30\x80" * 100]
)
def test_garbage_is_a_malformed_signature(trust: Trust, garbage: bytes) -> None:
    check = check_document("d.pdf", DOCUMENT, garbage, trust, NOW)
    assert check.status is DocStatus.INVALID
    assert check.reason in ("malformed_signature", "not_signed_data")


def test_a_missing_document_is_named(signature: bytes, trust: Trust) -> None:
    assert check_document("d.pdf", None, signature, trust, NOW).reason == "document_missing"


def test_openssl_agrees(
    material: SigningMaterial, signature: bytes, trust: Trust, tmp_path: Path
) -> None:
    """What the /openssl page tells insurers to run gives the same answer as we do."""
    (tmp_path / "d.pdf").write_bytes(DOCUMENT)
    (tmp_path / "d.pdf.p7s").write_bytes(signature)
    (tmp_path / "root.pem").write_bytes(trust.roots_pem())
    (tmp_path / "bad.pdf").write_bytes(DOCUMENT + b"x")
    command = [
        "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "d.pdf.p7s",
        "-CAfile", "root.pem", "-purpose", "any", "-out", "/dev/null", "-content",
    ]  # fmt: skip
    good = subprocess.run([*command, "d.pdf"], cwd=tmp_path, capture_output=True, timeout=30)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run([*command, "bad.pdf"], cwd=tmp_path, capture_output=True, timeout=30)
    assert bad.returncode != 0
    assert check_document("bad.pdf", DOCUMENT + b"x", signature, trust, NOW).status is (
        DocStatus.INVALID
    )


@pytest.mark.parametrize("profile", ["tls_server", "encryption_only", "ca"])
def test_a_certificate_not_made_for_signing_documents_is_refused(
    material: SigningMaterial, profile: str
) -> None:
    """What `openssl cms -verify -purpose smimesign` refuses, the verifier refuses too, even
    from a root the archive lists: a TLS server certificate, a key for encryption, a CA."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = pki.new_root_key()
    root = pki.make_root(key, ORG, NOW)
    cert_key = pki.new_signing_cert_key()
    usage = dict.fromkeys(
        (
            "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
        ),
        False,
    )  # fmt: skip
    usage["key_encipherment"] = True
    usage["digital_signature"] = profile == "tls_server"
    eku = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if profile == "tls_server"
        else (ExtendedKeyUsageOID.EMAIL_PROTECTION)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "not for CMS")]))
        .issuer_name(root.subject)
        .public_key(cert_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=profile == "ca", path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    )
    cert = builder.sign(key, hashes.SHA384())
    wrong = dataclasses.replace(material, certificate=cert, certificate_key=cert_key, chain=(root,))
    trust = Trust(parse_archive(archive_document([(material, KeyHistory())], (root,))))
    check = check_document("d.pdf", DOCUMENT, cms_detached(DOCUMENT, wrong), trust, NOW)
    assert check.status is DocStatus.INVALID
    assert check.reason == "wrong_key_usage"


# --- read once, facts kept per certificate: the same results as a first reading ----------


def _cold_trust(material: SigningMaterial, tmp_path: Path) -> Trust:
    cms_check._readable_seen.clear()
    return trust_with(tmp_path, [(material, KeyHistory("active"))])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_damaged_signature_reads_the_same_shared_and_warm_as_fresh_and_cold(
    material: SigningMaterial, signature: bytes, tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:  # fmt: skip
    """verify.py reads a .p7s once for pairing and checking, and the trust keeps facts
    about certificates across checks: neither changes any result, whatever the damage."""
    damaged = bytearray(signature)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
    candidate = bytes(damaged)
    cold = _cold_trust(material, tmp_path_factory.mktemp("cold"))
    expected = _outcome(
        lambda: (
            cms_check.signed_digest(candidate),
            check_document("d.pdf", DOCUMENT, candidate, cold, NOW),
        )
    )
    warm = trust_with(tmp_path_factory.mktemp("warm"), [(material, KeyHistory("active"))])
    assert check_document("d.pdf", DOCUMENT, signature, warm, NOW).status is DocStatus.VALID
    once = cms_check.read(candidate)
    shared = _outcome(
        lambda: (
            cms_check.signed_digest(once),
            check_document("d.pdf", DOCUMENT, once, warm, NOW),
        )
    )
    assert shared == expected


def _outcome(run: Callable[[], object]) -> object:
    try:
        return run()
    except Exception as exc:  # a certificate's own parser raises its own types
        return type(exc).__name__


def test_facts_kept_for_one_archive_do_not_outlive_a_revocation(
    material: SigningMaterial, signature: bytes, tmp_path: Path
) -> None:
    directory = write_archive(tmp_path / "public", [(material, KeyHistory("active"))])
    source = TrustSource(directory)
    assert check_document("d.pdf", DOCUMENT, signature, source.get(), NOW).status is (
        DocStatus.VALID
    )
    compromised = NOW - dt.timedelta(days=1)
    revoked = write_archive(tmp_path / "next", [(material, KeyHistory("revoked", compromised))])
    (revoked / "archive.json").replace(directory / "archive.json")
    check = check_document("d.pdf", DOCUMENT, signature, source.get(), NOW)
    assert (check.status, check.reason) == (DocStatus.REVOKED, "signed_after_compromise")


def test_certificate_facts_are_bounded(material: SigningMaterial, trust: Trust) -> None:
    for index in range(trust_module._DERIVED_MAX + 10):
        assert trust.derived("test", index, lambda i=index: i) == index  # type: ignore[misc]
    assert len(trust._derived) <= trust_module._DERIVED_MAX


def test_a_certificate_with_an_impossible_version_is_a_malformed_signature(
    signature: bytes, trust: Trust
) -> None:
    """cryptography refuses an X.509 version outside v1-v3 with its own exception class, not
    a ValueError: it must still be a broken signature, not an unreadable upload."""
    version = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2: X.509 v3
    at = signature.index(version)
    forged = signature[: at + 4] + b"\x07" + signature[at + 5 :]
    check = check_document("d.pdf", DOCUMENT, forged, trust, NOW)
    assert (check.status, check.reason) == (DocStatus.INVALID, "malformed_signature")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(where=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_any_changed_byte_of_the_p7s_gives_a_result_never_an_exception(
    signature: bytes, trust: Trust, where: float, flip: int
) -> None:
    forged = bytearray(signature)
    forged[int(where * len(forged))] ^= flip
    check = check_document("d.pdf", DOCUMENT, bytes(forged), trust, NOW)
    assert check.status in (DocStatus.VALID, DocStatus.INVALID)
    if check.status is DocStatus.VALID:  # only bytes no check reads may change unnoticed
        assert check.signer is not None


def _reshaped(signature: bytes, change: Callable[[asn1_cms.SignedData], None]) -> bytes:
    info = asn1_cms.ContentInfo.load(signature)
    signed = info["content"].copy()
    change(signed)
    der: bytes = asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
    return der


def test_a_second_signer_beside_a_valid_one_is_refused_not_skipped(
    material: SigningMaterial, trust: Trust
) -> None:
    """Probed: one valid SignerInfo and one garbage (or one of a stranger). openssl would
    want every signer to verify; the fund writes one. Refused, never the valid one alone."""
    genuine = _sign_at(material, NOW)

    def twice(signed: asn1_cms.SignedData) -> None:
        (signer,) = list(signed["signer_infos"])
        garbage = signer.copy()
        garbage["signature"] = b"\x00" * 64
        signed["signer_infos"] = asn1_cms.SignerInfos([signer, garbage])

    check = check_document("d.pdf", DOCUMENT, _reshaped(genuine, twice), trust, NOW)
    assert check.status is DocStatus.INVALID
    assert check.reason == "malformed_signature"


def test_a_signature_without_its_time_is_not_the_fund_s(
    material: SigningMaterial, trust: Trust
) -> None:
    """The gateway's signatures always state their time; without it, nothing says the key
    was in service: refused (no_signing_time)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(DOCUMENT)
    attrs = asn1_cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["data"]},
            {"type": "message_digest", "values": [digest.finalize()]},
        ]
    )

    def untimed(signed: asn1_cms.SignedData) -> None:
        (signer,) = list(signed["signer_infos"])
        signer = signer.copy()
        signer["signed_attrs"] = attrs
        signer["signature"] = material.certificate_key.sign(attrs.dump(), ec.ECDSA(hashes.SHA256()))
        signed["signer_infos"] = asn1_cms.SignerInfos([signer])

    check = check_document(
        "d.pdf", DOCUMENT, _reshaped(_sign_at(material, NOW), untimed), trust, NOW
    )
    assert check.status is DocStatus.INVALID
    assert check.reason == "no_signing_time"


def test_extra_certificates_of_another_chain_change_nothing(
    material: SigningMaterial, trust: Trust
) -> None:
    """Probed: a second chain to a foreign root carried in the .p7s. The signer is found by
    its issuer and serial and checked against the fund's root alone: the genuine document
    stays valid, and nothing foreign is ever trusted (a foreign signer is
    test_a_certificate_from_another_root_is_not_the_fund_s)."""
    from tests.conftest import make_material

    stranger = make_material()
    extra = [
        asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
        for c in (stranger.certificate, *stranger.chain)
    ]

    def carrying(signed: asn1_cms.SignedData) -> None:
        signed["certificates"] = asn1_cms.CertificateSet([*extra, *signed["certificates"]])

    check = check_document(
        "d.pdf", DOCUMENT, _reshaped(_sign_at(material, NOW), carrying), trust, NOW
    )
    assert check.status is DocStatus.VALID


def test_a_signer_certificate_with_a_duplicated_extension_is_malformed(
    signature: bytes, trust: Trust
) -> None:
    """RFC 5280 4.2: an extension appears at most once. The signer's subjectKeyIdentifier
    renamed authorityKeyIdentifier (a byte hypothesis found): cryptography refuses to read
    its extensions, and the check says so instead of raising."""
    at = signature.rindex(b"\x06\x03\x55\x1d\x0e")  # the signer's, which comes last
    forged = signature[: at + 4] + b"\x23" + signature[at + 5 :]
    check = check_document("d.pdf", DOCUMENT, forged, trust, NOW)
    assert (check.status, check.reason) == (DocStatus.INVALID, "malformed_signature")

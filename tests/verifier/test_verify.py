"""The verdicts the brief defines, on emails sealed by the gateway's own sealing code and on
the transformations real mail systems apply to them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from keys.signing import SigningMaterial
from tests.conftest import make_material
from tests.verifier.conftest import (
    PDF_NAME,
    KeyHistory,
    forward_as_attachment,
    forward_inline,
    reencode_document,
    reference_message,
    replace_header,
    seal,
    seal_with_builders,
    tamper_document,
    trust_with,
)
from verifier.report import DkimStatus, DocStatus, Verdict
from verifier.settings import Limits
from verifier.trust import Trust
from verifier.verify import verify_email, verify_pair

pytestmark = pytest.mark.usefixtures("no_network")


def test_a_sealed_statement_is_authentic(sealed: bytes, trust: Trust, limits: Limits) -> None:
    report = verify_email(sealed, trust, limits)
    assert report.verdict is Verdict.AUTHENTIC
    assert [(c.algorithm, c.status) for c in report.dkim] == [
        ("rsa-sha256", DkimStatus.PASS),
        ("ed25519-sha256", DkimStatus.PASS),
    ]
    assert {c.selector for c in report.dkim} == {"s202611r", "s202611e"}
    (document,) = report.documents
    assert document.filename == PDF_NAME
    assert document.status is DocStatus.VALID
    assert document.size is not None
    assert document.size > 10_000
    assert document.signing_time is not None
    assert document.key is not None
    assert document.key.state == "active"
    assert report.message.sender_domain == "caisses.example"
    assert report.warnings == ()


def test_an_independently_sealed_statement_is_authentic(
    material: SigningMaterial, trust: Trust, limits: Limits
) -> None:
    """dkimpy + cryptography's PKCS7 builder, not the gateway: the checks follow the
    standards, not one implementation's habits."""
    report = verify_email(seal_with_builders(reference_message(), material), trust, limits)
    assert report.verdict is Verdict.AUTHENTIC


def test_one_changed_byte_in_a_document_is_tampered(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    report = verify_email(tamper_document(sealed), trust, limits)
    assert report.verdict is Verdict.TAMPERED
    (document,) = report.documents
    assert document.status is DocStatus.INVALID
    assert document.reason == "digest_mismatch"
    assert {c.reason for c in report.dkim} == {"body_changed"}


def test_a_relay_re_encoding_the_body_leaves_documents_authentic(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    report = verify_email(reencode_document(sealed), trust, limits)
    assert report.verdict is Verdict.ALTERED
    assert report.reason == "reason_altered_body"
    assert {(c.status, c.reason) for c in report.dkim} == {(DkimStatus.FAIL, "body_changed")}
    assert report.documents[0].status is DocStatus.VALID


def test_a_changed_subject_is_a_changed_signed_header(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    report = verify_email(replace_header(sealed, b"Subject", b"Paid twice"), trust, limits)
    assert report.verdict is Verdict.ALTERED
    assert report.reason == "reason_altered_header"
    assert {c.reason for c in report.dkim} == {"header_changed"}


def test_an_inline_forward_keeps_documents_authentic(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    report = verify_email(forward_inline(sealed), trust, limits)
    assert report.verdict is Verdict.ALTERED
    assert report.reason == "reason_altered_no_dkim"
    assert report.dkim == ()


@pytest.mark.parametrize("as_eml", [False, True], ids=["message-rfc822", "attached-eml"])
def test_a_statement_forwarded_as_attachment_is_judged_inside(
    sealed: bytes, trust: Trust, limits: Limits, as_eml: bool
) -> None:
    report = verify_email(forward_as_attachment(sealed, as_eml=as_eml), trust, limits)
    assert report.verdict is Verdict.AUTHENTIC
    assert report.forwarded
    assert report.warnings[0] == "warning_forwarded"
    assert report.message.sender_domain == "caisses.example"


def test_pdfs_of_the_forward_itself_are_flagged_not_vouched_for(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    forward = forward_as_attachment(sealed, as_eml=True)
    closing = forward.rindex(b"--fwd-boundary-42--")
    fake = (
        b"--fwd-boundary-42\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="better-statement.pdf"\r\n\r\n%PDF-1.4\r\n'
    )
    report = verify_email(forward[:closing] + fake + forward[closing:], trust, limits)
    assert report.verdict is Verdict.AUTHENTIC  # the fund's message inside is intact
    assert report.warnings[:2] == ("warning_forwarded", "warning_forward_attachments")
    # Listed, never hidden: the forwarder's own PDF, marked as outside the fund's message.
    assert [(d.filename, d.status, d.outside) for d in report.documents] == [
        (PDF_NAME, DocStatus.VALID, False),
        ("better-statement.pdf", DocStatus.UNSIGNED, True),
    ]


def test_a_tampered_statement_inside_a_forward_is_tampered(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    report = verify_email(forward_as_attachment(tamper_document(sealed)), trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.forwarded


def test_forwards_are_opened_only_to_the_configured_depth(sealed: bytes, trust: Trust) -> None:
    nested = forward_as_attachment(forward_as_attachment(sealed, as_eml=True), as_eml=True)
    assert verify_email(nested, trust, Limits()).verdict is Verdict.AUTHENTIC
    assert verify_email(nested, trust, Limits(max_forward_depth=1)).verdict is Verdict.UNSIGNED


def test_lf_line_ends_still_verify(sealed: bytes, trust: Trust, limits: Limits) -> None:
    """Measured, not assumed: dkimpy reads LF messages with CRLF canonical line ends, so
    relaxed DKIM survives a save on Unix, and the documents always do."""
    report = verify_email(sealed.replace(b"\r\n", b"\n"), trust, limits)
    assert report.verdict is Verdict.AUTHENTIC
    assert report.message.line_ends == "lf"
    assert "warning_lf_line_ends" in report.warnings


def test_an_unsealed_statement_is_not_signed_by_the_fund(trust: Trust, limits: Limits) -> None:
    report = verify_email(reference_message(), trust, limits)
    assert report.verdict is Verdict.UNSIGNED
    assert report.documents[0].status is DocStatus.UNSIGNED


def test_a_stranger_s_signatures_are_not_the_fund_s(trust: Trust, limits: Limits) -> None:
    stranger = make_material(domain="caisses.example")
    report = verify_email(seal(reference_message(), stranger), trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.documents[0].reason == "not_fund_root"
    assert {c.status for c in report.dkim} == {DkimStatus.FAIL}


def test_another_domain_s_dkim_is_listed_not_trusted(trust: Trust, limits: Limits) -> None:
    other = make_material(domain="insurer.example")
    report = verify_email(seal(reference_message(), other), trust, limits)
    assert {c.status for c in report.dkim} == {DkimStatus.NOT_FUND}
    assert report.verdict is Verdict.TAMPERED  # its .p7s claims a root that is not ours


def test_an_unknown_selector_of_the_fund_is_named(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path
) -> None:
    newer = make_material(generation="202705")
    report = verify_email(sealed, trust_with(tmp_path, [(newer, KeyHistory())]), limits)
    assert {c.status for c in report.dkim} == {DkimStatus.UNKNOWN_KEY}
    assert "warning_unknown_selector" in report.warnings
    assert report.verdict is Verdict.TAMPERED  # the certificate is not the archive's either


@pytest.mark.parametrize("state", ["retired", "withdrawn"])
def test_a_retired_or_withdrawn_key_still_verifies(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path, state: str
) -> None:
    """A statement sealed before its generation retired, checked a day later."""
    retired_at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    trust = trust_with(tmp_path, [(material, KeyHistory(state, retired_at=retired_at))])
    report = verify_email(sealed, trust, limits, now=retired_at + dt.timedelta(days=1))
    assert report.verdict is Verdict.AUTHENTIC
    assert {c.key.state for c in report.dkim if c.key} == {state}
    assert report.documents[0].key is not None
    assert report.documents[0].key.state == state


def test_a_key_compromised_before_signing_is_flagged_tampered(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path
) -> None:
    compromised = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    trust = trust_with(tmp_path, [(material, KeyHistory("revoked", compromised))])
    report = verify_email(sealed, trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_revoked"
    assert "warning_revoked_key" in report.warnings
    assert {c.status for c in report.dkim} == {DkimStatus.REVOKED}
    assert report.documents[0].status is DocStatus.REVOKED
    assert report.documents[0].reason == "signed_after_compromise"


def test_a_revoked_key_is_never_authentic_even_before_the_compromise(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    trust = trust_with(tmp_path, [(material, KeyHistory("revoked", later))])
    report = verify_email(sealed, trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.documents[0].reason == "revoked_key"


def test_an_old_generation_verifies_next_to_the_new_one(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path
) -> None:
    newer = make_material(generation="202705")
    retired_at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    old = KeyHistory("withdrawn", retired_at=retired_at)
    trust = trust_with(tmp_path, [(material, old), (newer, KeyHistory())])
    assert verify_email(sealed, trust, limits).verdict is Verdict.AUTHENTIC
    fresh = seal(reference_message(), newer)
    assert verify_email(fresh, trust, limits).verdict is Verdict.AUTHENTIC


def test_a_pdf_slipped_next_to_signed_ones_is_tampered(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    boundary = b"--=_releve_8d3f2c1a9b7e"
    extra = (
        boundary + b"\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="bonus.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    )
    closing = sealed.rindex(boundary + b"--")
    report = verify_email(sealed[:closing] + extra + sealed[closing:], trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_unsealed_attachment"


@pytest.mark.parametrize(
    ("upload", "reason"),
    [
        (b"", "reason_not_email_empty"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512, "reason_not_email_outlook_msg"),
        (b"%PDF-1.4\n%...", "reason_not_email_pdf_alone"),
        (b"0\x82\x06\x9d\x06\x09*\x86H", "reason_not_email_p7s_alone"),
        (b"just some text\nwithout headers\n", "reason_not_email_no_headers"),
        (b"X-Nothing: here\r\n\r\nbody", "reason_not_email_no_headers"),
    ],
)
def test_what_is_not_an_email_is_explained(
    trust: Trust, limits: Limits, upload: bytes, reason: str
) -> None:
    report = verify_email(upload, trust, limits)
    assert report.verdict is Verdict.NOT_EMAIL
    assert report.reason == reason


def test_too_many_parts_is_refused_not_worked_through(trust: Trust) -> None:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(50))
    raw = (
        b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        + parts
        + b"--b--\r\n"
    )
    report = verify_email(raw, trust, Limits(max_mime_parts=10))
    assert report.reason == "reason_not_email_too_complex"


def test_a_document_and_its_signature_verify_as_a_pair(
    material: SigningMaterial, trust: Trust
) -> None:
    from tests.verifier.conftest import cms_detached

    document = b"%PDF-1.4 statement 123"
    signature = cms_detached(document, material)
    assert verify_pair("d.pdf", document, signature, trust).verdict is Verdict.AUTHENTIC
    changed = verify_pair("d.pdf", document + b" ", signature, trust)
    assert changed.verdict is Verdict.TAMPERED
    assert changed.documents[0].reason == "digest_mismatch"


@pytest.mark.parametrize("levels", [300, 20_000])
@pytest.mark.parametrize("kind", ["multipart", "message"])
def test_hostile_nesting_is_refused_without_exhausting_the_stack(
    trust: Trust, limits: Limits, levels: int, kind: str
) -> None:
    if kind == "multipart":
        raw = b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
        raw += b"".join(
            b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
            for i in range(levels)
        )
    else:
        raw = b"Subject: innermost\r\n\r\nhi\r\n"
        for _ in range(levels):
            raw = b"From: a@b.example\r\nContent-Type: message/rfc822\r\n\r\n" + raw
    report = verify_email(raw, trust, limits)
    if kind == "message":
        # Forwards are opened only to the configured depth; past it, nothing more is read.
        assert report.verdict is Verdict.UNSIGNED
        return
    assert report.reason == "reason_not_email_too_complex"

"""The verdicts the brief defines, on emails sealed by the gateway's own sealing code and on
the transformations real mail systems apply to them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
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


# --- a key out of service signs nothing authentic (finding 3) ------------------------------


def test_a_statement_forged_with_a_retired_generation_is_tampered(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path
) -> None:
    """The generation retired 30 days ago; signatures dated today were not the gateway's."""
    newer = make_material(generation="202705")
    trust = trust_with(tmp_path, [(material, KeyHistory("retired")), (newer, KeyHistory())])
    report = verify_email(sealed, trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_out_of_service"
    assert {c.reason for c in report.dkim} == {"signed_after_retirement"}
    (document,) = report.documents
    assert document.reason == "signed_after_retirement"
    assert document.status is DocStatus.INVALID


def test_a_signature_within_the_clock_skew_of_retirement_still_counts(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path
) -> None:
    """A message sealed in the second the rotation happened (workers re-read the store)."""
    retired_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)
    trust = trust_with(tmp_path, [(material, KeyHistory("retired", retired_at=retired_at))])
    assert verify_email(sealed, trust, limits).verdict is Verdict.AUTHENTIC


def test_a_pending_generation_signs_nothing_authentic(
    material: SigningMaterial, sealed: bytes, limits: Limits, tmp_path: Path
) -> None:
    trust = trust_with(tmp_path, [(material, KeyHistory("pending"))])
    report = verify_email(sealed, trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert {c.reason for c in report.dkim} == {"signed_before_activation"}
    assert report.documents[0].reason == "signed_before_activation"


# --- every attachment is accounted for (finding 4) -----------------------------------------

_BOUNDARY = b"--=_releve_8d3f2c1a9b7e"
_PDF = b"%PDF-1.7\n% not the fund's\n1 0 obj << >> endobj\n%%EOF\n"


def _add_part(sealed: bytes, headers: bytes, body: bytes) -> bytes:
    import base64

    part = (
        _BOUNDARY + b"\r\n" + headers + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(body).replace(b"\n", b"\r\n")
    )  # fmt: skip
    closing = sealed.rindex(_BOUNDARY + b"--")
    return sealed[:closing] + part + sealed[closing:]


@pytest.mark.parametrize(
    ("headers", "body", "kind"),
    [
        (
            b"Content-Type: application/vnd.openxmlformats-officedocument."
            b"wordprocessingml.document\r\n"
            b'Content-Disposition: attachment; filename="nouveau-rib.docx"\r\n',
            b"PK\x03\x04 a word document",
            "file",
        ),
        (
            b"Content-Type: application/pdf\r\n"
            b'Content-Disposition: attachment; filename="x.pdf."\r\n',
            _PDF,
            "document",
        ),
        (
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''releve%E2%80%8B.pdf\r\n",
            _PDF,
            "document",
        ),
        (
            b"Content-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="scan"\r\n',
            _PDF,
            "document",
        ),
        (b"Content-Type: image/png\r\n", b"\x89PNG\r\n\x1a\n a picture of a RIB", "file"),
    ],
    ids=["docx", "trailing-dot", "zero-width-space", "octet-stream", "unnamed-image"],
)
def test_an_attachment_the_fund_did_not_seal_makes_the_statement_tampered(
    sealed: bytes, trust: Trust, limits: Limits, headers: bytes, body: bytes, kind: str
) -> None:
    report = verify_email(_add_part(sealed, headers, body), trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_unsealed_attachment"
    statuses = [(d.status, d.kind) for d in report.documents]
    assert statuses == [(DocStatus.VALID, "document"), (DocStatus.UNSIGNED, kind)]


_FORGED_PART = (
    b'Content-Type: application/pdf; name="corrige.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
    b'Content-Disposition: attachment; filename="corrige.pdf"\r\n\r\nJVBERi0xLjQKJSVFT0YK\r\n'
)


def _rewrapped(sealed: bytes, outer: bytes, *extra: bytes) -> bytes:
    """The sealed statement's own MIME tree (its DKIM signatures dropped, as any re-sending
    would break them) put first inside a new `outer` multipart, `extra` parts after it."""
    head, body = sealed.split(b"\r\n\r\n", 1)
    fields = [f for f in re.split(rb"\r\n(?![ \t])", head) if b":" in f]
    kept = [f for f in fields if not f.lower().startswith((b"dkim-signature", b"content-type"))]
    (own_type,) = [f for f in fields if f.lower().startswith(b"content-type")]
    children = [own_type + b"\r\n\r\n" + body, *extra]
    return (
        b"\r\n".join(kept)
        + b"\r\nContent-Type: "
        + outer
        + b'; boundary="OUT"\r\n\r\n'
        + b"".join(b"--OUT\r\n" + c + b"\r\n" for c in children)
        + b"--OUT--\r\n"
    )


def _root_read_twice(sealed: bytes, how: str) -> bytes:
    """A second reading of the whole message: a boundary that finds a forged tree after
    the genuine one's end, or a Content-Transfer-Encoding given twice."""
    head, body = sealed.split(b"\r\n\r\n", 1)
    other = b"--B\r\n" + _FORGED_PART + b"\r\n--B--\r\n"
    if how == "content-type":
        head += b'\r\nContent-Type: multipart/mixed; boundary="B"'
    elif how == "boundary":
        head = re.sub(rb'(boundary="[^"]+")', rb'\1; boundary="B"', head, count=1)
    elif how == "transfer-encoding":
        head += b"\r\nContent-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64"
        other = b""
    else:  # RFC 2045 6.4: a multipart is never encoded; a program believing it decodes first
        head += b"\r\nContent-Transfer-Encoding: base64"
        other = b""
    return head + b"\r\n\r\n" + body + other


@pytest.mark.parametrize(
    "build",
    [
        # RFC 1847: a signed part, then one signature. A PDF in the signature's place, or a
        # third part, is an attachment to every mail program.
        lambda s: _rewrapped(s, b'multipart/signed; protocol="application/pkcs7-signature"',
                             _FORGED_PART),
        lambda s: _rewrapped(
            s, b'multipart/signed; protocol="application/pkcs7-signature"',
            b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n\r\nMIIB",
            _FORGED_PART,
        ),
        # Content-Type twice in one part: text to the first reader, a PDF to the last.
        lambda s: _rewrapped(
            s, b"multipart/mixed",
            b"Content-Type: text/plain\r\n" + _FORGED_PART.replace(b"Content-Disp", b"X-Disp"),
        ),
        # RFC 2183 2.8: a disposition a program does not know means an attachment to it.
        lambda s: _rewrapped(
            s, b"multipart/mixed",
            b"Content-Type: text/plain\r\nContent-Disposition: piece-jointe\r\n\r\nIBAN FR76\r\n",
        ),
        # A multipart whose boundary is missing: bytes a program may show another way.
        lambda s: _rewrapped(
            s, b"multipart/mixed", b"Content-Type: multipart/mixed\r\n\r\nJVBERi0xLjQK\r\n"
        ),
        # A picture of multipart/related that the HTML cannot name, or a PDF calling
        # itself a picture: mail programs list them as attachments.
        lambda s: _rewrapped(
            s, b"multipart/related",
            b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n",
        ),
        lambda s: _rewrapped(
            s, b"multipart/related",
            b"Content-Type: image/png\r\nContent-ID: <scan@x>\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJSVFT0YK\r\n",
        ),
        lambda s: _root_read_twice(s, "content-type"),
        lambda s: _root_read_twice(s, "boundary"),
        lambda s: _root_read_twice(s, "transfer-encoding"),
        lambda s: _root_read_twice(s, "encoded-multipart"),
    ],
    ids=[
        "pdf-as-sender-signature",
        "third-part-of-signed",
        "content-type-twice",
        "unknown-disposition",
        "multipart-without-boundary",
        "related-picture-without-id",
        "related-pdf-as-picture",
        "root-content-type-twice",
        "root-boundary-twice",
        "root-transfer-encoding-twice",
        "root-multipart-encoded",
    ],
)  # fmt: skip
def test_a_part_that_reads_two_ways_never_hides_behind_documents_authentic(
    sealed: bytes, trust: Trust, limits: Limits, build: Callable[[bytes], bytes]
) -> None:
    """What some mail program shows as an attachment is listed, never skipped as the
    sender's signature or the message's text; and a part whose MIME fields say two things
    is one no fund statement has: documents authentic never hides a forged PDF beside
    them, even under a DKIM signature that still passes (Content-Transfer-Encoding is not
    signed)."""
    report = verify_email(build(sealed), trust, limits)
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_unsealed_attachment"
    statuses = [d.status for d in report.documents]
    assert statuses[0] is DocStatus.VALID
    assert DocStatus.UNSIGNED in statuses[1:]


def test_the_sender_s_own_signature_and_the_text_are_not_attachments(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    """The other side of the rule above: an S/MIME signature in its RFC 1847 place, a text
    part marked inline, a MIME field written twice alike, a picture the HTML names by its
    Content-ID, are what they say."""
    smime = _rewrapped(
        sealed,
        b'multipart/signed; protocol="application/pkcs7-signature"',
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n\r\nMIIB",
    )
    text = _rewrapped(
        sealed,
        b"multipart/mixed",
        b"Content-Type: text/plain\r\nContent-Type: text/plain\r\n"
        b"Content-Disposition: inline\r\n\r\nTransmis par le service courrier.\r\n",
    )
    picture = _rewrapped(
        sealed,
        b"multipart/related",
        b"Content-Type: image/png\r\nContent-ID: <logo@fund>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n",
    )
    for upload in (smime, text, picture):
        report = verify_email(upload, trust, limits)
        assert report.verdict is Verdict.ALTERED
        assert [d.status for d in report.documents] == [DocStatus.VALID]
        assert "ambiguous_mime" not in report.message.defects


def test_a_renamed_document_still_finds_its_signature(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    """A mail program renaming the PDF changes nothing it signed: documents authentic."""
    renamed = sealed.replace(f'"{PDF_NAME}"'.encode(), b'"releve (1).pdf"')
    report = verify_email(renamed, trust, limits)
    assert report.verdict is Verdict.ALTERED
    assert [(d.filename, d.status) for d in report.documents] == [
        ("releve (1).pdf", DocStatus.VALID)
    ]


def test_an_unsealed_attachment_the_fund_sent_is_listed_under_its_dkim(
    material: SigningMaterial, trust: Trust, limits: Limits
) -> None:
    """The gateway seals PDFs; a notice in .txt the fund sent is covered by its DKIM."""
    notice = _add_part(
        reference_message(),
        b'Content-Type: text/plain\r\nContent-Disposition: attachment; filename="notice.txt"\r\n',
        b"Conditions generales",
    )
    report = verify_email(seal(notice, material), trust, limits)
    assert report.verdict is Verdict.AUTHENTIC
    assert [(d.filename, d.status, d.kind) for d in report.documents] == [
        (PDF_NAME, DocStatus.VALID, "document"),
        ("notice.txt", DocStatus.UNSIGNED, "file"),
    ]
    assert "warning_unsealed_attachment" in report.warnings


# --- forwards as mail programs make them (finding 5) ---------------------------------------


def _forward(inner: bytes, part_headers: bytes, encoding: bytes, tag: bytes = b"1") -> bytes:
    import base64
    import quopri

    if encoding == b"base64":
        body = base64.encodebytes(inner).replace(b"\n", b"\r\n")
    elif encoding == b"quoted-printable":
        body = quopri.encodestring(inner.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    else:
        body = inner
    message = (
        b"From: Claims Officer <claims@insurer.example>\r\nTo: <checks@insurer.example>\r\n"
        b"Subject: TR: Votre releve\r\nDate: Mon, 02 Mar 2026 09:00:00 +0100\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
        b"--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nVoir la piece jointe.\r\n"
        b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Voir la piece jointe.</p>\r\n"
        b"--alt--\r\n\r\n"
        b"--outer\r\n" + part_headers
        + b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n"
        + body + b"\r\n--outer--\r\n"
    )  # fmt: skip
    # Each mail program makes its own boundaries: a forward of a forward never reuses one.
    return message.replace(b"outer", b"outer-" + tag).replace(b"alt", b"alt-" + tag)


@pytest.mark.parametrize(
    ("part_headers", "encoding"),
    [
        # Outlook: message/rfc822, base64, the subject as the file name.
        (
            b"Content-Type: message/rfc822\r\nContent-Disposition: attachment;\r\n"
            b' filename="Votre releve.eml"\r\n',
            b"base64",
        ),
        # Thunderbird: message/rfc822 with an RFC 2231 name, sent as it is.
        (
            b"Content-Type: message/rfc822; name*=utf-8''Votre%20relev%C3%A9.eml\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''Votre%20relev%C3%A9.eml\r\n",
            b"7bit",
        ),
        # Gmail: message/rfc822, 8bit.
        (b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n", b"8bit"),
        (b"Content-Type: message/rfc822\r\n", b"quoted-printable"),
        # A saved .eml attached as a file.
        (
            b'Content-Type: application/octet-stream; name="releve.eml"\r\n'
            b'Content-Disposition: attachment; filename="releve.eml"\r\n',
            b"base64",
        ),
    ],
    ids=["outlook-base64", "thunderbird-7bit", "gmail-8bit", "quoted-printable", "eml-file"],
)
def test_forwards_as_mail_programs_make_them_are_judged_inside(
    sealed: bytes, trust: Trust, limits: Limits, part_headers: bytes, encoding: bytes
) -> None:
    report = verify_email(_forward(sealed, part_headers, encoding), trust, limits)
    assert report.verdict is Verdict.AUTHENTIC
    assert report.forwarded
    assert [d.status for d in report.documents] == [DocStatus.VALID]


def test_a_forward_of_a_forward_is_opened(sealed: bytes, trust: Trust, limits: Limits) -> None:
    once = _forward(sealed, b"Content-Type: message/rfc822\r\n", b"base64")
    twice = _forward(once, b"Content-Type: message/rfc822\r\n", b"7bit", tag=b"2")
    report = verify_email(twice, trust, limits)
    assert report.verdict is Verdict.AUTHENTIC
    assert report.forwarded


def test_a_statement_tampered_inside_an_outlook_forward_is_tampered(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    forward = _forward(tamper_document(sealed), b"Content-Type: message/rfc822\r\n", b"base64")
    assert verify_email(forward, trust, limits).verdict is Verdict.TAMPERED


def test_a_sealed_document_in_a_stranger_s_email_vouches_only_for_itself(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    """A genuine document and its .p7s, re-attached to an email the fund never sent (its
    own sender, subject and words): the documents are what the fund sealed, so the
    verdict says so ("documents authentic, message altered"), and that is all it says.
    Nothing of the carrying email is shown as the fund's, and a statement of another
    member stays another member's: the document's content is what was sealed."""
    head, body = sealed.split(b"\r\n\r\n", 1)
    (own_type,) = [
        f for f in re.split(rb"\r\n(?![ \t])", head) if f.lower().startswith(b"content-type")
    ]
    stranger = (
        b"From: Service remboursements <rib@evil.example>\r\nTo: gestion@mutuelle.example\r\n"
        b"Subject: Decompte rectifie - nouveau RIB\r\nMIME-Version: 1.0\r\n"
        + own_type + b"\r\n\r\n" + body
    )  # fmt: skip
    report = verify_email(stranger, trust, limits)
    assert report.verdict is Verdict.ALTERED
    assert report.reason == "reason_altered_no_dkim"
    assert not report.message.vouched
    assert report.message.sender_domain == "evil.example"  # shown, and marked not vouched
    assert [d.status for d in report.documents] == [DocStatus.VALID]

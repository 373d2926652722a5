"""Sealing a statement email: what a recipient, openssl and two DKIM verifiers see.

Every check here is made by an independent party on the sealed bytes: dkimpy and Perl's
Mail::DKIM for the two DKIM signatures, `openssl cms -verify` for each `.p7s`, Python's
email package for the MIME structure.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import hashlib
import re
from email import policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway import header_block
from gateway.seal import (
    DocumentRules,
    Sealed,
    SealError,
    UnsealableMessage,
    _reads_two_ways,
    base64_lines,
    seal,
)
from keys.signing import SigningMaterial
from tests.checks import (
    REFERENCE,
    crlf,
    dkimpy_results,
    dns_records,
    mail_dkim_results,
    openssl_verifies,
    root_pem,
)
from tests.conftest import make_material

NOW = dt.datetime(2026, 3, 1, 5, 0, 7, tzinfo=dt.UTC)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
PDF_B64 = base64.encodebytes(PDF).replace(b"\n", b"\r\n")

HEADERS = (
    b'From: "Caisses Sociales" <statements@caisses.example>\r\n'
    b"To: <member@example.net>\r\n"
    b"Subject: Votre decompte\r\n"
    b"Date: Sun, 01 Mar 2026 06:00:00 +0100\r\n"
    b"Message-ID: <decompte-123@caisses.example>\r\n"
    b"MIME-Version: 1.0\r\n"
)


def pdf_part(disposition: bytes = b'attachment; filename="decompte-123.pdf"') -> bytes:
    return (
        b"Content-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: " + disposition + b"\r\n\r\n" + PDF_B64.rstrip(b"\r\n")
    )


def multipart(subtype: bytes, boundary: bytes, *parts: bytes) -> bytes:
    """A multipart entity (headers and body) holding `parts` verbatim."""
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (
        b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\r\n\r\n'
        b"preamble\r\n" + body + b"--" + boundary + b"--\r\nepilogue\r\n"
    )


TEXT_PART = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nBonjour,\r\nci-joint.\r\n"


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def leaves(message: EmailMessage) -> list[EmailMessage]:
    return [part for part in message.walk() if not part.is_multipart()]


def signed_pairs(message: EmailMessage) -> list[tuple[EmailMessage, EmailMessage]]:
    """(document, .p7s) pairs: each .p7s with the part right before it."""
    parts = leaves(message)
    return [
        (parts[i - 1], part)
        for i, part in enumerate(parts)
        if part.get_content_type() == "application/pkcs7-signature"
    ]


def payload(part: EmailMessage) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def strip_dkim(data: bytes) -> bytes:
    """The message without the DKIM-Signature fields put on top of it."""
    return re.sub(
        rb"\ADKIM-Signature:.*?\r\n(?! )DKIM-Signature:.*?\r\n(?! )", b"", data, count=1, flags=re.S
    )


def segments(data: bytes, boundaries: list[bytes]) -> list[bytes]:
    """The raw bytes between delimiter lines of any of `boundaries`, p7s parts left out."""
    delimiter = b"|".join(re.escape(b"--" + b) for b in boundaries)
    pieces = re.split(rb"(?m)^(?:" + delimiter + rb")(?:--)?[ \t]*\r$", data)
    return [p for p in pieces if b"application/pkcs7-signature" not in p.split(b"\r\n\r\n")[0]]


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def statement() -> bytes:
    """The reference statement load (27 KB), with the CRLF line ends SMTP delivers."""
    return crlf(REFERENCE.read_bytes())


@pytest.fixture(scope="module")
def sealed(statement: bytes, signing_material: SigningMaterial) -> Sealed:
    return seal(statement, signing_material, DocumentRules(), now=NOW)


@pytest.fixture(scope="module")
def records(signing_material: SigningMaterial) -> dict[str, str]:
    return dns_records(signing_material)


# --- DKIM --------------------------------------------------------------------------------


def test_both_dkim_signatures_verify_with_dkimpy(sealed: Sealed, records: dict[str, str]) -> None:
    assert dkimpy_results(sealed.data, records) == [True, True]


def test_both_dkim_signatures_verify_with_perl_mail_dkim(
    sealed: Sealed, records: dict[str, str], tmp_path: Path
) -> None:
    lines = mail_dkim_results(sealed.data, records, tmp_path)
    assert len(lines) == 2
    assert lines[0].startswith("pass a=rsa-sha256 d=caisses.example s=s202611r")
    assert lines[1].startswith("pass a=ed25519-sha256 d=caisses.example s=s202611e")


_AUTHOR = b"From: Caisses <decomptes@caisses.example>\r\nTo: m@example.org\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        _AUTHOR + b"Subject: un\r\n\tdeux  trois \r\n   quatre\r\n\r\nx\r\n",
        _AUTHOR + b"Subject:\t\tx\t \r\nX-A:   \r\n\r\nline \t \r\n\t\r\n  a  b\t\tc \r\n",
        _AUTHOR + b"Subject: a\r\nSubject: b\r\nTo: n@example.org\r\nReply-To: <a@b.example>\r\n"
        b"Reply-To: <c@d.example>\r\n\r\nx\r\n",
        _AUTHOR + b"Subject: e\r\n\r\n",
        _AUTHOR + b"Subject: e\r\n",
        _AUTHOR + b"Subject: e\r\n\r\nlast line without CRLF",
        _AUTHOR + b"Subject: e\r\n\r\n\r\n\r\n\r\n",
        _AUTHOR + b"Subject: " + b"x" * 990 + b"\r\nX-Long:" + b" word" * 400 + b"\r\n\r\nx\r\n",
        _AUTHOR + b"Subject: a\r\n \r\n\t\r\n b\r\nCc:\r\n\r\nx\r\n",
        _AUTHOR + "Subject: Décompte  é\r\n\r\nx   \r\n  \r\n \t \r\n".encode(),
    ],
    ids=[
        "folded-subject", "tabs-and-trailing-blanks", "repeated-fields", "empty-body",
        "no-body", "no-final-crlf", "only-blank-lines", "long-fields", "blank-continuations",
        "8bit-field-blank-body-lines",
    ],
)  # fmt: skip
def test_odd_but_legal_messages_verify_with_both_checkers(
    raw: bytes, signing_material: SigningMaterial, tmp_path: Path
) -> None:
    """The relaxed canonicalisation and the shared header hash read unusual headers and
    bodies as dkimpy and Mail::DKIM do (RFC 6376 3.4.2, 3.4.4)."""
    assert (
        check_sealed(seal(raw, signing_material, DocumentRules()), signing_material, tmp_path) == []
    )


def test_each_signature_fails_on_its_own_under_another_key(sealed: Sealed, tmp_path: Path) -> None:
    # Same selectors and domain, other keys: the verifiers really check each signature.
    impostor = dns_records(make_material())
    assert dkimpy_results(sealed.data, impostor) == [False, False]
    lines = mail_dkim_results(sealed.data, impostor, tmp_path)
    assert [line.split()[:2] for line in lines] == [
        ["fail", "a=rsa-sha256"],
        ["fail", "a=ed25519-sha256"],
    ]


def test_each_signature_verifies_without_the_other(
    sealed: Sealed, records: dict[str, str], tmp_path: Path
) -> None:
    first, second, rest = re.split(rb"\r\n(?=DKIM-Signature:|From:)", sealed.data, maxsplit=2)
    for alone in (first + b"\r\n" + rest, second + b"\r\n" + rest):
        assert dkimpy_results(alone, records) == [True]
        assert mail_dkim_results(alone, records, tmp_path)[0].startswith("pass ")


def test_a_changed_body_breaks_both_signatures(
    sealed: Sealed, records: dict[str, str], tmp_path: Path
) -> None:
    altered = sealed.data.replace(
        b"Solde au 28/02/2026 :          2 653,35", b"Solde au 28/02/2026 :          9 653,35"
    )
    assert altered != sealed.data
    assert dkimpy_results(altered, records) == [False, False]
    assert [line.split()[0] for line in mail_dkim_results(altered, records, tmp_path)] == [
        "fail",
        "fail",
    ]


@pytest.mark.parametrize(
    "added",
    [
        b"From: <refunds@attacker.example>",
        b"Subject: Urgent: new bank details",
        b"To: <attacker@attacker.example>",
        b"Cc: <attacker@attacker.example>",
        b"Reply-To: <attacker@attacker.example>",
        b"Date: Mon, 02 Mar 2026 06:00:00 +0100",
        b"Content-Type: text/plain",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Sender: <attacker@attacker.example>",
    ],
)
@pytest.mark.parametrize("where", ["top", "bottom"])
def test_an_added_header_breaks_both_signatures(
    sealed: Sealed, records: dict[str, str], added: bytes, where: str
) -> None:
    header_end = sealed.data.index(b"\r\n\r\n") + 2
    if where == "top":
        altered = added + b"\r\n" + sealed.data
    else:
        altered = sealed.data[:header_end] + added + b"\r\n" + sealed.data[header_end:]
    assert dkimpy_results(altered, records) == [False, False]


def test_signature_tags(sealed: Sealed, signing_material: SigningMaterial) -> None:
    fields = [value for name, value in parsed(sealed.data).items() if name == "DKIM-Signature"]
    assert len(fields) == 2
    for field, algorithm, selector in zip(
        fields,
        ("rsa-sha256", "ed25519-sha256"),
        (signing_material.rsa_selector, signing_material.ed25519_selector),
        strict=True,
    ):
        tags = dict(
            (tag.split("=", 1)[0].strip(), re.sub(r"\s+", "", tag.split("=", 1)[1]))
            for tag in str(field).split(";")
            if "=" in tag
        )
        assert tags["a"] == algorithm
        assert tags["s"] == selector
        assert tags["d"] == "caisses.example"
        assert tags["c"] == "relaxed/relaxed"
        assert tags["t"] == str(int(NOW.timestamp()))
        assert "l" not in tags
        assert "x" not in tags
        # Oversigned: every name once more than the message has it (no Cc nor Reply-To).
        assert tags["h"].split(":") == [
            "from", "from", "to", "to", "cc", "subject", "subject", "date", "date",
            "message-id", "message-id", "reply-to", "sender", "in-reply-to", "references",
            "mime-version", "mime-version",
            "content-type", "content-type", "content-transfer-encoding",
        ]  # fmt: skip


def test_the_body_hash_is_the_same_in_both_signatures(sealed: Sealed) -> None:
    hashes = re.findall(rb"bh=([^;]+);", sealed.data[: sealed.data.index(b"From:")])
    assert len(hashes) == 2
    assert hashes[0] == hashes[1]


def test_output_lines_end_in_crlf_even_from_lf_input(
    statement: bytes, signing_material: SigningMaterial, records: dict[str, str]
) -> None:
    from_lf = seal(statement.replace(b"\r\n", b"\n"), signing_material, DocumentRules())
    assert b"\n" not in from_lf.data.replace(b"\r\n", b"")
    assert dkimpy_results(from_lf.data, records) == [True, True]
    assert max(len(line) for line in from_lf.data.split(b"\r\n")) <= 78


# --- CMS ---------------------------------------------------------------------------------


def test_the_statement_gets_a_p7s_right_after_it(sealed: Sealed) -> None:
    message = parsed(sealed.data)
    assert sealed.documents == ("releve-2026-02.pdf",)
    assert [part.get_content_type() for part in message.walk()] == [
        "multipart/mixed",
        "text/plain",
        "application/pdf",
        "application/pkcs7-signature",
    ]
    signature = leaves(message)[-1]
    assert signature.get_filename() == "releve-2026-02.pdf.p7s"
    assert signature.get_param("name") == "releve-2026-02.pdf.p7s"
    assert signature.get_content_disposition() == "attachment"
    assert signature["Content-Transfer-Encoding"] == "base64"
    assert not message.defects


def test_the_p7s_verifies_with_openssl_and_fails_on_one_changed_byte(
    sealed: Sealed, signing_material: SigningMaterial, tmp_path: Path
) -> None:
    [(document, signature)] = signed_pairs(parsed(sealed.data))
    content = payload(document)
    root = root_pem(signing_material)
    assert openssl_verifies(payload(signature), content, root, tmp_path)
    changed = bytearray(content)
    changed[len(changed) // 2] ^= 0x01
    assert not openssl_verifies(payload(signature), bytes(changed), root, tmp_path)


def test_the_p7s_does_not_verify_against_another_root(sealed: Sealed, tmp_path: Path) -> None:
    [(document, signature)] = signed_pairs(parsed(sealed.data))
    other_root = root_pem(make_material())
    assert not openssl_verifies(payload(signature), payload(document), other_root, tmp_path)


def test_every_original_byte_is_kept(statement: bytes, sealed: Sealed) -> None:
    unsealed = strip_dkim(sealed.data)
    boundary = [b"=_releve_8d3f2c1a9b7e"]
    assert segments(unsealed, boundary) == segments(statement, boundary)
    assert unsealed.startswith(statement[: statement.index(b"\r\n\r\n")])
    assert len(unsealed) > len(statement)


# --- which parts are documents, and where they may sit ------------------------------------


def check_sealed(
    sealed: Sealed, material: SigningMaterial, tmp_path: Path
) -> list[tuple[EmailMessage, EmailMessage]]:
    """Both DKIM signatures pass (dkimpy and Mail::DKIM) and every .p7s verifies (openssl);
    returns the (document, .p7s) pairs."""
    records = dns_records(material)
    assert dkimpy_results(sealed.data, records) == [True, True]
    verdicts = [line.split()[0] for line in mail_dkim_results(sealed.data, records, tmp_path)]
    assert verdicts == ["pass", "pass"]
    pairs = signed_pairs(parsed(sealed.data))
    for document, signature in pairs:
        assert signature.get_filename() == f"{document.get_filename()}.p7s"
        assert openssl_verifies(payload(signature), payload(document), root_pem(material), tmp_path)
    return pairs


def test_a_pdf_nested_in_mixed_inside_alternative(
    signing_material: SigningMaterial, tmp_path: Path
) -> None:
    inner = multipart(b"mixed", b"inner-b", TEXT_PART, pdf_part())
    outer = multipart(
        b"alternative", b"outer-b", b"Content-Type: text/html\r\n\r\n<p>Bonjour</p>", inner
    )
    raw = HEADERS + outer
    sealed = seal(raw, signing_material, DocumentRules())
    [(document, _)] = check_sealed(sealed, signing_material, tmp_path)
    assert payload(document) == PDF
    kinds = [part.get_content_type() for part in parsed(sealed.data).walk()]
    assert kinds == [
        "multipart/alternative",
        "text/html",
        "multipart/mixed",
        "text/plain",
        "application/pdf",
        "application/pkcs7-signature",
    ]
    assert segments(strip_dkim(sealed.data), [b"outer-b", b"inner-b"]) == segments(
        raw, [b"outer-b", b"inner-b"]
    )


def test_several_documents_each_get_their_own_p7s(
    signing_material: SigningMaterial, tmp_path: Path
) -> None:
    raw = HEADERS + multipart(
        b"mixed",
        b"b1",
        TEXT_PART,
        pdf_part(b'attachment; filename="decompte-1.pdf"'),
        pdf_part(b'attachment; filename="decompte-2.pdf"'),
    )
    sealed = seal(raw, signing_material, DocumentRules())
    assert sealed.documents == ("decompte-1.pdf", "decompte-2.pdf")
    pairs = check_sealed(sealed, signing_material, tmp_path)
    assert [signature.get_filename() for _, signature in pairs] == [
        "decompte-1.pdf.p7s",
        "decompte-2.pdf.p7s",
    ]


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        (b"attachment; filename*=utf-8''d%C3%A9compte%20n%C2%B0123.pdf", "décompte n°123.pdf"),
        (b'attachment; filename="=?utf-8?q?d=C3=A9compte_n=C2=B0123.pdf?="', "décompte n°123.pdf"),
        (
            b"attachment;\r\n filename*0*=utf-8''d%C3%A9compte%20de%20prestations%20;\r\n"
            b" filename*1*=f%C3%A9vrier%202026%20%E2%80%94%20n%C2%B0123.pdf",
            "décompte de prestations février 2026 — n°123.pdf",
        ),
        ('attachment; filename="décompte n°123.pdf"'.encode(), "décompte n°123.pdf"),
        (b'attachment; filename="releve \\"fevrier\\".pdf"', 'releve "fevrier".pdf'),
        (
            b'attachment; filename="decompte-de-prestations-' + b"x" * 80 + b'.pdf"',
            "decompte-de-prestations-" + "x" * 80 + ".pdf",
        ),
    ],
    ids=["rfc2231", "rfc2047", "rfc2231-continued", "raw-utf8", "quotes", "long"],
)
def test_encoded_file_names(
    signing_material: SigningMaterial, tmp_path: Path, disposition: bytes, name: str
) -> None:
    raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART, pdf_part(disposition))
    sealed = seal(raw, signing_material, DocumentRules())
    assert sealed.documents == (name,)
    [(_, signature)] = check_sealed(sealed, signing_material, tmp_path)
    assert signature.get_filename() == f"{name}.p7s"
    assert signature.get_param("name") == f"{name}.p7s"


@pytest.mark.parametrize(
    ("encoding", "body", "decoded"),
    [
        (
            b"quoted-printable",
            b"caf=C3=A9 =\r\nsuite\r\nligne=3D2\r\n",
            "café suite\r\nligne=2\r\n",
        ),
        (b"7bit", b"ligne 1\r\nligne 2\r\n", "ligne 1\r\nligne 2\r\n"),
        (b"8bit", "données\r\n".encode(), "données\r\n"),
        (b"binary", b"%PDF raw", "%PDF raw"),
    ],
)
def test_transfer_encodings_sign_the_decoded_bytes(
    signing_material: SigningMaterial,
    tmp_path: Path,
    encoding: bytes,
    body: bytes,
    decoded: str,
) -> None:
    part = (
        b"Content-Type: application/pdf; name=doc.pdf\r\n"
        b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body
    )
    sealed = seal(
        HEADERS + multipart(b"mixed", b"b1", TEXT_PART, part), signing_material, DocumentRules()
    )
    [(document, _)] = check_sealed(sealed, signing_material, tmp_path)
    # What openssl checked is what any MIME reader decodes, and what was meant.
    assert payload(document) == decoded.encode()


def test_other_attachments_are_left_alone(
    signing_material: SigningMaterial, tmp_path: Path
) -> None:
    png = (
        b"Content-Type: image/png; name=logo.png\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo="
    )
    csv = (
        b"Content-Type: text/csv\r\n"
        b'Content-Disposition: attachment; filename="lignes.csv"\r\n\r\na;b\r\n'
    )
    raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART, png, pdf_part(), csv)
    sealed = seal(raw, signing_material, DocumentRules())
    assert sealed.documents == ("decompte-123.pdf",)
    kinds = [part.get_content_type() for part in leaves(parsed(sealed.data))]
    assert kinds == [
        "text/plain",
        "image/png",
        "application/pdf",
        "application/pkcs7-signature",
        "text/csv",
    ]
    check_sealed(sealed, signing_material, tmp_path)


def test_a_message_without_documents_is_only_dkim_signed(
    signing_material: SigningMaterial,
) -> None:
    raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART)
    sealed = seal(raw, signing_material, DocumentRules())
    assert sealed.documents == ()
    assert strip_dkim(sealed.data) == raw
    assert dkimpy_results(sealed.data, dns_records(signing_material)) == [True, True]


def test_a_forwarded_message_inside_is_not_entered(signing_material: SigningMaterial) -> None:
    forwarded = (
        b"Content-Type: message/rfc822\r\n\r\n"
        + HEADERS
        + multipart(b"mixed", b"fwd", TEXT_PART, pdf_part())
    )
    raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART, forwarded)
    assert seal(raw, signing_material, DocumentRules()).documents == ()


def test_a_signed_or_encrypted_multipart_is_not_entered(
    signing_material: SigningMaterial,
) -> None:
    smime = (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' micalg=sha-256; boundary="signed-b"\r\n\r\n'
        b"--signed-b\r\n" + multipart(b"mixed", b"inner-b", TEXT_PART, pdf_part()) + b"\r\n"
        b"--signed-b\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n"
        b"--signed-b--\r\n"
    )
    raw = HEADERS + smime
    sealed = seal(raw, signing_material, DocumentRules())
    assert sealed.documents == ()
    assert strip_dkim(sealed.data) == raw


def test_filename_globs_choose_documents(signing_material: SigningMaterial, tmp_path: Path) -> None:
    csv = (
        b"Content-Type: text/csv\r\n"
        b'Content-Disposition: attachment; filename="Decompte-2026-02.CSV"\r\n\r\n'
        b"date;montant\r\n2026-02-03;12,50\r\n"
    )
    other = (
        b"Content-Type: text/csv\r\n"
        b'Content-Disposition: attachment; filename="notes.csv"\r\n\r\nx\r\n'
    )
    raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART, pdf_part(), csv, other)
    rules = DocumentRules(content_types=(), filename_globs=("decompte-*.csv",))
    sealed = seal(raw, signing_material, rules)
    assert sealed.documents == ("Decompte-2026-02.CSV",)
    [(document, _)] = check_sealed(sealed, signing_material, tmp_path)
    assert document.get_content_type() == "text/csv"

    both = DocumentRules(filename_globs=("decompte-*.csv",))
    assert seal(raw, signing_material, both).documents == (
        "decompte-123.pdf",
        "Decompte-2026-02.CSV",
    )


def test_a_message_that_is_itself_the_document_is_wrapped(
    signing_material: SigningMaterial, tmp_path: Path
) -> None:
    raw = HEADERS + pdf_part() + b"\r\n"
    sealed = seal(raw, signing_material, DocumentRules())
    message = parsed(sealed.data)
    assert message.get_content_type() == "multipart/mixed"
    assert message["Subject"] == "Votre decompte"
    assert message["MIME-Version"] == "1.0"
    [(document, signature)] = check_sealed(sealed, signing_material, tmp_path)
    assert payload(document) == PDF
    assert document["Content-Disposition"] == 'attachment; filename="decompte-123.pdf"'
    assert signature.get_filename() == "decompte-123.pdf.p7s"
    # Only the Content-* fields moved; the body bytes follow them untouched.
    assert pdf_part() + b"\r\n" in sealed.data


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "reason"),
    [
        (
            b"Content-Type: application/pdf; name=a.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            b"JVBERi0xLjQK!!!notbase64\r\n",
            "not valid base64",
        ),
        (
            b"Content-Type: application/pdf; name=a.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            b"JVBERi0xLjQKJ\r\n",
            "not valid base64",
        ),
        (
            b"Content-Type: application/pdf; name=a.pdf\r\n"
            b"Content-Transfer-Encoding: x-uuencode\r\n\r\n"
            b"begin 644 a.pdf\r\n",
            "unknown transfer encoding",
        ),
    ],
    ids=["bad-alphabet", "bad-padding", "unknown-encoding"],
)
def test_an_undecodable_document_is_refused(
    signing_material: SigningMaterial, part: bytes, reason: str
) -> None:
    raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART, part)
    with pytest.raises(SealError, match=reason) as refused:
        seal(raw, signing_material, DocumentRules())
    assert "'a.pdf'" in str(refused.value)


def test_a_message_without_from_is_refused(signing_material: SigningMaterial) -> None:
    raw = b"To: <member@example.net>\r\nSubject: x\r\n\r\nbody\r\n"
    with pytest.raises(SealError, match="no From header"):
        seal(raw, signing_material, DocumentRules())


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            b"Content-Type: text/plain\r\n" + HEADERS + multipart(b"mixed", b"b1", TEXT_PART),
            "content-type twice",
        ),
        (
            HEADERS
            + multipart(
                b"mixed", b"b1", TEXT_PART, b"Content-Disposition: inline\r\n" + pdf_part()
            ),
            "content-disposition twice",
        ),
        (
            HEADERS.replace(b"MIME-Version", b"Content-Transfer-Encoding: base64\r\nMIME-Version")
            + multipart(b"mixed", b"b1", TEXT_PART),
            "RFC 2045",
        ),
        (
            HEADERS
            + multipart(b"mixed", b"b1", TEXT_PART).replace(
                b'boundary="b1"', b'boundary="b1"; boundary="b2"', 1
            ),
            "two boundaries",
        ),
    ],
    ids=["root-content-type", "part-disposition", "encoded-multipart", "two-boundaries"],
)
def test_a_part_that_reads_two_ways_is_refused(
    signing_material: SigningMaterial, raw: bytes, reason: str
) -> None:
    """The verifier never calls such a statement authentic (verifier/mime.py): sealing it
    would send insurers a statement that cannot verify."""
    with pytest.raises(UnsealableMessage, match=reason):
        seal(raw, signing_material, DocumentRules())


def test_absurd_nesting_is_refused(signing_material: SigningMaterial) -> None:
    body = pdf_part()
    for level in range(40):
        body = multipart(b"mixed", f"level-{level}".encode(), body)
    with pytest.raises(SealError, match="nested"):
        seal(HEADERS + body, signing_material, DocumentRules())


def test_p7s_header_lines_stay_within_78_columns(signing_material: SigningMaterial) -> None:
    for name in ("a.pdf", "decompte-de-prestations-n123-" + "x" * 27 + ".pdf", "d" * 70 + ".pdf"):
        disposition = b'attachment; filename="' + name.encode() + b'"'
        raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART, pdf_part(disposition))
        sealed = seal(raw, signing_material, DocumentRules())
        [(_, signature)] = signed_pairs(parsed(sealed.data))
        assert signature.get_filename() == f"{name}.p7s"
        start = sealed.data.index(b"Content-Type: application/pkcs7-signature")
        header_block = sealed.data[start : sealed.data.index(b"\r\n\r\n", start)]
        assert max(len(line) for line in header_block.split(b"\r\n")) <= 78


# --- any arrangement of parts ---------------------------------------------------------------

BOUNDARY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?"


@st.composite
def entities(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, list[bytes], list[bytes]]:
    """A MIME entity: its bytes, the documents in it (decoded), and its boundaries."""
    kind = draw(st.sampled_from(["text", "pdf", "multipart"] if depth < 3 else ["text", "pdf"]))
    if kind == "text":
        words = draw(st.lists(st.sampled_from(["Bonjour", "solde", "--", "=", " ", "\t"])))
        return b"Content-Type: text/plain\r\n\r\n" + " ".join(words).encode(), [], []
    if kind == "pdf":
        document = draw(st.binary(max_size=600))
        width = draw(st.sampled_from([4, 60, 76]))
        encoded = base64.b64encode(document)
        lines = [encoded[i : i + width] for i in range(0, len(encoded), width)] or [b""]
        name = draw(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True))
        entity = (
            b"Content-Type: application/pdf; name=" + name.encode() + b".pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b"\r\n".join(lines)
        )
        return entity, [document], []
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=30)).encode()
    children = draw(st.lists(entities(depth + 1), min_size=1, max_size=4))
    inner_boundaries = [b for _, _, bs in children for b in bs]
    # RFC 2046: no boundary may start another one, or a delimiter line would be ambiguous.
    assume(not any(b.startswith(boundary) or boundary.startswith(b) for b in inner_boundaries))
    subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related"]))
    entity = multipart(subtype, boundary, *(child for child, _, _ in children))
    documents = [d for _, docs, _ in children for d in docs]
    return entity, documents, [boundary, *inner_boundaries]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity=entities(), lf=st.booleans())
def test_any_arrangement_keeps_the_original_and_signs_each_document(
    signing_material: SigningMaterial, entity: tuple[bytes, list[bytes], list[bytes]], lf: bool
) -> None:
    body, documents, boundaries = entity
    assume(len(set(boundaries)) == len(boundaries))
    raw = HEADERS + body
    sealed = seal(raw.replace(b"\r\n", b"\n") if lf else raw, signing_material, DocumentRules())
    assert len(sealed.documents) == len(documents)
    pairs = signed_pairs(parsed(sealed.data))
    assert [payload(document) for document, _ in pairs] == documents
    for document, signature in pairs:
        info = asn1_cms.ContentInfo.load(payload(signature))
        [signer] = info["content"]["signer_infos"]
        digests = [a["values"].native[0] for a in signer["signed_attrs"]
                   if a["type"].native == "message_digest"]  # fmt: skip
        assert digests == [hashlib.sha256(payload(document)).digest()]
    if boundaries:
        assert segments(strip_dkim(sealed.data), boundaries) == segments(raw, boundaries)
    else:
        assert strip_dkim(sealed.data).startswith(HEADERS)


def test_a_document_without_a_name_gets_a_numbered_one(signing_material: SigningMaterial) -> None:
    unnamed = b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    raw = HEADERS + multipart(b"mixed", b"b1", TEXT_PART, unnamed + PDF_B64.rstrip(b"\r\n"))
    sealed = seal(raw, signing_material, DocumentRules())
    assert sealed.documents == ("document-1",)
    [(document, signature)] = signed_pairs(parsed(sealed.data))
    assert payload(document) == PDF
    assert signature.get_filename() == "document-1.p7s"


def test_without_now_the_signature_time_is_the_current_time(
    signing_material: SigningMaterial,
) -> None:
    before = int(dt.datetime.now(dt.UTC).timestamp())
    sealed = seal(
        HEADERS + b"Content-Type: text/plain\r\n\r\nx\r\n", signing_material, DocumentRules()
    )
    after = int(dt.datetime.now(dt.UTC).timestamp())
    stamps = [int(t) for t in re.findall(rb"\bt=(\d+);", sealed.data)]
    assert len(stamps) == 2
    assert all(before <= stamp <= after for stamp in stamps)


def test_an_expired_signing_certificate_is_refused_rather_than_used(statement: bytes) -> None:
    expired = make_material(issued_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=400))
    with pytest.raises(SealError, match=r"valid from .* not now: rotate and activate"):
        seal(statement, expired, DocumentRules())
    # Mail without a statement document needs no certificate: DKIM keys do not expire.
    note = crlf(b"From: statements@caisses.example\nTo: m@example.org\nSubject: hi\n\nHi\n")
    assert seal(note, expired, DocumentRules()).documents == ()


# --- the delimiter scan, against the regular expression it replaced --------------------


def reference_child_spans(
    message: bytes, start: int, end: int, boundary: bytes
) -> list[tuple[int, int]]:
    """RFC 2046 5.1.1's delimiter lines found with a multiline regular expression: the
    definition the byte scan in seal must agree with."""
    delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r\n|\Z)", re.MULTILINE)
    spans: list[tuple[int, int]] = []
    child_start: int | None = None
    for match in delimiter.finditer(message, start, end):
        if child_start is not None:
            spans.append((child_start, max(child_start, match.start() - 2)))
            child_start = None
        if match.group(1):
            return spans
        child_start = min(match.end() + 2, end)
    if child_start is not None:
        child_end = end - 2 if message.endswith(b"\r\n", child_start, end) else end
        spans.append((child_start, max(child_start, child_end)))
    return spans


# Pieces that sit on both sides of a delimiter's rules: line starts, look-alike
# boundaries, close markers, trailing blanks, bare line ends.
SPAN_PIECES = st.sampled_from(
    [
        b"--b",
        b"--b--",
        b"--bb",
        b"-b",
        b"--",
        b"b",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b"x",
        b"--b \t",
        b"--b\t",
        b"--b-x",
        b"-",
        b"\r\n--b\r\n",
        b"\r\n--b--\t\r\n",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(SPAN_PIECES, max_size=24),
    boundary=st.sampled_from([b"b", b"bb", b"b--"]),
    cut=st.tuples(st.integers(0, 8), st.integers(0, 8)),
)
def test_the_delimiter_scan_finds_exactly_the_spans_of_the_rfc_2046_expression(
    pieces: list[bytes], boundary: bytes, cut: tuple[int, int]
) -> None:
    from gateway.seal import _child_spans

    message = b"".join(pieces)
    start = min(cut[0], len(message))
    end = max(start, len(message) - cut[1])
    assert _child_spans(message, start, end, boundary) == reference_child_spans(
        message, start, end, boundary
    )


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_base64_lines_are_what_encodebytes_writes(data: bytes) -> None:
    expected = base64.encodebytes(data).replace(b"\n", b"\r\n").removesuffix(b"\r\n")
    assert base64_lines(data) == expected


def reads_two_ways_field_by_field(headers: Message) -> str | None:
    """The check as it was, one get_all() and get_content_maintype() call at a time."""
    for name in ("content-type", "content-transfer-encoding", "content-disposition"):
        values = headers.get_all(name) or []
        if len({" ".join(str(v).split()).lower() for v in values}) > 1:
            return f"gives {name} twice, differently"
    try:
        params = headers.get_params(header="content-type") or []
    except (ValueError, LookupError, TypeError, IndexError):
        params = []
    if len({str(v) for k, v in params if str(k).strip().lower() == "boundary"}) > 1:
        return "gives two boundaries"
    encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
    if headers.get_content_maintype() == "multipart" and encoding not in ("7bit", "8bit", "binary"):
        return f"is a multipart with transfer encoding {encoding[:20]!r} (RFC 2045 6.4)"
    return None


MIME_FIELDS = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=a\r\n",
        b"content-type: Multipart/Mixed;  boundary=a\r\n",
        b"Content-Type: multipart/mixed; boundary=a; boundary=b\r\n",
        b"Content-Type: application/pdf\r\n",
        b"Content-Type: text/plain; charset=\xc3\xa9\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"CONTENT-TRANSFER-ENCODING:  Base64 \r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Disposition: attachment\r\n",
        b"Content-Disposition: inline\r\n",
        b"Subject: x\r\n",
    ]
)


@settings(max_examples=400, deadline=None)
@given(fields=st.lists(MIME_FIELDS, max_size=6))
def test_the_two_ways_check_reads_each_field_once_and_judges_as_before(
    fields: list[bytes],
) -> None:
    headers = header_block.parse(b"".join(fields))
    content_type = headers.get_content_type()
    encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
    found = _reads_two_ways(headers, content_type, encoding)
    assert found == reads_two_ways_field_by_field(headers)

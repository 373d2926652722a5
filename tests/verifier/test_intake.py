"""What an upload is made of: line ends, defects readers disagree on, attachments by what
they are rather than what they are called, forwarded messages."""

from __future__ import annotations

import pytest

from verifier import intake
from verifier.settings import Limits


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Releve.PDF", "releve.pdf"),
        ("releve.pdf.", "releve.pdf"),
        ("releve.pdf . .", "releve.pdf"),
        ("rel\u200beve.p\u200bdf", "releve.pdf"),
        ("releve\u202e.pdf", "releve.pdf"),
        ("ｒｅｌｅｖｅ．ｐｄｆ", "releve.pdf"),
        ("releve.pd\u00adf", "releve.pdf"),
    ],
)
def test_file_names_are_compared_as_a_person_reads_them(name: str, key: str) -> None:
    assert intake.name_key(name) == key


def _with_part(headers: bytes, body: bytes) -> bytes:
    return (
        b'From: a@caisses.example\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b\r\n" + headers + b"\r\n" + body + b"\r\n--b--\r\n"
    )


def test_a_pdf_is_a_document_whatever_it_is_called_or_declared() -> None:
    upload = intake.parse(
        _with_part(b'Content-Type: application/octet-stream; name="scan.bin"\r\n', b"%PDF-1.7"),
        Limits(),
    )
    (attachment,) = upload.attachments
    assert attachment.is_document
    assert not attachment.is_signature


def test_the_message_text_is_not_an_attachment_but_a_named_text_file_is() -> None:
    upload = intake.parse(
        _with_part(b'Content-Type: text/plain; name="notes.txt"\r\n', b"notes"), Limits()
    )
    assert [a.filename for a in upload.attachments] == ["notes.txt"]


def test_a_saved_eml_is_a_forwarded_message() -> None:
    upload = intake.parse(
        _with_part(b'Content-Type: application/octet-stream; name="x.eml."\r\n', b"From: b"),
        Limits(),
    )
    assert upload.inner == [b"From: b"]
    assert upload.attachments == []


def test_lf_files_get_crlf_back_and_a_mix_is_left_alone() -> None:
    assert intake.normalise(b"A: 1\nB: 2\n\nx\n") == (b"A: 1\r\nB: 2\r\n\r\nx\r\n", "lf")
    assert intake.normalise(b"A: 1\r\nB: 2\n")[1] == "mixed"


@pytest.mark.parametrize(("body", "defect"), [(b"a\rb", "bare_cr"), (b"a\x00b", "nul")])
def test_bytes_readers_disagree_on_are_defects_anywhere(body: bytes, defect: str) -> None:
    upload = intake.parse(b"From: a@caisses.example\r\nSubject: x\r\n\r\n" + body, Limits())
    assert defect in upload.defects

"""The whole DATA path (policy checks, then sealing) on statements mutated the ways broken
and hostile clients mutate them: header pieces, MIME boundaries, transfer encodings,
RFC 2231 and RFC 2047 file names, nested messages, truncation.

Every message gets one of two answers: a permanent refusal that says what is wrong (5xx
with an enhanced code, never 451, which would have the client retry the same bytes
forever), or 250 for a message whose seals the verifier finds authentic. Nothing else:
no exception, nothing in the log at ERROR.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope, Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.metrics import Metrics
from gateway.seal import (
    MAX_DEPTH,
    MAX_DOCUMENTS,
    MAX_PARTS,
    DocumentRules,
    Sealed,
    SealError,
    UnsealableMessage,
    seal,
)
from gateway.smtp_handler import AuthGuard, Handler, SealerLike
from keys.archive import load_archive
from keys.signing import SigningMaterial
from tests.gateway.test_smtp_handler import CLIENTS, DOMAIN, InlineSealer, RecordingSpool
from tests.verifier.conftest import KeyHistory, write_archive
from verifier.report import Verdict
from verifier.settings import Limits
from verifier.trust import Trust
from verifier.verify import verify_email

PDF = base64.encodebytes(b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"%%EOF\n")
STATEMENT = (
    (
        f'From: "Caisses Sociales" <decomptes@{DOMAIN}>\r\n'
        "To: <membre@example.org>\r\nSubject: Votre decompte\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour.\r\n"
        '--b1\r\nContent-Type: application/pdf; name="decompte-1.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="decompte-1.pdf"\r\n\r\n'
    ).encode()
    + PDF.replace(b"\n", b"\r\n")
    + b"--b1--\r\n"
)

# Pieces a prober splices in where a header or a delimiter line starts or goes on.
PIECES = [
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b'Content-Type: multipart/mixed; boundary=""\r\n',
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: application/pdf\r\n",
    b"Content-Type: multipart/signed; protocol=x; boundary=b1\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Disposition: attachment; filename*=utf-8''%C3%A9%ZZ.pdf\r\n",
    b"Content-Disposition: attachment; filename*0*=us-ascii'en'a; filename*2=c.pdf\r\n",
    b'Content-Disposition: attachment; filename="=?utf-8?q?a=0D=0Ab?=.pdf"\r\n',
    b'Content-Disposition: attachment; filename="=?x-unknown?b?!!!?=.pdf"\r\n',
    b"Content-Disposition: attachment; filename*=utf-8''%00.pdf\r\n",
    'Content-Disposition: attachment; filename="é.pdf";é*\r\n'.encode(),
    b"From: Content-Type: multipart/mixed; boundary=x\r\n",
    b"From: =?utf-8?q?=FF?= <a@b.example>\r\n",
    b"Subject: =?utf-8?b?////?=\r\n",
    b"X-Folded: a\r\n b\r\n\tc\r\n",
    b" continuation\r\n",
    b"Not a field\r\n",
    b"Subject : obsolete\r\n",
    b"--b1\r\n",
    b"--b1--\r\n",
    b"--x\r\nContent-Type: application/pdf\r\n\r\nJVBERi0=\r\n--x--\r\n",
    b"\r\n",
    "é".encode(),
    b"\xff",
    b";",
    b'"',
    b"=?",
    b"*",
    b"%",
]


def _line_starts(raw: bytes) -> list[int]:
    return [0, *(m.end() for m in re.finditer(rb"\r\n", raw))]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = STATEMENT
    for _ in range(draw(st.integers(1, 4))):
        starts = _line_starts(raw)
        # Mostly where headers and delimiters are: the top, and the lines near "--b1".
        interesting = [i for i in starts if i < 400 or raw.startswith((b"--", b"Content"), i)]
        at = draw(st.sampled_from(interesting)) + draw(st.sampled_from([0, 0, 2, 9, 14, 20]))
        at = min(at, len(raw))
        how = draw(st.sampled_from(["insert", "insert", "delete", "truncate", "bytes"]))
        if how == "insert":
            raw = raw[:at] + draw(st.sampled_from(PIECES)) + raw[at:]
        elif how == "delete":
            raw = raw[:at] + raw[at + draw(st.integers(1, 30)) :]
        elif how == "truncate":
            raw = raw[:at]
        else:
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    return raw


@dataclass
class _Server:
    """What Handler.handle_DATA reads of the connection: the allow-listed client."""

    client_ip: str = "127.0.0.1"
    authenticated_client: str | None = None
    replies: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory, signing_material: SigningMaterial) -> Trust:
    archive = write_archive(
        tmp_path_factory.mktemp("public") / "public", [(signing_material, KeyHistory("active"))]
    )
    return Trust(load_archive(Path(archive)))


def make_handler(
    material: SigningMaterial, sealer: SealerLike | None = None
) -> tuple[Handler, RecordingSpool]:
    spool = RecordingSpool()
    handler = Handler(
        clients=CLIENTS,
        signing_domains=lambda: {DOMAIN},
        sealer=sealer or InlineSealer(material),
        spool=spool,
        metrics=Metrics(),
        auth_guard=AuthGuard(3, 5, lockout=60.0, delay=0.0),
        max_recipients=10,
        max_line_length=998,
    )
    return handler, spool


async def data_reply(handler: Handler, raw: bytes) -> str:
    envelope = Envelope()
    envelope.mail_from = f"decomptes@{DOMAIN}"
    envelope.rcpt_tos = ["membre@example.org"]
    envelope.original_content = envelope.content = raw
    session = Session(loop=None)  # type: ignore[arg-type]
    return await handler.handle_DATA(_Server(), session, envelope)  # type: ignore[arg-type]


_PERMANENT = re.compile(r"5\d\d 5\.\d{1,3}\.\d{1,3} [ -~]{10,}")


async def test_the_statement_itself_is_accepted_and_authentic(
    signing_material: SigningMaterial, trust: Trust
) -> None:
    handler, spool = make_handler(signing_material)
    assert (await data_reply(handler, STATEMENT)).startswith("250 2.0.0 Queued as ")
    report = verify_email(spool.puts[0].data, trust, Limits())
    assert report.verdict is Verdict.AUTHENTIC


@settings(
    max_examples=150,  # about 3 s
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=mutated())
async def test_a_mutated_statement_is_refused_for_good_or_sealed_authentic(
    signing_material: SigningMaterial,
    trust: Trust,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    caplog.clear()
    handler, spool = make_handler(signing_material)
    reply = await data_reply(handler, raw)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    if reply.startswith("250 "):
        [stored] = spool.puts
        report = verify_email(stored.data, trust, Limits())
        assert report.verdict is Verdict.AUTHENTIC, report.reason
    else:
        assert _PERMANENT.fullmatch(reply), reply
        assert spool.puts == []


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        # The header registry raised IndexError on the stray "é*" (the message got 451).
        ('filename="é.pdf";é*'.encode(), None),
        # Decoded names holding CR LF or NUL: no header can carry them (a ValueError, 451)
        # or the .p7s header carried a NUL (the fund's own seal then read as altered).
        (b'filename="=?utf-8?q?a=0D=0Ab?=.pdf"', "ab.pdf"),
        (b"filename*=utf-8''%00decompte.pdf", "decompte.pdf"),
        (b'filename="=?utf-8?q?=00=01?="', "document-1"),
    ],
)
def test_a_document_with_an_unreadable_or_control_name_is_still_sealed(
    signing_material: SigningMaterial, trust: Trust, disposition: bytes, name: str | None
) -> None:
    raw = STATEMENT.replace(b'filename="decompte-1.pdf"', disposition).replace(
        b'; name="decompte-1.pdf"', b""
    )
    sealed = seal(raw, signing_material, DocumentRules())
    assert len(sealed.documents) == 1
    if name is not None:
        assert sealed.documents == (name,)
    assert verify_email(sealed.data, trust, Limits()).verdict is Verdict.AUTHENTIC


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ((b"JVBERi0x", b"JVBE!!0x"), "not valid base64"),
        ((b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: x-uue"), "unknown"),
    ],
)
async def test_a_document_that_cannot_be_decoded_is_refused_for_good(
    signing_material: SigningMaterial, damage: tuple[bytes, bytes], reason: str
) -> None:
    """Before, 451: the client kept the message and retried the same bytes until it expired."""
    raw = STATEMENT.replace(*damage)
    with pytest.raises(UnsealableMessage, match=reason):
        seal(raw, signing_material, DocumentRules())
    handler, spool = make_handler(signing_material)
    reply = await data_reply(handler, raw)
    assert reply.startswith("550 5.6.0 Message cannot be sealed: document 'decompte-1.pdf' ")
    assert reason in reply
    assert spool.puts == []


class _NoKey:
    async def seal(self, raw: bytes, domain: str) -> Sealed:
        raise SealError(f"no signing key for {domain}: none active")


async def test_a_fault_of_the_gateway_stays_transient(signing_material: SigningMaterial) -> None:
    """Only the message's own faults are refused for good; no key (after a revocation,
    before the next activation) is the gateway's, and the client retries."""
    handler, spool = make_handler(signing_material, _NoKey())
    assert await data_reply(handler, STATEMENT) == (
        "451 4.3.0 Message could not be sealed, try again later"
    )
    assert spool.puts == []


@pytest.mark.parametrize(
    ("line", "number"),
    [
        (b"Not a field\r\n", 2),
        (b"Subject : obsolete syntax\r\n", 2),
        (b"X\xc3\xa9: non-ASCII name\r\n", 2),
    ],
)
async def test_a_header_line_that_is_not_a_field_is_refused(
    signing_material: SigningMaterial, line: bytes, number: int
) -> None:
    """dkimpy cannot sign such a line: the message got 451 and was retried forever."""
    raw = STATEMENT.replace(b"\r\nTo:", b"\r\n" + line + b"To:", 1)
    handler, _ = make_handler(signing_material)
    reply = await data_reply(handler, raw)
    assert reply.startswith(f"550 5.6.0 Header line {number} is not a header field")


async def test_a_message_starting_with_a_continuation_line_is_refused(
    signing_material: SigningMaterial,
) -> None:
    handler, _ = make_handler(signing_material)
    reply = await data_reply(handler, b" folded\r\n" + STATEMENT)
    assert reply.startswith("550 5.6.0 Header line 1 is not a header field")


def test_the_bounds_are_the_verifiers_own() -> None:
    """A statement is sealed only if the fund's verifier, as shipped, can judge it."""
    shipped = Limits()
    assert (
        shipped.max_mime_depth,
        shipped.max_mime_parts,
        shipped.max_documents,
    ) == (MAX_DEPTH, MAX_PARTS, MAX_DOCUMENTS)


def _multipart(*parts: bytes, boundary: bytes = b"b") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (
        b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
        + body + b"--" + boundary + b"--\r\n"
    )  # fmt: skip


_TOP = f"From: <decomptes@{DOMAIN}>\r\nMIME-Version: 1.0\r\n".encode()
_PDF_PART = b"Content-Type: application/pdf\r\n\r\n%PDF-1.4"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # A million empty parts in 7 MB: before, 15 s of CPU and gigabytes to read them.
        (_TOP + _multipart(*[b""] * 1_000_000), "more than 200 MIME parts"),
        (_TOP + _multipart(*[b"Content-Type: text/plain\r\n\r\nx"] * 200), "more than 200"),
        (_TOP + _multipart(*[_PDF_PART] * 51), "51 statement documents; at most 50"),
    ],
    ids=["a-million-parts", "201-parts", "51-documents"],
)
def test_a_message_beyond_the_bounds_is_refused_for_good(
    signing_material: SigningMaterial, raw: bytes, reason: str
) -> None:
    with pytest.raises(UnsealableMessage, match=reason):
        seal(raw, signing_material, DocumentRules())


def test_the_parts_counted_include_the_seals_to_be_added(
    signing_material: SigningMaterial, trust: Trust
) -> None:
    text = b"Content-Type: text/plain\r\n\r\nx"
    # 1 + 149 + 25 parts, and 25 .p7s: exactly the verifier's 200.
    sealed = seal(
        _TOP + _multipart(*[text] * 149, *[_PDF_PART] * 25), signing_material, DocumentRules()
    )
    assert verify_email(sealed.data, trust, Limits()).verdict is Verdict.AUTHENTIC
    with pytest.raises(UnsealableMessage, match="it would have more than 200"):
        seal(_TOP + _multipart(*[text] * 150, *[_PDF_PART] * 25), signing_material, DocumentRules())


def test_nesting_is_bounded_at_the_verifiers_depth(
    signing_material: SigningMaterial, trust: Trust
) -> None:
    def nested(levels: int) -> bytes:
        part = _PDF_PART
        for level in range(levels):
            part = _multipart(part, boundary=f"level-{level}".encode())
        return _TOP + part

    sealed = seal(nested(MAX_DEPTH), signing_material, DocumentRules())
    assert verify_email(sealed.data, trust, Limits()).verdict is Verdict.AUTHENTIC
    with pytest.raises(UnsealableMessage, match="nested more than 12 levels"):
        seal(nested(MAX_DEPTH + 1), signing_material, DocumentRules())

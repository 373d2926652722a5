"""Turns an upload into something the checks can use: its bytes with one kind of line end,
its header block as the DKIM check reads it, every attachment, and any message forwarded
inside it.

Everything stays in memory. Limits on MIME depth and part count bound the work a hostile
upload can cause.
"""

from __future__ import annotations

import email.header
import email.utils
import re
import unicodedata
from dataclasses import dataclass, field

from verifier import headers, mime
from verifier.report import MessageInfo
from verifier.settings import Limits

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# A header line: a field name of printable characters without a colon, then a colon.
_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]{1,200}:")
_MESSAGE_HEADERS = {
    b"from",
    b"date",
    b"subject",
    b"message-id",
    b"dkim-signature",
    b"received",
    b"mime-version",
    b"to",
    b"return-path",
}
SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
PDF_TYPES = ("application/pdf", "application/x-pdf", "application/acrobat")
# How mail programs attach a message: RFC 2046 and RFC 6532 types, or a saved .eml file.
FORWARD_TYPES = ("message/rfc822", "message/global")
# PDF readers accept the signature anywhere in the first kilobyte.
_PDF_SNIFF = 1024
_DISPLAY_MAX = 300
# Control characters and bidirectional overrides could disguise what a user reads.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Anywhere in a message, these bytes are read differently by different programs: a bare CR
# ends a line for Python's email package and not for dkimpy; many readers stop at NUL.
_BARE_CR = re.compile(rb"\r(?!\n)")


class NotEmail(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def name_key(name: str) -> str:
    """A file name as a person (and Windows, saving it) reads it: compatibility forms
    folded, invisible characters dropped, trailing dots and spaces gone, case ignored."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"))
    return text.strip().rstrip(". \t").casefold()


@dataclass
class Attachment:
    filename: str  # for display: decoded, controls replaced, cut short
    content_type: str
    part: mime.Part
    key: str = ""  # name_key of the full file name
    _decoded: bytes | None = field(default=None, repr=False)

    def decoded(self) -> bytes:
        if self._decoded is None:
            self._decoded = self.part.decoded()
        return self._decoded

    @property
    def is_signature(self) -> bool:
        if self.part.ambiguous:
            return False  # never a seal of the fund's: its gateway writes no such part
        return self.key.endswith(".p7s") or self.content_type in SIGNATURE_TYPES

    @property
    def is_document(self) -> bool:
        """A statement document, whatever its name or declared type says."""
        if self.content_type in PDF_TYPES or self.key.endswith(".pdf"):
            return True
        return b"%PDF-" in self.decoded()[:_PDF_SNIFF]


@dataclass
class Upload:
    raw: bytes  # the upload with one kind of line end: what every check reads
    header: headers.HeaderBlock
    line_ends: str  # crlf, lf (converted) or mixed
    # Bytes anywhere in the message that readers disagree on (bare_cr, nul).
    defects: tuple[str, ...] = ()
    attachments: list[Attachment] = field(default_factory=list)
    # Messages attached to this one (message/rfc822, a .eml), each with its raw bytes.
    forwarded: list[tuple[Attachment, bytes]] = field(default_factory=list)
    # The sender's own S/MIME signature over a multipart/signed (not the fund's seal).
    smime_signed: bool = False

    @property
    def inner(self) -> list[bytes]:
        return [data for _, data in self.forwarded]

    @property
    def dkim_signatures(self) -> list[bytes]:
        """Each DKIM-Signature value as dkimpy's tag parser takes it."""
        return self.header.values(b"dkim-signature")


def sniff(raw: bytes) -> None:
    """Raises NotEmail for uploads we can name and explain before parsing."""
    stripped = raw.lstrip()
    if not stripped:
        raise NotEmail("empty")
    if raw.startswith(OLE2_MAGIC):
        raise NotEmail("outlook_msg")
    if stripped.startswith(b"%PDF-"):
        raise NotEmail("pdf_alone")
    if stripped[:1] == b"\x30":
        raise NotEmail("p7s_alone")
    first = stripped.split(b"\n", 1)[0]
    if not (_HEADER_LINE.match(first) or first.startswith(b"From ")):
        raise NotEmail("no_headers")


def normalise(raw: bytes) -> tuple[bytes, str]:
    """A file saved with LF line ends gets CRLF back, as SMTP carried it (dkimpy reads
    both the same; the MIME reader needs one). A mix is left as it is."""
    crlf = raw.count(b"\r\n")
    lf = raw.count(b"\n")
    if crlf == lf:
        return raw, "crlf"
    if crlf == 0:
        return raw.replace(b"\n", b"\r\n"), "lf"
    return raw, "mixed"


def parse(raw: bytes, limits: Limits) -> Upload:
    sniff(raw)
    data, line_ends = normalise(raw)
    block, _ = headers.split(data)
    header = headers.read(block)
    if not {f.key for f in header.fields} & _MESSAGE_HEADERS:
        raise NotEmail("no_headers")
    try:
        root = mime.read(data, limits.max_mime_depth, limits.max_mime_parts)
    except (mime.TooComplex, RecursionError) as exc:
        raise NotEmail("too_complex") from exc
    parts = mime.walk(root)
    defects = tuple(
        code
        for code, present in (
            ("bare_cr", _BARE_CR.search(data) is not None),
            ("nul", b"\x00" in data),
            ("ambiguous_mime", any(p.ambiguous for p in parts)),
        )
        if present
    )
    upload = Upload(raw=data, header=header, line_ends=line_ends, defects=defects)
    for part in parts:
        _collect(part, root, upload)
    return upload


def _collect(part: mime.Part, root: mime.Part, upload: Upload) -> None:
    if part.protocol_signature:
        upload.smime_signed = True
        return
    if part.children and not part.ambiguous:
        return
    if part.maintype == "multipart" and not part.ambiguous and not part.body.strip():
        # A multipart with nothing in it. One whose boundary is missing or never met
        # still carries bytes a mail program may show some other way: listed below.
        return
    content_type = part.content_type
    raw_name = _raw_filename(part)
    attachment = Attachment(
        filename=_display(raw_name),
        content_type=content_type,
        part=part,
        key=name_key(raw_name),
    )
    if part.ambiguous:
        # What another mail program may read in its place: listed, so that it is never
        # hidden behind "documents authentic" (its children, read the first way, are
        # listed as well).
        upload.attachments.append(attachment)
        return
    if content_type in FORWARD_TYPES or attachment.key.endswith(".eml"):
        upload.forwarded.append((attachment, attachment.decoded()))
        return
    if part is root or _is_message_text(part, raw_name):
        return
    upload.attachments.append(attachment)


def _is_message_text(part: mime.Part, filename: str) -> bool:
    """The message's own text (and the pictures inside an HTML text), not an attachment."""
    disposition = str(part.headers.get("content-disposition", "")).split(";")[0].strip().lower()
    # RFC 2183 2.8: a disposition a program does not know is an attachment to it.
    if filename or disposition not in ("", "inline"):
        return False
    maintype = part.maintype
    if maintype == "text":
        return True
    # A picture the HTML text shows is one it can name (RFC 2387: by Content-ID or
    # Content-Location); mail programs list any other part of a multipart/related as an
    # attachment, a PDF above all, whatever type it claims.
    return (
        maintype == "image"
        and part.parent_type == "multipart/related"
        and any(part.headers.get(name) for name in ("content-id", "content-location"))
        and not part.decoded()[:_PDF_SNIFF].lstrip().startswith(b"%PDF-")
    )


def _raw_filename(part: mime.Part) -> str:
    try:
        name = part.headers.get_filename() or part.headers.get_param("name") or ""
    except (ValueError, LookupError, TypeError):
        return ""
    if isinstance(name, tuple):  # an undecoded RFC 2231 triple
        name = email.utils.collapse_rfc2231_value(name)
    text = _decode_words(str(name)[: _DISPLAY_MAX * 8])
    return text.encode("utf-8", "replace").decode("utf-8")


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded, as mail programs show them."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, TypeError, UnicodeError, AssertionError):
        return value


def _display(value: str) -> str:
    """A value made safe to show: controls replaced, spaces collapsed, cut short; escaping
    for HTML is the page's job."""
    text = value.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub("\ufffd", " ".join(text.split()))
    return text[:_DISPLAY_MAX]


def _field_text(value: bytes) -> str:
    # Undecodable bytes become U+FFFD: no page or JSON could carry lone surrogates.
    unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", value[: _DISPLAY_MAX * 8]).strip()
    text = unfolded.decode("utf-8", "replace")
    return _display(_decode_words(text))


def describe(upload: Upload, signed: set[int] | None) -> MessageInfo:
    """What the page shows of the message. `signed`: the indexes of the header fields a
    passing signature of the fund covers; only those are shown as the fund's. None: no
    such signature, and the first instance of each field is shown, marked as not vouched."""
    fields = upload.header.fields

    def shown(name: bytes) -> str:
        for index, item in enumerate(fields):
            if item.key == name and (signed is None or index in signed):
                return _field_text(item.value)
        return ""

    sender = shown(b"from")
    _, address = email.utils.parseaddr(sender)
    domain = address.rpartition("@")[2].lower() if "@" in address else ""
    return MessageInfo(
        subject=shown(b"subject"),
        sender=sender,
        sender_domain=domain,
        date=shown(b"date"),
        message_id=shown(b"message-id"),
        to=shown(b"to"),
        cc=shown(b"cc"),
        reply_to=shown(b"reply-to"),
        line_ends=upload.line_ends,
        vouched=signed is not None,
        defects=tuple(dict.fromkeys((*upload.defects, *upload.header.defects))),
    )

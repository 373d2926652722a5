"""Turns an upload into something the checks can use: what kind of file it is, the email's
display headers, its documents and signatures, and any message forwarded inside it.

Everything stays in memory. Limits on MIME depth and part count bound the work a hostile
upload can cause.
"""

from __future__ import annotations

import contextlib
import email.header
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser

from verifier.report import MessageInfo
from verifier.settings import Limits

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# A header line: a field name of printable characters without a colon, then a colon.
_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]{1,200}:")
_MESSAGE_HEADERS = (
    "from",
    "date",
    "subject",
    "message-id",
    "dkim-signature",
    "received",
    "mime-version",
    "to",
    "return-path",
)
SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
# Emitting a forwarded message/rfc822 part again must not refold its headers, or the
# inner DKIM signatures would break where the original bytes would pass.
_EMIT = email.policy.SMTP.clone(refold_source="none", max_line_length=0)
_DISPLAY_MAX = 300
_CONTENT_TYPE_LINE = re.compile(rb"^content-type:", re.IGNORECASE | re.MULTILINE)
# Control characters and bidirectional overrides could disguise what a user reads.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class NotEmail(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Attachment:
    filename: str
    content_type: str
    part: Message

    def decoded(self) -> bytes:
        payload = self.part.get_payload(decode=True)
        return payload if isinstance(payload, bytes) else b""

    @property
    def is_signature(self) -> bool:
        return self.filename.lower().endswith(".p7s") or self.content_type in SIGNATURE_TYPES

    @property
    def is_pdf(self) -> bool:
        return self.content_type == "application/pdf" or self.filename.lower().endswith(".pdf")


@dataclass
class Upload:
    raw: bytes
    message: MessageInfo
    attachments: list[Attachment] = field(default_factory=list)
    inner: list[bytes] = field(default_factory=list)  # raw messages forwarded inside
    # Each DKIM-Signature value, unfolded, as bytes (what dkimpy's tag parser takes).
    dkim_signatures: list[bytes] = field(default_factory=list)


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


def parse(raw: bytes, limits: Limits) -> Upload:
    sniff(raw)
    # The standard parser recurses once per nesting level; count the parts before it
    # does, so that a hostile nesting is refused rather than exhausting the stack.
    if len(_CONTENT_TYPE_LINE.findall(raw)) > limits.max_mime_parts:
        raise NotEmail("too_complex")
    try:
        message = BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except RecursionError as exc:
        raise NotEmail("too_complex") from exc
    names = {k.lower() for k in message}
    if not names.intersection(_MESSAGE_HEADERS):
        raise NotEmail("no_headers")
    upload = Upload(raw=raw, message=_info(message, raw))
    upload.dkim_signatures = [
        str(v).encode("utf-8", "surrogateescape") for v in message.get_all("DKIM-Signature", [])
    ]
    _walk(message, upload, limits, depth=0, counter=[0])
    return upload


def _walk(part: Message, upload: Upload, limits: Limits, depth: int, counter: list[int]) -> None:
    counter[0] += 1
    if depth > limits.max_mime_depth or counter[0] > limits.max_mime_parts:
        raise NotEmail("too_complex")
    content_type = part.get_content_type()
    if content_type == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            # Too broken to emit again: then the wrapper is judged on its own.
            with contextlib.suppress(
                UnicodeError, LookupError, ValueError, TypeError, RecursionError
            ):
                upload.inner.append(inner[0].as_bytes(policy=_EMIT))
        return
    if part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    _walk(sub, upload, limits, depth + 1, counter)
        return
    if depth == 0:
        return  # a single-part message has no attachments
    filename = _filename(part)
    if not filename:
        return
    attachment = Attachment(filename=filename, content_type=content_type, part=part)
    if filename.lower().endswith(".eml"):
        upload.inner.append(attachment.decoded())
        return
    upload.attachments.append(attachment)


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except (ValueError, LookupError, TypeError):
        return ""
    if isinstance(name, tuple):  # an undecoded RFC 2231 triple
        name = email.utils.collapse_rfc2231_value(name)
    return _display(str(name))


def _display(value: str) -> str:
    """A header value decoded for a human (RFC 2047), cut short; escaping is the page's job."""
    value = value[: _DISPLAY_MAX * 8]  # decoding a megabyte to show 300 characters is waste
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, TypeError, UnicodeError, AssertionError):
        text = value
    # Undecodable bytes arrive as lone surrogates, which no page or JSON could encode.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub("\ufffd", " ".join(text.split()))
    return text[:_DISPLAY_MAX]


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    if value is None:
        return ""
    return _display(str(value))


def _info(message: Message, raw: bytes) -> MessageInfo:
    sender = _header(message, "From")
    _, address = email.utils.parseaddr(sender)
    domain = address.rpartition("@")[2].lower() if "@" in address else ""
    crlf = raw.count(b"\r\n")
    lf = raw.count(b"\n")
    line_ends = "crlf" if crlf == lf else ("lf" if crlf == 0 else "mixed")
    return MessageInfo(
        subject=_header(message, "Subject"),
        sender=sender,
        sender_domain=domain,
        date=_header(message, "Date"),
        message_id=_header(message, "Message-ID"),
        line_ends=line_ends,
    )

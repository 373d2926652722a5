"""The MIME tree of an upload, read as byte spans of the very bytes the DKIM check hashes.

Python's email parser re-reads a forwarded message/rfc822 part as a message of its own,
even when it travels base64- or quoted-printable-encoded (as Outlook sends it), and
emitting it again rewrites its bytes. Here every part keeps its original bytes: a
forwarded message is handed on exactly as it was received, a document is decoded from
exactly what was sent. The email package only reads each part's own header lines.
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser

from verifier.headers import split

_HEADER_PARSER = BytesHeaderParser(policy=email.policy.compat32)


class TooComplex(Exception):
    """Deeper or with more parts than the limits allow."""


@dataclass
class Part:
    headers: Message  # this part's own header lines, parsed
    body: bytes  # raw, still transfer-encoded
    depth: int
    children: list[Part] = field(default_factory=list)
    # The children of a multipart/signed after the first: the sender's own signature
    # over the part before it, not something the fund sealed.
    protocol_signature: bool = False
    parent_type: str = ""  # the content type of the multipart holding it
    # Its own header lines read two ways (see _ambiguous): listed, never trusted as text,
    # a signature or a forward, whatever the first reading says.
    ambiguous: bool = False

    # Read once: the email package parses the header again at each call.
    @functools.cached_property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    @property
    def maintype(self) -> str:
        """As Message.get_content_maintype()."""
        return self.content_type.split("/")[0]

    @property
    def transfer_encoding(self) -> str:
        return str(self.headers.get("content-transfer-encoding", "7bit")).strip().lower()

    def decoded(self) -> bytes:
        """The body as a mail program decodes it: lenient, as they are."""
        encoding = self.transfer_encoding
        if encoding == "base64":
            try:  # skips line ends and other junk itself, as if they were not there
                return binascii.a2b_base64(self.body)
            except binascii.Error:
                pass
            text = _BASE64_JUNK.sub(b"", self.body)
            try:  # a cut-off last quantum: keep what is whole
                return binascii.a2b_base64(text[: len(text) - len(text) % 4])
            except binascii.Error:
                return b""
        if encoding == "quoted-printable":
            return quopri.decodestring(self.body)
        return self.body


# The sender's own signature over a multipart/signed: S/MIME (RFC 8551) or OpenPGP (RFC 3156).
SENDER_SIGNATURE_TYPES = (
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
    "application/pgp-signature",
)
# Fields that say what a part is and how to read it: each once in a part (RFC 2045, RFC
# 2183). Written twice with different values, one mail program reads the first, another
# the last: a PDF shown by one is plain text to the other, or a boundary cuts the body
# into other parts.
_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")
_MIME_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition")


def _ambiguous(headers: Message) -> bool:
    for name in _MIME_FIELDS:
        values = headers.get_all(name) or []
        if len({" ".join(str(v).split()).lower() for v in values}) > 1:
            return True
    try:
        params = headers.get_params(header="content-type") or []
    except (ValueError, LookupError, TypeError, IndexError):
        return False
    boundaries = {str(v) for k, v in params if str(k).strip().lower() == "boundary"}
    # Only the boundary: a name given twice (an ASCII filename= and an RFC 2231 filename*=)
    # is how mail programs write a name in any script, and the content decides the rest.
    return len(boundaries) > 1


_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")
_BARE_CR = re.compile(rb"\r(?!\n)")


def read(data: bytes, max_depth: int, max_parts: int) -> Part:
    """The tree of `data`, a whole message (headers, blank line, body)."""
    counter = [0]
    return _part(data, 0, max_depth, max_parts, counter)


def _part(data: bytes, depth: int, max_depth: int, max_parts: int, counter: list[int]) -> Part:
    counter[0] += 1
    if depth > max_depth or counter[0] > max_parts:
        raise TooComplex
    block, body = split(data)
    # The email package would end a line (even the header block) at a bare CR; read the
    # lines where dkimpy reads them. Such a message is never authentic, but its documents
    # are still found and checked.
    headers = _HEADER_PARSER.parsebytes(_BARE_CR.sub(b" ", block))
    part = Part(headers=headers, body=body, depth=depth, ambiguous=_ambiguous(headers))
    if part.maintype != "multipart":
        return part
    if part.transfer_encoding not in _IDENTITY_ENCODINGS:
        # RFC 2045 6.4: a multipart is never encoded. One that says it is reads as parts to
        # us and as one encoded blob, decoded first, to a program that believes it.
        part.ambiguous = True
    boundary = headers.get_boundary()
    if not boundary:
        return part
    encoded = boundary.encode("utf-8", "surrogateescape")
    spans = _child_spans(body, encoded)
    for index, child in enumerate(spans):
        sub = _part(child, depth + 1, max_depth, max_parts, counter)
        # RFC 1847: a multipart/signed holds the signed part, then one signature. Anything
        # else in it is shown by mail programs like any attachment, so it is one here.
        sub.protocol_signature = (
            part.content_type == "multipart/signed"
            and index == 1
            and sub.content_type in SENDER_SIGNATURE_TYPES
        )
        sub.parent_type = part.content_type
        part.children.append(sub)
    return part


def _child_spans(body: bytes, boundary: bytes) -> list[bytes]:
    """RFC 2046 5.1.1: each child lies between the line end after one delimiter line and
    the line end before the next; the close delimiter ends the list."""
    children: list[bytes] = []
    start: int | None = None
    for match in _delimiters(body, boundary):
        if start is not None:
            end = match.start()
            end -= 2 if body.startswith(b"\r\n", end - 2) else (1 if end > start else 0)
            children.append(body[start : max(start, end)])
            start = None
        if match.group(1):
            return children
        after = match.end()
        if body.startswith(b"\n", after):
            after += 1
        start = after
    if start is not None:  # no close delimiter: a truncated message, read what is there
        children.append(body[start:])
    return children


def _delimiters(body: bytes, boundary: bytes) -> Iterator[re.Match[bytes]]:
    """The delimiter lines of `body`, as `finditer` finds them, but trying the pattern only
    where its fixed start, "--" and the boundary, is: not at every byte of a document."""
    delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    needle = b"--" + boundary
    position = body.find(needle)
    while position >= 0:
        match = delimiter.match(body, position)  # `^` still asks for a line start here
        if match is None:
            position = body.find(needle, position + 1)
            continue
        yield match
        position = body.find(needle, match.end())


def walk(part: Part) -> list[Part]:
    """Every part, depth first, in message order."""
    found = [part]
    for child in part.children:
        found.extend(walk(child))
    return found

"""Sealing: a CMS `.p7s` next to each statement document, then two DKIM signatures.

Every byte of the original parts stays as it was. The email package is used only to read
headers (content types, boundaries, RFC 2231/2047 file names); the message itself is
never re-serialised, because Python's generator rewrites headers and re-wraps bodies.
Instead the MIME tree is located as byte offsets in the raw message and each new part is
spliced in just before the delimiter that closes its document.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.errors
import fnmatch
import quopri
import re
import secrets
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesHeaderParser

import dkim

from gateway import cms, dkim_sign, header_block
from keys.signing import SigningMaterial
from tlog.entry import Entry, dkim_seal_hash, p7s_seal_hash

CRLF = b"\r\n"
# Bounds on the work a hostile message can cause, and no wider than the verifier's own
# default limits (verifier.settings.Limits): a statement is sealed only if the fund's
# verifier can judge it. Without a count of parts, 10 MB of empty parts took 20 s of CPU
# and gigabytes of memory to read.
MAX_DEPTH = 12
MAX_PARTS = 200
MAX_DOCUMENTS = 50
# compat32 (gateway.header_block) reads content types and boundaries several times faster
# than the header registry; policy.default is used only where its decoding matters, for
# file names.
_NAME_PARSER = BytesHeaderParser(policy=policy.default)
# A file name that fits a quoted string as it is, on a header line of at most 78.
_SEALED_ELSEWHERE = ("multipart/signed", "multipart/encrypted")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9 !#$%&'()*+,\-./:;<=>?@\[\]^_`{|}~]{1,60}")


class SealError(Exception):
    """The message cannot be sealed now (no key, a worker lost); the text says why."""


class UnsealableMessage(SealError):
    """The message itself cannot be sealed, whenever it is tried again (a document that
    does not decode, absurd nesting, no From): refused for good, saying why."""


# What the email package's header registry raises on parameters it cannot read (RFC 2231
# pieces cut short, stray characters after a name): IndexError and AttributeError among
# them, from deep inside its parser, not only its own MessageError.
_REGISTRY_FAULTS = (
    IndexError,
    AttributeError,
    TypeError,
    ValueError,
    LookupError,
    email.errors.MessageError,
)


@dataclass(frozen=True)
class DocumentRules:
    """Which parts are statement documents: by content type, or by file name pattern."""

    content_types: tuple[str, ...] = ("application/pdf",)
    filename_globs: tuple[str, ...] = ()

    def matches_type(self, content_type: str) -> bool:
        lowered = content_type.lower()
        return any(lowered == wanted.lower() for wanted in self.content_types)

    def matches_name(self, filename: str | None) -> bool:
        if filename is None:
            return False
        lowered = filename.lower()
        return any(fnmatch.fnmatchcase(lowered, glob.lower()) for glob in self.filename_globs)


@dataclass(frozen=True)
class Sealed:
    data: bytes
    documents: tuple[str, ...]
    # The statement-log entry naming these seals (tlog/entry.py): no personal data.
    entry: bytes = b""


@dataclass(frozen=True)
class _Part:
    header_block: bytes  # its header lines, each with its CRLF
    body_start: int  # first byte of its body
    end: int  # one past its last byte; the CRLF before the next delimiter is not the part's
    headers: Message
    content_type: str  # headers.get_content_type(), read once
    encoding: str  # its Content-Transfer-Encoding, in lower case
    boundary: bytes | None  # set when the part is a multipart whose children were read
    children: tuple[_Part, ...]


def seal(
    raw: bytes,
    material: SigningMaterial,
    rules: DocumentRules,
    now: dt.datetime | None = None,
) -> Sealed:
    """Seal one message: `.p7s` for each document, then DKIM RSA-SHA256 and Ed25519-SHA256.

    Raises SealError with a readable reason; nothing is half-sealed.
    """
    # SMTP delivers CRLF; only mail from elsewhere (a file, a test) needs rewriting.
    bare_lf = dkim_sign.BARE_LF
    message = raw if bare_lf.search(raw) is None else bare_lf.sub(CRLF, raw)
    try:
        count = [0]
        root = _read_part(message, 0, len(message), depth=0, count=count)
        if root.headers.get("from") is None:
            raise UnsealableMessage("the message has no From header, so it cannot be DKIM-signed")
        p7s: list[bytes] = []
        if root.boundary is None and _is_document(root, rules):
            message, documents = _wrap_single_document(message, root, material, p7s)
        else:
            message, documents = _attach_signatures(
                message, root, material, rules, p7s, parts=count[0]
            )
        timestamp = int((now or dt.datetime.now(dt.UTC)).timestamp())
        signers = (
            dkim_sign.Signer(material.rsa_selector, material.rsa_key),
            dkim_sign.Signer(material.ed25519_selector, material.ed25519_key),
        )
        # The message was normalised above, and every part spliced in ends its lines in CRLF.
        signed = dkim_sign.sign(message, material.domain, signers, timestamp, no_bare_lf=True)
    except SealError:
        raise
    except (ValueError, LookupError, email.errors.MessageError, dkim.DKIMException) as error:
        raise SealError(f"cannot seal the message: {error}") from error
    entry = Entry(
        sealed_at=dt.datetime.fromtimestamp(timestamp, dt.UTC),
        domain=material.domain,
        generation=material.generation,
        body_hash=signed.body_hash.decode("ascii"),
        dkim=tuple(dkim_seal_hash(value) for value in signed.b_values),
        p7s=tuple(p7s_seal_hash(signature) for signature in p7s),
    )
    return Sealed(signed.headers + message, documents, entry.encode())


# --- reading the MIME structure as byte offsets --------------------------------------------


def _read_part(message: bytes, start: int, end: int, depth: int, count: list[int]) -> _Part:
    """`count` holds the number of parts read so far in the whole message."""
    if depth > MAX_DEPTH:
        raise UnsealableMessage(f"MIME parts are nested more than {MAX_DEPTH} levels deep")
    count[0] += 1
    if count[0] > MAX_PARTS:
        raise UnsealableMessage(f"the message has more than {MAX_PARTS} MIME parts")
    if message.startswith(CRLF, start, end):
        header_end, body_start = start, start + 2  # no headers: a text/plain part
    else:
        blank = message.find(CRLF + CRLF, start, end)
        header_end, body_start = (end, end) if blank < 0 else (blank + 2, blank + 4)
    headers = header_block.parse(message[start:header_end])
    content_type = headers.get_content_type()
    encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
    problem = _reads_two_ways(headers, content_type, encoding)
    if problem:
        raise UnsealableMessage(f"a MIME part {problem}: mail programs would read it two ways")
    multipart = content_type.startswith("multipart/")
    boundary = headers.get_boundary() if multipart else None
    block = message[start:header_end]
    if not boundary:
        return _Part(block, body_start, end, headers, content_type, encoding, None, ())
    encoded = boundary.encode("utf-8", "surrogateescape")
    children = tuple(
        _read_part(message, child_start, child_end, depth + 1, count)
        for child_start, child_end in _child_spans(message, body_start, end, encoded)
    )
    return _Part(block, body_start, end, headers, content_type, encoding, encoded, children)


_MIME_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition")


def _reads_two_ways(headers: Message, content_type: str, encoding: str) -> str | None:
    """What makes a part read differently by different programs, as the verifier judges it
    (verifier/mime.py): such a statement would never verify as authentic, so it is not
    sealed. `content_type` and `encoding` as _read_part read them from `headers`."""
    # The values headers.get_all() gives for each name, in one pass over the fields.
    seen: dict[str, set[str]] = {}
    for name, value in headers.raw_items():
        lowered = name.lower()
        if lowered in _MIME_FIELDS:
            fetched = headers.policy.header_fetch_parse(name, value)
            seen.setdefault(lowered, set()).add(" ".join(str(fetched).split()).lower())
    for name in _MIME_FIELDS:
        if len(seen.get(name, ())) > 1:
            return f"gives {name} twice, differently"
    try:
        params = headers.get_params(header="content-type") or []
    except (ValueError, LookupError, TypeError, IndexError):
        params = []
    if len({str(v) for k, v in params if str(k).strip().lower() == "boundary"}) > 1:
        return "gives two boundaries"
    if content_type.startswith("multipart/") and encoding not in ("7bit", "8bit", "binary"):
        return f"is a multipart with transfer encoding {encoding[:20]!r} (RFC 2045 6.4)"
    return None


def _child_spans(message: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Byte spans of a multipart's children (RFC 2046 5.1.1): each starts after its
    delimiter line and ends before the CRLF that precedes the next delimiter.

    A delimiter line is "--" boundary at the start of a line, "--" after it for the close
    delimiter, then spaces or tabs up to CRLF (or the part's end). Found with bytes.find:
    the equivalent multiline regular expression cost a tenth of sealing a 27 KB statement.
    """
    dash = b"--" + boundary
    spans: list[tuple[int, int]] = []
    child_start: int | None = None
    at = message.find(dash, start, end)
    while at >= 0:
        line_end = _delimiter_end(message, at, end, dash)
        if line_end is None:
            at = message.find(dash, at + 1, end)
            continue
        if child_start is not None:
            spans.append((child_start, max(child_start, at - 2)))
            child_start = None
            if len(spans) > MAX_PARTS:  # before listing millions of them
                raise UnsealableMessage(f"the message has more than {MAX_PARTS} MIME parts")
        if message.startswith(b"--", at + len(dash), end):
            return spans  # the close delimiter; what follows is the epilogue
        child_start = min(line_end + 2, end)
        at = message.find(dash, line_end, end)
    if child_start is not None:  # no close delimiter: a truncated message, read what is there
        child_end = end - 2 if message.endswith(CRLF, child_start, end) else end
        spans.append((child_start, max(child_start, child_end)))
    return spans


def _delimiter_end(message: bytes, at: int, end: int, dash: bytes) -> int | None:
    """Where the delimiter line starting with `dash` at `at` ends (before its CRLF), or
    None when `at` is not the start of a delimiter line."""
    if at > 0 and message[at - 1] != 0x0A:
        return None
    tail = at + len(dash)
    if message.startswith(b"--", tail, end):
        tail += 2
    while tail < end and message[tail] in b" \t":
        tail += 1
    if tail == end or message.startswith(CRLF, tail, end):
        return tail
    return None


def _documents(part: _Part, rules: DocumentRules) -> list[tuple[_Part, bytes]]:
    """Documents in message order, each with the boundary of the multipart holding it.

    message/rfc822 parts are not entered: a forwarded mail's attachments are not the
    fund's statements. Nor are multipart/signed and multipart/encrypted: their content
    is under someone else's seal, which an added part would break.
    """
    found: list[tuple[_Part, bytes]] = []
    if part.boundary is None or part.content_type in _SEALED_ELSEWHERE:
        return found
    for child in part.children:
        if child.boundary is not None:
            found.extend(_documents(child, rules))
        elif _is_document(child, rules):
            found.append((child, part.boundary))
    return found


def _is_document(part: _Part, rules: DocumentRules) -> bool:
    if part.content_type.startswith(("multipart/", "message/")):
        return False
    if rules.matches_type(part.content_type):
        return True
    return bool(rules.filename_globs) and rules.matches_name(_filename(part))


def _filename(part: _Part) -> str | None:
    # compat32 decodes RFC 2231 names; RFC 2047 encoded words in a quoted name (not
    # standard, but what many clients send) and raw 8-bit names need the header registry.
    name = part.headers.get_filename()
    if name is not None and ("=?" in name or not name.isascii()):
        headers = _NAME_PARSER.parsebytes(part.header_block)
        assert isinstance(headers, EmailMessage)
        # When the registry cannot read it, compat32's reading of the name stands.
        with contextlib.suppress(*_REGISTRY_FAULTS):
            name = headers.get_filename()
    if name is None:
        return None
    # Raw 8-bit names (common in SMTPUTF8 mail) come back with surrogate escapes.
    name = _ESCAPED.sub(_unescape, name)
    # A decoded name may hold CR, LF or NUL (from "=0D=0A" or "%00"): no header can carry
    # them, and the verifier's name matching ignores them, so they are dropped.
    return _NAME_UNSAFE.sub("", name) or None


_ESCAPED = re.compile("[\udc80-\udcff]+")
_NAME_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _unescape(escaped: re.Match[str]) -> str:
    return escaped.group().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --- signing and splicing ------------------------------------------------------------------


def _attach_signatures(
    message: bytes,
    root: _Part,
    material: SigningMaterial,
    rules: DocumentRules,
    p7s: list[bytes],
    parts: int,
) -> tuple[bytes, tuple[str, ...]]:
    """`parts`: how many MIME parts the message has; each document adds its `.p7s`."""
    documents = _documents(root, rules)
    if len(documents) > MAX_DOCUMENTS:
        raise UnsealableMessage(
            f"the message has {len(documents)} statement documents; at most {MAX_DOCUMENTS}"
        )
    if parts + len(documents) > MAX_PARTS:
        raise UnsealableMessage(
            f"the message has {parts} MIME parts; with a .p7s for each of its "
            f"{len(documents)} documents it would have more than {MAX_PARTS}"
        )
    names = tuple(_name(part, index) for index, (part, _) in enumerate(documents, 1))
    insertions = [
        (
            part.end,
            CRLF + b"--" + boundary + CRLF + _signature_part(message, part, name, material, p7s),
        )
        for (part, boundary), name in zip(documents, names, strict=True)
    ]
    pieces: list[bytes] = []
    cursor = 0
    for offset, insertion in insertions:
        pieces += [message[cursor:offset], insertion]
        cursor = offset
    pieces.append(message[cursor:])
    return b"".join(pieces), names


def _wrap_single_document(
    message: bytes, root: _Part, material: SigningMaterial, p7s: list[bytes]
) -> tuple[bytes, tuple[str, ...]]:
    """A message that is itself the document has no multipart to hold the `.p7s`.

    This is the one case where original headers move: the message becomes
    multipart/mixed, and its Content-* fields go down with the body into the first part,
    since they describe the document and no longer the message. Everything else (From,
    Subject, ...) stays at the top in its order; the body bytes are unchanged.
    """
    name = _name(root, 1)
    top: list[bytes] = []
    inner: list[bytes] = []
    for field in _fields(root.header_block):
        lowered = field.split(b":", 1)[0].strip().lower()
        (inner if lowered.startswith(b"content-") else top).append(field)
    if not any(f.split(b":", 1)[0].strip().lower() == b"mime-version" for f in top):
        top.append(b"MIME-Version: 1.0" + CRLF)
    boundary = _new_boundary(message)
    top.append(b'Content-Type: multipart/mixed; boundary="' + boundary + b'"' + CRLF)
    delimiter = b"--" + boundary
    wrapped = b"".join(
        [
            *top,
            CRLF,
            delimiter + CRLF,
            *inner,
            CRLF,
            message[root.body_start :],
            CRLF + delimiter + CRLF,
            _signature_part(message, root, name, material, p7s),
            CRLF + delimiter + b"--" + CRLF,
        ]
    )
    return wrapped, (name,)


def _fields(header_block: bytes) -> list[bytes]:
    """Header fields as raw bytes, each with its continuation lines and final CRLF."""
    fields: list[bytes] = []
    for line in header_block.split(CRLF):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + CRLF
        else:
            fields.append(line + CRLF)
    return fields


def _new_boundary(message: bytes) -> bytes:
    while True:
        boundary = b"=_sealpost_" + secrets.token_hex(16).encode("ascii")
        if boundary not in message:
            return boundary


def _name(part: _Part, index: int) -> str:
    return _filename(part) or f"document-{index}"


def _check_validity(material: SigningMaterial) -> None:
    """Refuse rather than send a document whose signature every verifier would reject.
    The real clock, not `now`: OpenSSL writes the real time as the signing time."""
    certificate = material.certificate
    now = dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise SealError(
            f"the signing certificate of generation {material.generation} of "
            f"{material.domain} is valid from {certificate.not_valid_before_utc:%Y-%m-%d} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d}, not now: "
            "rotate and activate a new key generation (sealpost-keys rotate, activate)"
        )


def _signature_part(
    message: bytes, part: _Part, name: str, material: SigningMaterial, p7s: list[bytes]
) -> bytes:
    """The `.p7s` part, without the CRLF that ends its body (that one is the next
    delimiter's). The signature is also added to `p7s`, for the statement log."""
    document = _decoded_body(message, part, name)
    _check_validity(material)
    signature = cms.detached_signature(
        document, material.certificate, material.certificate_key, material.chain
    )
    p7s.append(signature)
    if _PLAIN_NAME.fullmatch(name):
        # The common case, written directly: the email package's header machinery costs
        # more than the CMS signature itself.
        encoded = base64_lines(signature)
        quoted = f'"{name}.p7s"'.encode("ascii")
        return (
            b"Content-Type: application/pkcs7-signature;" + CRLF + b" name=" + quoted + CRLF
            + b"Content-Transfer-Encoding: base64" + CRLF
            + b"Content-Disposition: attachment;" + CRLF + b" filename=" + quoted + CRLF
            + CRLF
            + encoded
        )  # fmt: skip
    sibling = MIMEPart(policy=policy.SMTP)
    # The email package writes RFC 2231 parameters for names that need them, so the
    # `.p7s` carries the document's name in whatever form a client can read.
    sibling.set_content(
        signature,
        "application",
        "pkcs7-signature",
        disposition="attachment",
        filename=f"{name}.p7s",
        params={"name": f"{name}.p7s"},
        cte="base64",
    )
    return sibling.as_bytes().removesuffix(CRLF)


def base64_lines(data: bytes) -> bytes:
    """`data` in base64 lines of 76 characters (RFC 2045 6.8), joined by CRLF, no final
    CRLF: what base64.encodebytes writes, with one encode call instead of one a line."""
    encoded = binascii.b2a_base64(data, newline=False)
    return CRLF.join([encoded[i : i + 76] for i in range(0, len(encoded), 76)])


def _decoded_body(message: bytes, part: _Part, name: str) -> bytes:
    """The document's bytes as any MIME reader decodes them; that is what gets signed."""
    body = message[part.body_start : part.end]
    encoding = part.encoding
    if encoding == "base64":
        try:
            # Strict, unlike the email package, which skips what it cannot read: a
            # signature over a guess at a damaged document would vouch for the guess.
            return base64.b64decode(body.translate(None, b" \t\r\n"), validate=True)
        except binascii.Error as error:
            raise UnsealableMessage(f"document {name!r} is not valid base64 ({error})") from error
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    if encoding in ("7bit", "8bit", "binary"):
        return body
    raise UnsealableMessage(f"document {name!r} has an unknown transfer encoding {encoding!r}")

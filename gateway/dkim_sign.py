"""DKIM signing (RFC 6376, RFC 8463): dkimpy's canonicalisation, OpenSSL's arithmetic.

dkimpy is the reference for what gets hashed (its parser, relaxed canonicalisation and
header selection are used as they are), but its RSA is pure-Python big-number code at
about 19 ms a message. Here the header hash is computed the way dkimpy computes it and
handed to OpenSSL through `cryptography`: RSASSA-PKCS1-v1_5 over the SHA-256 digest, and
for Ed25519 (RFC 8463) a signature over that same SHA-256 digest. The body hash, the
costly part on a 27 KB message, is computed once for every signature.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import correct_empty_body, strip_trailing_lines

# Headers an attacker would add or change to make a sealed statement say something else.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    # Mail programs show Sender ("on behalf of") and thread by these: unsigned, a forger
    # could add them to a genuine statement without breaking its signature.
    b"sender",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    # How the body decodes: unsigned, a text-only statement's encoding could be swapped
    # (7bit for quoted-printable) and show other text under the same signature.
    b"content-transfer-encoding",
)
CANONICALIZATION = b"relaxed/relaxed"
HEADER_NAME = b"DKIM-Signature"
# RFC 5322 recommends lines of at most 78 characters; the signature header is folded so.
_LINE = 78

SigningKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Signer:
    selector: str
    key: SigningKey


def oversigned(headers: Sequence[Sequence[bytes]]) -> tuple[bytes, ...]:
    """h= list: each signed name once more than the message has it.

    Verifiers take signed names from the bottom up and treat an extra name as an empty
    header, so any header of these names added after signing breaks the signature.
    """
    counts: dict[bytes, int] = {}
    for field, _ in headers:
        lowered = field.lower()
        counts[lowered] = counts.get(lowered, 0) + 1
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        names.extend([name] * (counts.get(name, 0) + 1))
    return tuple(names)


@dataclass(frozen=True)
class SignatureHeaders:
    """The DKIM-Signature fields to put on top of a message, and what names them in the
    statement log: each b= value and the body hash they share."""

    headers: bytes
    b_values: tuple[bytes, ...]
    body_hash: bytes


_FIELD = re.compile(rb"([\x21-\x7e]+?):")
# An LF without a CR before it. The LF comes first in the pattern so the regex engine
# skips from LF to LF at C speed: three times faster than comparing the counts of LF and
# CRLF, where the lookbehind form "(?<!\r)\n" tried every position (30 times slower).
BARE_LF = re.compile(rb"\n(?<!\r\n)")


def parse(message: bytes, no_bare_lf: bool = False) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's `rfc822_parse`, without splitting the body into lines: the same header
    list and the same body for a message whose lines all end in CRLF (what seal() signs),
    and dkimpy's own reading of anything else.

    `no_bare_lf`: the caller knows every LF in `message` follows a CR (seal() made it so),
    which spares a scan of the whole message to find it out."""
    if not no_bare_lf and BARE_LF.search(message) is not None:
        parsed: tuple[list[list[bytes]], bytes] = dkim.rfc822_parse(message)
        return parsed
    if not message:
        return [], b""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    block, body = (message, b"") if end < 0 else (message[:end], message[end + 4 :])
    if end < 0 and block.endswith(b"\r\n"):
        block = block[:-2]
    headers: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            headers[-1][1] += line + b"\r\n"  # IndexError on a leading fold, as dkimpy
            continue
        match = _FIELD.match(line)
        if match is not None:
            headers.append([match.group(1), line[match.end() :] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
    return headers, body


# A run of spaces that relaxed canonicalisation changes: one before CRLF, or two or more.
# Its literal first byte lets the regex engine skip to each space at C speed, where
# dkimpy's "[\t ]+" tries every position, and bytes.find / rfind of "  " and " \r\n" were
# slowed by the CR, LF and base64 letters sharing their skip table's bits.
_SPACE_RUN = re.compile(rb" (?: *\r\n| +)")


def _relax(run: re.Match[bytes]) -> bytes:
    return b"\r\n" if run.group().endswith(b"\r\n") else b" "


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4, exactly as dkimpy computes it, in one scan instead of its two
    regular expressions over the whole body (a tenth of a lane's time under load):
    white-space runs before a line end go, other runs become one space."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    canonical: bytes = correct_empty_body(strip_trailing_lines(_SPACE_RUN.sub(_relax, body)))
    return canonical


def signature_headers(
    message: bytes, domain: str, signers: Sequence[Signer], timestamp: int
) -> bytes:
    """The DKIM-Signature header fields for `message` (CRLF line ends), one per signer,
    each ending in CRLF, to be put on top of the message in the order given.

    Raises dkim.DKIMException (or a subclass) when the message cannot be parsed.
    """
    return sign(message, domain, signers, timestamp).headers


def sign(
    message: bytes,
    domain: str,
    signers: Sequence[Signer],
    timestamp: int,
    no_bare_lf: bool = False,
) -> SignatureHeaders:
    """As `signature_headers`, with the b= values and the body hash. `no_bare_lf` as for
    `parse`."""
    headers, body = parse(message, no_bare_lf)
    include = oversigned(headers)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    # Every signature hashes the same selected message headers first (RFC 6376 3.7): they
    # are selected, canonicalised and hashed once, and each signature goes on from a copy.
    signed = hashlib.sha256(signed_header_bytes(headers, include))
    made = [
        _signature_header(signer, domain, timestamp, include, body_hash, signed.copy())
        for signer in signers
    ]
    return SignatureHeaders(
        headers=b"".join(header for header, _ in made),
        b_values=tuple(value for _, value in made),
        body_hash=body_hash,
    )


def select_headers(
    headers: Sequence[tuple[bytes, bytes]], include: Sequence[bytes]
) -> list[tuple[bytes, bytes]]:
    """dkimpy's `select_headers` (RFC 6376 5.4.2: each name in `include` takes the last
    field of that name not yet taken, a name with none left takes nothing), with one pass
    over the fields instead of one per name."""
    unused: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for field in headers:
        unused.setdefault(field[0].lower(), []).append(field)
    selected = []
    for name in include:
        left = unused.get(name)
        if left:
            selected.append(left.pop())
    return selected


def relaxed_headers(headers: Sequence[Sequence[bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 6376 3.4.2, exactly as dkimpy's `Relaxed.canonicalize_headers`, with
    bytes.replace instead of its two regular expressions per field: names in lower case,
    values unfolded, white-space runs made one space, leading and trailing ones gone."""
    canonical = []
    for name, value in headers:
        # dkimpy removes each LF with the CR before it, if any: the CRLFs, then lone LFs.
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\t" in value:
            value = value.replace(b"\t", b" ")
        while b"  " in value:
            value = value.replace(b"  ", b" ")
        canonical.append((name.lower().rstrip(), value.strip() + b"\r\n"))
    return canonical


def signed_header_bytes(headers: Sequence[Sequence[bytes]], include: Sequence[bytes]) -> bytes:
    """What dkimpy's `hash_headers` feeds the hash before the DKIM-Signature field: the
    `include`d fields, relaxed, each as name:value CRLF."""
    selected = select_headers(relaxed_headers(headers), include)
    return b"".join(name + b":" + value for name, value in selected)


def _signature_header(
    signer: Signer,
    domain: str,
    timestamp: int,
    include: tuple[bytes, ...],
    body_hash: bytes,
    hasher: hashlib._Hash,
) -> tuple[bytes, bytes]:
    """`hasher` has hashed the signed message headers already."""
    algorithm = b"rsa-sha256" if isinstance(signer.key, rsa.RSAPrivateKey) else b"ed25519-sha256"
    domain_bytes = domain.encode("ascii")
    # The tags and their order are dkimpy's; no l= (a body must not be extendable) and no
    # x= (a statement must stay verifiable for years).
    tags = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", CANONICALIZATION),
        (b"d", domain_bytes),
        (b"i", b"@" + domain_bytes),
        (b"q", b"dns/txt"),
        (b"s", signer.selector.encode("ascii")),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
    ]
    # The value is folded once, with b= left empty, and those exact bytes are both signed
    # and sent: folding again after signing could move whitespace the hash covered.
    unsigned = _fold(b" ".join(b"%s=%s;" % tag for tag in tags) + b" b=", len(HEADER_NAME) + 2)
    # As dkimpy's hash_headers ends: the signature field relaxed, b= emptied, no CRLF.
    ((name, value),) = relaxed_headers([(HEADER_NAME, dkim.RE_BTAG.sub(b"\\1", b" " + unsigned))])
    hasher.update(name + b":" + value.rstrip())
    digest = hasher.digest()
    if isinstance(signer.key, rsa.RSAPrivateKey):
        signature = signer.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        signature = signer.key.sign(digest)
    header = HEADER_NAME + b": " + unsigned
    used = len(header) - (header.rfind(b"\n") + 1)
    value = base64.b64encode(signature)
    return header + _fold_base64(value, used) + b"\r\n", value


def _fold(value: bytes, used: int) -> bytes:
    """Fold at spaces so that lines stay within 78 characters; `used` is the width
    already taken on the first line (the header name)."""
    lines: list[bytes] = []
    line = b""
    width = used
    for word in value.split(b" "):
        if line and width + 1 + len(word) > _LINE:
            lines.append(line)
            line, width = word, 1 + len(word)
        elif line:
            line += b" " + word
            width += 1 + len(word)
        else:
            line, width = word, width + len(word)
    lines.append(line)
    return b"\r\n ".join(lines)


def _fold_base64(data: bytes, used: int) -> bytes:
    """Fold the b= value; folding whitespace inside it is allowed and ignored."""
    room = max(_LINE - used, 0)
    step = _LINE - 1
    pieces = [data[:room]] + [data[i : i + step] for i in range(room, len(data), step)]
    return b"\r\n ".join(pieces)

"""dkimpy's canonicalisation and message split, with the same results at C speed.

dkimpy runs a regular expression over every byte of the body for each signature (two
passes of relaxed canonicalisation, a split of the whole message into lines and a join
back) and hashes the same canonical body again for each signature: about 1.3 ms of a
2 ms DKIM check on a 30 KB statement. Here the same functions are computed with bytes
methods, the canonical body and its digest are kept for the second signature, and
dkimpy's own functions are replaced by these while the verifier runs. What is hashed,
and every tag and key check, stays dkimpy's.

tests/verifier/test_dkim_canon.py checks each function against dkimpy's own on
arbitrary bytes, and every verdict with and without the replacements.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from typing import Any

import dkim
import dkim.canonicalization as canon

from verifier import headers

# dkimpy's own functions, kept for the tests and for uninstall().
DKIMPY: dict[str, Any] = {
    "rfc822_parse": dkim.rfc822_parse,
    "HashThrough": dkim.HashThrough,
    "select_headers": dkim.select_headers,
    "compress_whitespace": canon.compress_whitespace,
    "strip_trailing_whitespace": canon.strip_trailing_whitespace,
    "unfold_header_value": canon.unfold_header_value,
    "relaxed_body": canon.Relaxed.canonicalize_body,
}

_SPACE_OR_TAB_BEFORE_CRLF = re.compile(b"[\t ]+\r\n")
_LINE_END = re.compile(b"\r?\n")


def compress_whitespace(content: bytes) -> bytes:
    """Each run of spaces and tabs as one space (dkimpy: re.sub(b"[\\t ]+", b" "))."""
    firsts = [i for i in (content.find(b"  "), content.find(b"\t")) if i >= 0]
    if not firsts:
        return content
    # Only the stretch from the first tab or double space to the last is rewritten: in a
    # statement, a few lines of text, not the documents' base64 after them.
    start = min(firsts)
    if content[start - 1 : start] == b" ":  # a single space may open the first run
        start -= 1
    end = max(content.rfind(b"  ") + 2, content.rfind(b"\t") + 1)
    if content[end : end + 1] == b" ":  # and a single space close the last one
        end += 1
    text = content[start:end].replace(b"\t", b" ")
    while b"  " in text:  # halves every run: a pass per doubling of the longest run
        text = text.replace(b"  ", b" ")
    return content[:start] + text + content[end:]


def strip_trailing_whitespace(content: bytes) -> bytes:
    """Spaces and tabs before each CRLF removed."""
    if b" \r\n" not in content and b"\t\r\n" not in content:
        return content
    return _SPACE_OR_TAB_BEFORE_CRLF.sub(b"\r\n", content)


def unfold_header_value(content: bytes) -> bytes:
    """Every CRLF and LF removed (dkimpy: re.sub(b"\\r?\\n", b"")); a lone CR stays."""
    return content.replace(b"\r\n", b"").replace(b"\n", b"")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4, as dkimpy computes it. Stripping before compressing equals
    compressing first and then dropping the one space left before each CRLF."""
    text = compress_whitespace(body).replace(b" \r\n", b"\r\n")
    return bytes(canon.correct_empty_body(canon.strip_trailing_lines(text)))


def rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's split of a message into header fields and a CRLF body. dkimpy splits the
    whole message into lines and joins the body's lines back with CRLF; only the header
    block is split here, and a body whose line ends are all CRLF is kept as it is."""
    block, body = headers.split(message)  # the first empty line, as dkimpy finds it
    fields, _ = DKIMPY["rfc822_parse"](block)
    if body.count(b"\n") != body.count(b"\r\n"):
        body = b"\r\n".join(_LINE_END.split(body))
    return fields, body


def select_headers(
    fields: list[tuple[bytes, bytes]], include: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """The fields an h= list signs, each name taking its next instance from the bottom
    (RFC 6376 5.4.2). dkimpy scans the header from the bottom for every name; here each
    name's instances are listed once."""
    instances: dict[bytes, list[int]] = {}
    for index, field in enumerate(fields):
        instances.setdefault(field[0].lower(), []).append(index)
    selected = []
    for name in include:
        if name != name.lower():
            raise AssertionError  # as dkimpy's own assert
        found = instances.get(name)
        if found:
            selected.append(fields[found.pop()])
    return selected


# The fund signs twice over the same relaxed body: the canonical form of the last body
# seen, and its digests, are kept per thread for that same body object.
_last = threading.local()


def _canonical_body_once(body: bytes) -> bytes:
    if getattr(_last, "body", None) is not body:
        _last.body, _last.result, _last.digests = body, relaxed_body(body), {}
    result: bytes = _last.result
    return result


def _body_digest(name: str, canonical: bytes) -> bytes:
    digests: dict[str, bytes] = _last.digests
    if name not in digests:
        digests[name] = _hash(name, canonical)
    return digests[name]


def _is_kept(data: bytes) -> bool:
    """Whether `data` is this thread's kept canonical body (the very object)."""
    kept: object = getattr(_last, "result", None)
    return data is kept


def _hash(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


class HashThrough(dkim.HashThrough):  # type: ignore[misc]
    """dkimpy's hasher wrapper. dkimpy feeds the body hasher exactly one update, the
    canonical body, then asks for the digest: when that body is the one kept for this
    thread, its digest is hashed once for every signature."""

    def __init__(self, hasher: Any, debug: bool = False) -> None:
        super().__init__(hasher, debug)
        self._fed = False
        self._body: bytes | None = None  # the kept canonical body, not yet hashed here

    def update(self, data: bytes) -> None:
        if not self._fed and not self.debug and _is_kept(data):
            self._fed = True
            self._body = data
            return
        self._fed = True
        self._flush()
        super().update(data)

    def _flush(self) -> None:
        if self._body is not None:
            body, self._body = self._body, None
            super().update(body)

    def digest(self) -> bytes:
        body = self._body
        if body is not None:
            if _is_kept(body):
                return _body_digest(self.name, body)
            self._flush()  # another body was kept since: this one is hashed here
        result: bytes = super().digest()
        return result

    def hexdigest(self) -> str:
        return self.digest().hex()


# dkimpy looks these names up in its modules at each call.
_REPLACED: tuple[tuple[Any, str, Callable[..., Any] | type], ...] = (
    (dkim, "rfc822_parse", rfc822_parse),
    (dkim, "HashThrough", HashThrough),
    (dkim, "select_headers", select_headers),
    (canon, "compress_whitespace", compress_whitespace),
    (canon, "strip_trailing_whitespace", strip_trailing_whitespace),
    (canon, "unfold_header_value", unfold_header_value),
)


def install() -> None:
    for module, name, replacement in _REPLACED:
        setattr(module, name, replacement)
    canon.Relaxed.canonicalize_body = staticmethod(_canonical_body_once)


def uninstall() -> None:
    """dkimpy as shipped (the tests compare verdicts both ways)."""
    for module, name, _ in _REPLACED:
        setattr(module, name, DKIMPY[name])
    canon.Relaxed.canonicalize_body = staticmethod(DKIMPY["relaxed_body"])
    forget()


def forget() -> None:
    """Drops this thread's kept body: an upload is health data, held no longer than its
    check."""
    _last.__dict__.clear()

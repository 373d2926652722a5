"""The header block read the way the DKIM check reads it, and everything in it that the
fund's gateway would never emit.

dkimpy splits header lines on CRLF or LF only; Python's email package also splits on a
bare CR; mail programs differ again on NUL, over-long lines or a stray envelope line. A
header block on which readers can disagree is never vouched for: `read` lists the fields
exactly as dkimpy hashes them and names each defect, so the verdict can refuse
"authentic" and the page can say what was wrong.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# RFC 5322 2.1.1: at most 998 characters on a line, without its CRLF.
MAX_LINE = 998
# A field name: printable US-ASCII but the colon, then the colon at once (RFC 5322 2.2).
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")
# The same with the obsolete white space before the colon, which some readers accept.
_OBS_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]+:")
_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_END = re.compile(rb"\r?\n")

# The fields a mail program shows as who sent what, to whom, when: each may appear once
# (RFC 5322 3.6), and each instance must be covered by the signature that vouches for it.
SHOWN = (b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id")


@dataclass(frozen=True)
class Field:
    name: bytes  # as written
    value: bytes  # everything after the colon, continuation lines and CRLFs included

    @functools.cached_property
    def key(self) -> bytes:
        return self.name.lower()


@dataclass(frozen=True)
class HeaderBlock:
    fields: tuple[Field, ...]
    # Codes, each once, in the order first met: bare_cr, bare_lf, nul, control, long_line,
    # not_a_field, space_before_colon, blank_continuation, leading_continuation,
    # misplaced_envelope, repeated_<name>.
    defects: tuple[str, ...]

    def values(self, name: bytes) -> list[bytes]:
        return [f.value for f in self.fields if f.key == name]


def split(data: bytes) -> tuple[bytes, bytes]:
    """The header block (each line with its line end) and the body, cut where dkimpy cuts:
    at the first empty line, lines ending in CRLF or LF."""
    # Every LF ends a line (CRLF or LF); the empty line is where one line end follows
    # another, or at the very start. Searched for directly, not line by line.
    for end in (b"\r\n", b"\n"):
        if data.startswith(end):
            return b"", data[len(end) :]
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, len(data) if crlf < 0 else crlf + 2)
    if crlf < 0 and lf < 0:
        return data, b""
    position = (lf if lf >= 0 else crlf) + 1
    return data[:position], data[position + (1 if lf >= 0 else 2) :]


def read(block: bytes) -> HeaderBlock:
    """`block`: the header lines, without the blank line that ends them."""
    defects: list[str] = []

    def defect(code: str) -> None:
        if code not in defects:
            defects.append(code)

    if b"\x00" in block:
        defect("nul")
    if _CONTROL.search(block):
        defect("control")
    # Split exactly as dkimpy does; what it keeps inside a line is checked below.
    lines = _LINE_END.split(block)
    if lines and lines[-1] == b"":
        lines.pop()
    if re.search(rb"\n", block.replace(b"\r\n", b"")):
        defect("bare_lf")
    fields: list[list[bytes]] = []
    for number, line in enumerate(lines):
        if b"\r" in line:
            defect("bare_cr")
        if len(line) > MAX_LINE:
            defect("long_line")
        if line[:1] in (b" ", b"\t"):
            if not fields:
                defect("leading_continuation")
                continue
            if not line.strip(b" \t"):
                defect("blank_continuation")
            fields[-1][1] += line + b"\r\n"
            continue
        match = _FIELD.match(line)
        if match is not None:
            fields.append([match.group(1), line[match.end() :] + b"\r\n"])
        elif _OBS_FIELD.match(line):
            defect("space_before_colon")
        elif line.startswith(b"From ") and number == 0:
            continue  # the mbox envelope line a saved file may start with
        elif line.startswith(b"From "):
            defect("misplaced_envelope")
        else:
            defect("not_a_field")
    result = tuple(Field(name, value) for name, value in fields)
    for name in SHOWN:
        if sum(1 for f in result if f.key == name) > 1:
            defect("repeated_" + name.decode("ascii"))
    return HeaderBlock(fields=result, defects=tuple(defects))


def signed_instances(fields: tuple[Field, ...], signed_names: list[bytes]) -> set[int]:
    """Indexes of the fields a DKIM signature with this h= list covers (RFC 6376 5.4.2:
    each listed name takes the next instance from the bottom up)."""
    instances: dict[bytes, list[int]] = {}
    for index, item in enumerate(fields):
        instances.setdefault(item.key, []).append(index)
    covered: set[int] = set()
    for name in (n.strip().lower() for n in signed_names):
        found = instances.get(name)
        if found:
            covered.add(found.pop())
    return covered


# The fields that say how the body reads as MIME parts. The gateway signs them (oversigned,
# as the shown ones); left out of a signature, another Content-Type (a new boundary) would
# cut the very same signed body into other parts.
STRUCTURE = (b"mime-version", b"content-type")


def unsigned_shown(fields: tuple[Field, ...], signed_names: list[bytes]) -> list[str]:
    """The shown fields (From, Subject, ...) and the MIME structure's, with an instance the
    signature does not cover."""
    covered = signed_instances(fields, signed_names)
    vouched = SHOWN + STRUCTURE
    return sorted(
        {
            f.key.decode("ascii")
            for i, f in enumerate(fields)
            if f.key in vouched and i not in covered
        }
    )

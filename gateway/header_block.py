"""A header block read as the email package's compat32 header parser reads it, faster.

The policy checks and the seal read every message's header block (and every MIME part's)
for its raw fields: From, Content-Type, boundaries. `BytesHeaderParser(policy=compat32)`
does it through the feed parser, a generator machine built for streams, at about 15 us a
block; three or four blocks a statement made it a tenth of the seal. A block of plain
field lines (what every sending system writes) is split here in one pass into the very
`Message` that parser builds; anything else (a bare CR or LF, a line that is no field, a
continuation of nothing, a blank line, a unix "From " line) goes to the parser itself, so
its reading of odd input, defects included, stays the definition.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

_PARSER = BytesHeaderParser(policy=compat32)
# What the feed parser takes as a field line (email.feedparser.headerRE), less the empty
# name (a defect there) and the unix "From " line (no colon straight after the name).
_FIELD_NAME = re.compile(r"[!-9;-~]+(?=:)")


def parse(block: bytes) -> Message:
    """The block's fields as `BytesHeaderParser(policy=compat32).parsebytes(block)` gives
    them: same raw items in the same order, same payload, same defects."""
    fields = plain_fields(block)
    if fields is None:
        return _PARSER.parsebytes(block)
    message = Message(policy=compat32)
    for name, value in fields:
        message.set_raw(name, value)
    message.set_payload("")
    return message


def plain_fields(block: bytes) -> list[tuple[str, str]] | None:
    """compat32's (name, value) pairs for a block of plain field lines each ending in
    CRLF, or None when the block is anything else."""
    if not block:
        return []
    text = block.decode("ascii", "surrogateescape")  # as BytesParser decodes it
    lines = text.split("\r\n")
    rest = "".join(lines)  # a CR or LF left once the CRLFs are cut out is a bare one
    if lines.pop() != "" or "\r" in rest or "\n" in rest:
        return None
    fields: list[tuple[str, str]] = []
    name = ""
    value: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not name:
                return None  # a continuation of nothing: a defect, left to the parser
            value.append(line + "\r\n")
            continue
        found = _FIELD_NAME.match(line)
        if found is None:
            return None  # a blank line, a unix From line, or no field at all
        if name:
            fields.append((name, "".join(value).rstrip("\r\n")))
        name = found.group()
        # compat32's header_source_parse: the first line's rest, leading blanks off.
        value = [(line[found.end() + 1 :] + "\r\n").lstrip(" \t")]
    if name:
        fields.append((name, "".join(value).rstrip("\r\n")))
    return fields

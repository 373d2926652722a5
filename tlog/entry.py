"""One statement-log entry: what identifies the seals of one message, and nothing else.

No address, no name, no subject, no document: only digests of the seals themselves, the
key generation and the sealing time. Anyone holding a sealed statement can compute the
same digests and find its entry; nobody reading the log learns anything about a member.

Text, one field per line, so that an insurer can read an entry as it is served::

    sealpost-seal/1
    sealed 2026-11-30T05:20:16Z
    domain caisses.example
    generation 202611
    body-hash <the DKIM bh= value>
    dkim <SHA-256 hex of a DKIM-Signature b= value, folding removed>   (one per signature)
    p7s <SHA-256 hex of a .p7s, DER>                                     (one per document)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

FORMAT = "sealpost-seal/1"
_HEX = re.compile(r"[0-9a-f]{64}")
_WHITESPACE = re.compile(rb"\s+")


class EntryError(ValueError):
    """Not an entry of this format."""


def dkim_seal_hash(b_value: bytes) -> str:
    """The digest that names a DKIM signature: its b= value with folding whitespace gone."""
    return hashlib.sha256(_WHITESPACE.sub(b"", b_value)).hexdigest()


def p7s_seal_hash(signature: bytes) -> str:
    return hashlib.sha256(signature).hexdigest()


@dataclass(frozen=True)
class Entry:
    sealed_at: dt.datetime
    domain: str
    generation: str
    body_hash: str
    dkim: tuple[str, ...]
    p7s: tuple[str, ...]

    @property
    def seals(self) -> tuple[str, ...]:
        """Every digest this entry can be found by."""
        return (*self.dkim, *self.p7s)

    def encode(self) -> bytes:
        lines = [
            FORMAT,
            f"sealed {self.sealed_at.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}",
            f"domain {self.domain}",
            f"generation {self.generation}",
            f"body-hash {self.body_hash}",
            *(f"dkim {d}" for d in self.dkim),
            *(f"p7s {d}" for d in self.p7s),
        ]
        return ("\n".join(lines) + "\n").encode("ascii")


def decode(data: bytes) -> Entry:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EntryError("not ASCII") from exc
    lines = text.split("\n")
    if len(lines) < 6 or lines[0] != FORMAT or lines[-1] != "":
        raise EntryError("not a sealpost-seal/1 entry")
    fields: dict[str, list[str]] = {}
    for line in lines[1:-1]:
        name, _, value = line.partition(" ")
        if not value:
            raise EntryError(f"malformed line {line[:40]!r}")
        fields.setdefault(name, []).append(value)
    try:
        (sealed,) = fields.pop("sealed")
        (domain,) = fields.pop("domain")
        (generation,) = fields.pop("generation")
        (body_hash,) = fields.pop("body-hash")
        dkim = tuple(fields.pop("dkim", []))
        p7s = tuple(fields.pop("p7s", []))
        when = dt.datetime.strptime(sealed, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except (KeyError, ValueError) as exc:
        raise EntryError("missing or repeated field") from exc
    if fields or not all(_HEX.fullmatch(d) for d in (*dkim, *p7s)):
        raise EntryError("unknown field or malformed digest")
    return Entry(when, domain, generation, body_hash, dkim, p7s)

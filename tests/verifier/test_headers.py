"""One reading of the bytes: the header block as the DKIM check reads it, what in it other
readers would read differently, and which instances a signature covers. The last test
drives every line-end and folding trick through the whole verifier."""

from __future__ import annotations

import email.header
import email.policy
import re
from dataclasses import dataclass, field
from email import message_from_bytes

import dkim
import pytest
from dkim.util import parse_tag_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.signing import SigningMaterial
from tests.verifier.conftest import reference_message, seal_with_builders, split
from verifier import headers
from verifier.report import DkimStatus, Verdict
from verifier.settings import Limits
from verifier.trust import Trust
from verifier.verify import verify_email

pytestmark = pytest.mark.usefixtures("no_network")


def test_a_clean_block_reads_exactly_as_dkimpy_reads_it(sealed: bytes) -> None:
    block, body = headers.split(sealed)
    read = headers.read(block)
    theirs, their_body = dkim.rfc822_parse(sealed)
    assert read.defects == ()
    assert [(f.name, f.value) for f in read.fields] == [(n, v) for n, v in theirs]
    assert body == their_body


@pytest.mark.parametrize(
    ("block", "defect"),
    [
        (b"Return-Path: <x>\rFrom: evil@evil.example\r\n", "bare_cr"),
        (b"Subject: a\r\nX-A: b\nFrom: evil@evil.example\r\n", "bare_lf"),
        (b"Subject: Decompte 2026\x00 annule\r\n", "nul"),
        (b"Subject: a\x1b[2Jb\r\n", "control"),
        (b"Subject: " + b"a" * 990 + b"\r\n", "long_line"),
        (b"Subject: a\r\nnot a field\r\n", "not_a_field"),
        (b"From : evil@evil.example\r\n", "space_before_colon"),
        (b"Subject: a\r\n \r\nFrom: x@y.example\r\n", "blank_continuation"),
        (b" folded: first\r\nSubject: a\r\n", "leading_continuation"),
        (b"Subject: a\r\nFrom evil@evil.example Mon Nov 30\r\n", "misplaced_envelope"),
        (b"From: a@b.example\r\nFrom: evil@evil.example\r\n", "repeated_from"),
        (b"Reply-To: a@b.example\r\nreply-to: rib@evil.example\r\n", "repeated_reply-to"),
    ],
)
def test_what_readers_would_read_differently_is_named(block: bytes, defect: str) -> None:
    assert defect in headers.read(block).defects


def test_an_mbox_envelope_line_on_top_is_no_defect() -> None:
    read = headers.read(b"From fund@caisses.example Mon Nov 30 05:20:16 2026\r\nSubject: a\r\n")
    assert read.defects == ()
    assert [f.key for f in read.fields] == [b"subject"]


def test_folding_with_spaces_or_tabs_is_no_defect() -> None:
    read = headers.read(b"Subject: a long\r\n\tsubject\r\n folded twice\r\n")
    assert read.defects == ()
    assert read.fields[0].value == b" a long\r\n\tsubject\r\n folded twice\r\n"


def test_the_block_ends_at_the_first_empty_line_as_dkimpy_cuts_it() -> None:
    assert headers.split(b"A: 1\r\nB: 2\r\n\r\nbody\r\n") == (b"A: 1\r\nB: 2\r\n", b"body\r\n")
    assert headers.split(b"A: 1\nB: 2\n\nbody\n") == (b"A: 1\nB: 2\n", b"body\n")
    # A line holding only a CR is not empty for dkimpy (the email package ends there).
    block, _ = headers.split(b"A: 1\r\n\r\r\nFrom: evil@evil.example\r\n\r\nbody")
    assert b"evil" in block


def test_signed_instances_are_taken_from_the_bottom_up() -> None:
    block = headers.read(b"Subject: added\r\nFrom: a@b.example\r\nSubject: signed\r\n")
    assert headers.signed_instances(block.fields, [b"from", b"subject"]) == {1, 2}
    assert headers.unsigned_shown(block.fields, [b"from", b"subject"]) == ["subject"]
    # Oversigned: the name once more than present covers every instance, and no more.
    assert headers.unsigned_shown(block.fields, [b"from", b"from", b"subject"] * 2) == []


# --- the property: whatever the header block, "authentic" shows only what was signed -------

_SHOWN = ("from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id")
_FIELD = {
    "from": "sender",
    "reply-to": "reply_to",
    "to": "to",
    "cc": "cc",
    "subject": "subject",
    "date": "date",
    "message-id": "message_id",
}
_LINE_ENDS = [b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r", b"\r\n ", b"\r\n\t", b""]
_PIECES = [
    b"From: Caisses Sociales <decomptes@caisses.example>",
    b"From: Fraud <rib-update@evil.example>",
    b"Subject: URGENT nouveau RIB",
    b"Reply-To: <rib-update@evil.example>",
    b"Sender: rib-update@evil.example",
    b"To: victim@insurer.example",
    b"Cc: x@evil.example",
    b"Date: Mon, 30 Nov 2026 05:20:16 +0000",
    b"Message-ID: <forged@evil.example>",
    b"X-Mailer: evil",
    b"Return-Path: <x>",
    b"From : evil@evil.example",
    b"From evil@evil.example Mon Nov 30 05:20:16 2026",
    b"Subject: =?utf-8?q?URGENT_nouveau_RIB?=",
    b" continued",
    b"\t",
    b"\x00",
    b":",
    b"subject:" + b"x" * 1000,
]
_mutation = st.tuples(
    st.integers(min_value=0, max_value=40),  # where, in header lines
    st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_LINE_ENDS)), max_size=4),
    st.one_of(st.none(), st.tuples(st.integers(0, 40), st.sampled_from(_LINE_ENDS))),
    st.one_of(st.none(), st.integers(0, 40)),  # refold a signed field at a space
)


_Mutation = tuple[int, list[tuple[bytes, bytes]], object, object]


def _mutate(sealed: bytes, mutation: _Mutation) -> bytes:
    where, pieces, line_end, refold = mutation
    head, body = split(sealed)
    lines = head.split(b"\r\n")
    ends = [b"\r\n"] * len(lines)
    if isinstance(line_end, tuple):  # replace the line end after one existing line
        index, end = line_end
        ends[index % len(lines)] = end if end else b"\r\n"
    if isinstance(refold, int):
        index = refold % len(lines)
        space = lines[index].find(b" ", lines[index].find(b":") + 2)
        if space > 0:
            lines[index] = lines[index][:space] + b"\r\n" + lines[index][space:]
    inserted = b"".join(piece + end for piece, end in pieces)
    position = where % (len(lines) + 1)
    out = b""
    for i, (line, end) in enumerate(zip(lines, ends, strict=True)):
        if i == position:
            out += inserted
        out += line + end
    if position == len(lines):
        out += inserted
    return out + b"\r\n" + body


def _plain(value: str) -> str:
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        text = value
    return " ".join(text.split())


def _signed_view(data: bytes, index: int) -> dict[str, list[str]]:
    """What the `index`-th signature (one that passes) covers, read by dkimpy itself (the
    reference, not ours)."""
    fields, _ = dkim.rfc822_parse(data)
    signature = [v for k, v in fields if k.lower() == b"dkim-signature"][index]
    names = [n.strip().lower() for n in parse_tag_value(signature)[b"h"].split(b":")]
    covered = dkim.select_headers(fields, names)
    view: dict[str, list[str]] = {}
    for name, value in covered:
        text = value.decode("utf-8", "replace").replace("\r\n", "")
        view.setdefault(name.lower().decode(), []).append(_plain(text))
    return view


@dataclass(frozen=True)
class _Case:
    sealed: bytes = field(repr=False)
    trust: Trust = field(repr=False)


@pytest.fixture
def case(sealed: bytes, trust: Trust) -> _Case:
    return _Case(sealed, trust)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutation=_mutation)
def test_no_header_trick_shows_anything_but_what_was_signed(
    case: _Case, mutation: _Mutation
) -> None:
    data = _mutate(case.sealed, mutation)
    report = verify_email(data, case.trust, Limits())
    if report.verdict is not Verdict.AUTHENTIC:
        assert not report.message.vouched
        return
    passing = next(i for i, c in enumerate(report.dkim) if c.status is DkimStatus.PASS)
    signed = _signed_view(data, passing)
    # Every reader agrees: the email package (what mail programs are built like) sees each
    # shown field at most once, with the value the signature covers and the page shows.
    for policy in (email.policy.compat32, email.policy.default):
        message = message_from_bytes(data, policy=policy)
        for name in _SHOWN:
            seen = [_plain(str(v)) for v in message.get_all(name, [])]
            assert len(seen) <= 1, (name, seen)
            if seen and policy is email.policy.compat32:  # the other one rewrites quoting
                assert signed.get(name, [""])[0] == seen[0], (name, seen, signed.get(name))
    for name, attribute in _FIELD.items():
        shown = getattr(report.message, attribute)
        assert shown == signed.get(name, [""])[0][:300], (name, shown)
    assert report.message.vouched
    assert report.message.defects == ()


def test_the_reported_forgery_is_caught(sealed: bytes, trust: Trust, limits: Limits) -> None:
    """Finding 1: bare CRs inside an unsigned header smuggled a From, Subject and Reply-To
    that the email package read and dkimpy did not."""
    forged = (
        b"Return-Path: <x>\rFrom: Caisses Sociales <decomptes@caisses.example>\r"
        b"Subject: URGENT changement de RIB\rReply-To: <rib-update@evil.example>\r\r\n"
    )
    report = verify_email(forged + sealed, trust, limits)
    assert report.verdict is Verdict.ALTERED
    assert report.reason == "reason_altered_headers"
    assert {c.reason for c in report.dkim} == {"headers_malformed"}
    assert "bare_cr" in report.message.defects
    assert "warning_header_defects" in report.warnings
    assert not report.message.vouched
    assert "URGENT" not in report.message.subject
    assert "evil" not in report.message.reply_to


def test_an_unsigned_sender_field_is_not_vouched_for(
    material: SigningMaterial, trust: Trust, limits: Limits
) -> None:
    """Sibling: a field mail programs show ("on behalf of") that the signature does not
    list (statements sealed before the gateway oversigned Sender) passes DKIM, but the
    page must not call the message the fund's as shown."""
    older = seal_with_builders(reference_message(), material)
    report = verify_email(b"Sender: rib-update@evil.example\r\n" + older, trust, limits)
    assert report.verdict is not Verdict.AUTHENTIC
    assert {c.reason for c in report.dkim} == {"header_not_signed"}
    assert {c.detail for c in report.dkim} == {"sender"}


def test_the_gateway_oversigns_sender_so_an_added_one_breaks_dkim(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    report = verify_email(b"Sender: rib-update@evil.example\r\n" + sealed, trust, limits)
    assert report.verdict is Verdict.ALTERED
    assert {c.reason for c in report.dkim} == {"header_changed"}


def test_a_refolded_signed_field_stays_authentic(
    sealed: bytes, trust: Trust, limits: Limits
) -> None:
    """Relaxed canonicalisation unfolds: a relay refolding the Subject changes nothing."""
    head, body = split(sealed)
    start = head.index(b"\r\nSubject: ") + len(b"\r\nSubject: ")
    space = head.index(b" ", start)
    refolded = head[:space] + b"\r\n\t" + head[space + 1 :]
    report = verify_email(refolded + b"\r\n\r\n" + body, trust, limits)
    assert report.verdict is Verdict.AUTHENTIC
    assert report.message.vouched


def former_signed_instances(fields: tuple[headers.Field, ...], names: list[bytes]) -> set[int]:
    """signed_instances as it was: a scan from the bottom for every listed name."""
    covered: set[int] = set()
    last: dict[bytes, int] = {}
    for name in (n.strip().lower() for n in names):
        index = last.get(name, len(fields))
        while index > 0:
            index -= 1
            if fields[index].name.lower() == name:
                covered.add(index)
                break
        last[name] = index
    return covered


_NAMES = [b"From", b"from", b"FROM", b"To", b"Subject", b"subject", b"X-A"]


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(st.sampled_from(_NAMES), max_size=12),
    signed=st.lists(st.sampled_from([*_NAMES, b" from ", b"cc"]), max_size=16),
)
def test_signed_instances_are_those_a_scan_from_the_bottom_finds(
    names: list[bytes], signed: list[bytes]
) -> None:
    fields = tuple(headers.Field(name, b" x\r\n") for name in names)
    assert headers.signed_instances(fields, signed) == former_signed_instances(fields, signed)


def former_split(data: bytes) -> tuple[bytes, bytes]:
    """split as it was: line ends matched one by one until an empty line."""
    position = 0
    for match in re.finditer(rb"\r?\n", data):
        if match.start() == position:
            return data[:position], data[match.end() :]
        position = match.end()
    return data, b""


@settings(max_examples=1000, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"b: c", b"\r", b"\n", b"\r\n", b" ", b""]), max_size=30)
)
def test_the_header_block_ends_where_a_line_by_line_reading_ends_it(data: list[bytes]) -> None:
    joined = b"".join(data)
    assert headers.split(joined) == former_split(joined)

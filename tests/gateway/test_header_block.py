"""The fast header split gives the Message the email package's compat32 parser gives."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import header_block
from tests.checks import REFERENCE, crlf

PARSER = BytesHeaderParser(policy=compat32)


def reading(message: Message) -> tuple[object, ...]:
    """Everything of a parsed header block that a caller can see."""
    return (
        list(message.raw_items()),
        message.get_payload(),
        [type(defect) for defect in message.defects],
        message.get_unixfrom(),
        message.get_default_type(),
        message.policy,
    )


def test_a_statement_s_header_block_takes_the_fast_split() -> None:
    statement = crlf(REFERENCE.read_bytes())
    block = statement[: statement.find(b"\r\n\r\n") + 2]
    fields = header_block.plain_fields(block)
    assert fields is not None
    assert fields == list(PARSER.parsebytes(block).raw_items())
    assert ("Content-Type", 'multipart/mixed; boundary="=_releve_8d3f2c1a9b7e"') in fields


def test_folded_and_empty_values_keep_compat32_s_form() -> None:
    block = b"Subject:\r\n  folded\r\n\tagain \r\nX-Empty:\r\nTo:  \t<a@b>\r\n"
    assert header_block.plain_fields(block) == [
        ("Subject", "\r\n  folded\r\n\tagain "),
        ("X-Empty", ""),
        ("To", "<a@b>"),
    ]


def test_what_is_not_plain_is_left_to_the_parser() -> None:
    for block in (
        b" continuation of nothing\r\nA: b\r\n",
        b"From someone Mon Nov 30\r\nA: b\r\n",
        b"A: b\nC: d\r\n",
        b"A: b\r\n\r\nC: d\r\n",
        b"no field\r\n",
        b": no name\r\n",
        b"A: no line end",
    ):
        assert header_block.plain_fields(block) is None, block
        assert reading(header_block.parse(block)) == reading(PARSER.parsebytes(block))


PIECES = st.sampled_from(
    [
        b"From: ", b"Content-Type: multipart/mixed; boundary=x", b"X-Empty:", b"To:  \t<a@b>",
        b"From x", b": ", b"a", b" ", b"\t", b"\r\n", b"\r\n ", b"\r\n\t", b"\r", b"\n",
        b"\xc3\xa9", b"\xff", b"\r\n\r\n", b":", b"\x00", b"\x0b", b"\x85",
    ]
)  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(pieces=st.lists(PIECES, max_size=16))
def test_every_block_reads_as_the_compat32_parser_reads_it(pieces: list[bytes]) -> None:
    block = b"".join(pieces)
    assert reading(header_block.parse(block)) == reading(PARSER.parsebytes(block))


LINES = st.sampled_from(
    [
        b"From: a@b", b"X:", b"Subject:  x  ", b" cont", b"\tcont ", b"To:\t", b"A-b:c:d",
        b"N: \xc3\xa9", b"\xe9x: y", b"Content-Type: text/plain;", b' charset="utf-8"', b"",
    ]
)  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(lines=st.lists(LINES, max_size=12))
def test_field_lines_read_as_the_compat32_parser_reads_them(lines: list[bytes]) -> None:
    """Mostly plain blocks, so the one-pass split itself is what is compared."""
    block = b"".join(line + b"\r\n" for line in lines)
    assert reading(header_block.parse(block)) == reading(PARSER.parsebytes(block))

"""The DATA body gives exactly the bytes aiosmtplib's own normalisation and dot-stuffing
(its PERIOD_REGEX) give, for any message: CRLF-only ones by the fast path, others by
aiosmtplib's own code."""

from __future__ import annotations

from pathlib import Path

import aiosmtplib.protocol
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dot_stuffing import data_body, normalized_line_ends

BENCH_MESSAGE = Path("/work/shared/bench/postfix-opendkim/message.eml")


def aiosmtplib_body(message: bytes) -> bytes:
    """What aiosmtplib 5.1.3's execute_data_command writes after the 354."""
    normalized = aiosmtplib.protocol.normalize_message_line_endings(message)
    return aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", normalized) + b".\r\n"


_PIECES = st.sampled_from([b"a", b"\r\n", b"\r", b"\n", b".", b"..", b" ", b"\xff", b"\x00"])
_ANY = st.lists(_PIECES, max_size=30).map(b"".join)
# Sealed messages: lines of anything but CR and LF, each ending in CRLF.
_LINE = st.lists(st.sampled_from([b"a", b".", b"..", b" ", b"\xe9", b"\x00"]), max_size=6)
_CRLF_ONLY = st.lists(_LINE.map(lambda parts: b"".join(parts) + b"\r\n"), max_size=12).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(_ANY | _CRLF_ONLY)
def test_the_body_is_aiosmtplibs_byte_for_byte(message: bytes) -> None:
    assert data_body(message) == aiosmtplib_body(message)


@settings(max_examples=300, deadline=None)
@given(_ANY | _CRLF_ONLY)
def test_line_ends_are_normalised_as_aiosmtplib_does(message: bytes) -> None:
    expected = aiosmtplib.protocol.normalize_message_line_endings(message)
    assert normalized_line_ends(message) == expected


def test_a_crlf_message_is_taken_as_it_is() -> None:
    message = b"Subject: x\r\n\r\nbody\r\n"
    assert normalized_line_ends(message) is message


def test_leading_dots_are_doubled_and_the_end_is_one_dot_line() -> None:
    message = b".first\r\nplain\r\n.\r\n..two\r\n"
    assert data_body(message) == b"..first\r\nplain\r\n..\r\n...two\r\n.\r\n"


def test_the_bench_statement_goes_out_as_aiosmtplib_would_send_it() -> None:
    if not BENCH_MESSAGE.exists():
        pytest.skip("the shared bench files are beside the clone, not in it")
    message = aiosmtplib.protocol.normalize_message_line_endings(BENCH_MESSAGE.read_bytes())
    assert data_body(message) == aiosmtplib_body(message)

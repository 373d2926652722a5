"""dkimpy's canonicalisation and message split computed faster: the same bytes as dkimpy's
own functions for any input, the same verdicts with or without them, and the body of a
dual-signed message canonicalised and hashed once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dkim.canonicalization as canon
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.verifier.conftest import replace_header
from verifier import dkim_canon, headers
from verifier.dkim_check import check_dkim
from verifier.report import DkimCheck, DkimStatus
from verifier.trust import Trust

pytestmark = pytest.mark.usefixtures("no_network")

# What canonicalisation and line splitting look at, often enough to meet in runs.
_PIECES = [b" ", b"\t", b"  ", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"a", b"b:", b"\x0b", b"\x00"]
wire_bytes = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join),
    st.binary(max_size=200),
)
# Header-shaped input for the message split: fields, folding, envelope lines, junk.
_LINES = [b"From: a", b"X-A:b", b" folded", b"\tfolded", b"From x", b"no colon", b"", b"a:"]
_ENDS = [b"\r\n", b"\n", b"\r", b""]
messages = st.lists(
    st.tuples(st.sampled_from(_LINES), st.sampled_from(_ENDS), wire_bytes), max_size=12
).map(lambda parts: b"".join(line + end + extra for line, end, extra in parts))


@contextmanager
def dkimpy_as_shipped() -> Iterator[None]:
    dkim_canon.uninstall()
    try:
        yield
    finally:
        dkim_canon.install()


def outcome(function: Callable[[bytes], Any], data: bytes) -> Any:
    """A result, or the exception's type and text: both must agree."""
    try:
        return function(data)
    except Exception as exc:  # dkimpy raises several types on malformed input
        return type(exc).__name__, str(exc)


@settings(max_examples=1000, deadline=None)
@given(data=wire_bytes)
def test_each_function_gives_dkimpy_s_bytes_for_any_input(data: bytes) -> None:
    ours = (
        dkim_canon.compress_whitespace(data),
        dkim_canon.strip_trailing_whitespace(data),
        dkim_canon.unfold_header_value(data),
        dkim_canon.relaxed_body(data),
    )
    with dkimpy_as_shipped():
        theirs = (
            canon.compress_whitespace(data),
            canon.strip_trailing_whitespace(data),
            canon.unfold_header_value(data),
            canon.Relaxed.canonicalize_body(data),
        )
    assert ours == theirs


@settings(max_examples=400, deadline=None)
@given(message=messages)
def test_the_message_split_gives_dkimpy_s_fields_body_and_errors(message: bytes) -> None:
    ours = outcome(dkim_canon.rfc822_parse, message)
    theirs = outcome(dkim_canon.DKIMPY["rfc822_parse"], message)
    assert ours == theirs


@pytest.mark.parametrize(
    "data", [b"a \tb", b"\t a", b" \t", b"a\t b  c \t", b"  ", b"x \t\r\n \r\n\t", b"a b\tc d"]
)
def test_runs_at_the_edges_of_the_rewritten_stretch(data: bytes) -> None:
    with dkimpy_as_shipped():
        theirs = canon.compress_whitespace(data), canon.Relaxed.canonicalize_body(data)
    assert (dkim_canon.compress_whitespace(data), dkim_canon.relaxed_body(data)) == theirs


def test_long_runs_of_white_space_compress_in_a_few_passes() -> None:
    run = b"x" + b" \t" * 100_000 + b"y\r\n"
    assert dkim_canon.compress_whitespace(run) == b"x y\r\n"
    assert dkim_canon.relaxed_body(run + b"\r\n\r\n") == b"x y\r\n"


def _whitespace_edits(raw: bytes, data: st.DataObject) -> bytes:
    """Spaces, tabs and empty lines where relaxed canonicalisation forgives them (and
    where it does not): some signatures keep passing, some break."""
    out = raw
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(out)))
        piece = data.draw(st.sampled_from([b" ", b"\t", b"  \t", b"\r\n", b"\r\n ", b"\n"]))
        out = out[:position] + piece + out[position:]
    if data.draw(st.booleans()):
        out += b"\r\n" * data.draw(st.integers(0, 3))
    return out


def _checks(raw: bytes, trust: Trust) -> tuple[DkimCheck, ...]:
    values = headers.read(headers.split(raw)[0]).values(b"dkim-signature")
    return check_dkim(raw, values, trust)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_dkim_verdict_is_the_same_with_dkimpy_as_shipped(
    sealed: bytes, trust: Trust, data: st.DataObject
) -> None:
    raw = _whitespace_edits(sealed, data)
    ours = _checks(raw, trust)
    with dkimpy_as_shipped():
        theirs = _checks(raw, trust)
    assert ours == theirs


def test_forgiven_white_space_still_passes_and_a_changed_header_still_fails(
    sealed: bytes, trust: Trust
) -> None:
    head, _, body = sealed.partition(b"\r\n\r\n")
    spaced = head + b"\r\n\r\n" + body.replace(b" ", b" \t ", 20) + b"\r\n\r\n"
    changed = replace_header(sealed, b"Subject", b"Votre  releve   (copie)")
    for raw, expected in ((spaced, DkimStatus.PASS), (changed, DkimStatus.FAIL)):
        ours = _checks(raw, trust)
        with dkimpy_as_shipped():
            assert _checks(raw, trust) == ours
        assert [c.status for c in ours] == [expected, expected]


def test_the_body_is_canonicalised_and_hashed_once_for_both_signatures(
    sealed: bytes, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    canonicalised: list[int] = []
    hashed: list[str] = []
    relaxed_body, hash_ = dkim_canon.relaxed_body, dkim_canon._hash

    def counting_body(body: bytes) -> bytes:
        canonicalised.append(len(body))
        return relaxed_body(body)

    def counting_hash(name: str, data: bytes) -> bytes:
        hashed.append(name)
        return hash_(name, data)

    monkeypatch.setattr(dkim_canon, "relaxed_body", counting_body)
    monkeypatch.setattr(dkim_canon, "_hash", counting_hash)
    checks = _checks(sealed, trust)
    assert [c.status for c in checks] == [DkimStatus.PASS, DkimStatus.PASS]
    assert len(canonicalised) == 1
    assert hashed == ["sha256"]


def test_no_body_is_kept_once_the_check_is_done(sealed: bytes, trust: Trust) -> None:
    _checks(sealed, trust)
    assert not vars(dkim_canon._last)


def test_a_hasher_fed_more_than_the_body_hashes_all_of_it() -> None:
    """dkimpy's header hasher is fed many pieces: the kept body is then hashed in line."""
    import hashlib

    body = dkim_canon._canonical_body_once(b"line  one \r\n\r\n")
    hasher = dkim_canon.HashThrough(hashlib.sha256())
    hasher.update(body)
    hasher.update(b"more")
    assert hasher.digest() == hashlib.sha256(body + b"more").digest()
    assert hasher.hexdigest() == hashlib.sha256(body + b"more").hexdigest()
    dkim_canon.forget()


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(st.sampled_from([b"From", b"from", b"To", b"subject", b"X-A"]), max_size=12),
    include=st.lists(st.sampled_from([b"from", b"to", b"subject", b"cc", b"x-a"]), max_size=16),
)
def test_header_selection_gives_dkimpy_s_fields_in_dkimpy_s_order(
    names: list[bytes], include: list[bytes]
) -> None:
    fields = [(name, b" value %d\r\n" % i) for i, name in enumerate(names)]
    ours = dkim_canon.select_headers(fields, include)
    assert ours == dkim_canon.DKIMPY["select_headers"](fields, include)


def test_a_hasher_whose_body_is_no_longer_the_kept_one_hashes_it_itself() -> None:
    import hashlib

    first = dkim_canon._canonical_body_once(b"first  body\r\n")
    hasher = dkim_canon.HashThrough(hashlib.sha256())
    hasher.update(first)
    dkim_canon._canonical_body_once(b"second body\r\n")
    assert hasher.digest() == hashlib.sha256(first).digest()
    dkim_canon.forget()
    assert hasher.digest() == hashlib.sha256(first).digest()

"""The policy checks, as pure functions, and the forbidden-byte check through the real
SMTP listener."""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.policy import SMTP

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import policy
from gateway.policy import Client, ClientDirectory, Rejection
from gateway.settings import ClientSettings
from tests.gateway.test_smtp_handler import DOMAIN, Gateway, message, raw, transaction
from tests.gateway.test_smtp_handler import gateway as gateway  # fixtures, re-exported
from tests.gateway.test_smtp_handler import server_tls as server_tls

SIGNED = frozenset({"caisses.example", "second.example"})
BATCH = Client("batch", frozenset({"caisses.example"}))


def test_clients_are_found_by_name_and_network() -> None:
    directory = ClientDirectory(
        [
            ClientSettings("lan", networks=("10.1.0.0/16", "fd00::/8"), sender_domains=("A.x",)),
            ClientSettings("batch", password_hash="x", sender_domains=("a.x",)),
        ]
    )
    assert directory.by_name("batch") == Client("batch", frozenset({"a.x"}))
    assert directory.by_name("nobody") is None
    lan = directory.by_address("10.1.2.3")
    assert lan is not None
    assert lan.name == "lan"
    assert lan.sender_domains == frozenset({"a.x"})  # domains compare in lower case
    assert directory.by_address("::ffff:10.1.2.3") == lan  # IPv4-mapped IPv6
    assert directory.by_address("fd00::1") == lan
    assert directory.by_address("10.2.0.1") is None
    assert directory.by_address("not an address") is None
    assert directory.by_address(None) is None


def test_nobody_relays_unless_identified() -> None:
    rejection = policy.check_relay(None)
    assert rejection is not None
    assert (rejection.code, rejection.status) == (550, "5.7.1")
    assert policy.check_relay(BATCH) is None


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("caisses.example", None),
        ("second.example", "domain_not_allowed"),
        ("elsewhere.example", "domain_not_signed"),
        ("", "domain_not_signed"),
    ],
)
def test_sender_domain(domain: str, reason: str | None) -> None:
    rejection = policy.check_sender_domain(domain, BATCH, SIGNED, "Sender")
    if reason is None:
        assert rejection is None
    else:
        assert rejection is not None
        assert (rejection.code, rejection.status, rejection.reason) == (550, "5.7.1", reason)


def test_domain_of_lowercases() -> None:
    assert policy.domain_of("Someone@Caisses.EXAMPLE") == "caisses.example"
    assert policy.domain_of("no-at-sign") == "no-at-sign"


def test_recipient_count() -> None:
    assert policy.check_recipient_count(2, 3) is None
    rejection = policy.check_recipient_count(3, 3)
    assert rejection == Rejection(
        452, "4.5.3", "Too many recipients: at most 3 per message", "too_many_recipients"
    )


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"a\r\nb\r\n", False),
        (b"", False),
        (b"a\r\nno line end at the end", False),
        (b"a\nb\r\n", True),
        (b"a\r\nb\r", True),
        (b"a\rb\r\n", True),
        (b"a\r\n\nb\r\n", True),
        (b"a\r\r\nb\r\n", True),
        (b"a\r\r\n\n", True),  # the CRLF cut out leaves CR LF: still two bare ends
    ],
)
def test_line_ends(data: bytes, bare: bool) -> None:
    found = policy.check_lines(data, 998)
    assert (found is not None and found.reason == "bare_line_end") is bare


def test_line_length() -> None:
    assert policy.check_lines(b"x" * 998 + b"\r\n", 998) is None
    assert policy.check_lines(b"ok\r\n" + b"x" * 998, 998) is None
    for data in (b"ok\r\n" + b"x" * 999 + b"\r\n", b"ok\r\n" + b"x" * 999):
        rejection = policy.check_lines(data, 998)
        assert rejection is not None
        assert (rejection.code, rejection.status, rejection.reason) == (
            550,
            "5.6.0",
            "line_too_long",
        )


def bare_line_end_by_counting(data: bytes) -> Rejection | None:
    """The line-end check as it was: three counts that agree only when every CR is
    followed by an LF and every LF is preceded by a CR."""
    pairs = data.count(b"\r\n")
    if data.count(b"\r") != pairs or data.count(b"\n") != pairs:
        return Rejection(
            550,
            "5.6.0",
            "Bare CR or LF in message data: every line must end with CRLF",
            "bare_line_end",
        )
    return None


def too_long_by_splitting(data: bytes, limit: int) -> Rejection | None:
    """The line-length check as it was, run after the line-end check."""
    if max(map(len, data.split(b"\r\n")), default=0) > limit:
        return Rejection(
            550, "5.6.0", f"Line too long: at most {limit} characters per line", "line_too_long"
        )
    return None


@settings(max_examples=500, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"bc", b"x" * 7, b"y" * 40]), max_size=30
    ),
    limit=st.integers(min_value=0, max_value=60),
)
def test_check_lines_refuses_what_the_two_old_checks_refused(
    pieces: list[bytes], limit: int
) -> None:
    data = b"".join(pieces)
    expected = bare_line_end_by_counting(data) or too_long_by_splitting(data, limit)
    assert policy.check_lines(data, limit) == expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"From: Caisses <decomptes@Caisses.Example>\r\n", "caisses.example"),
        (b"From: =?utf-8?q?Caf=C3=A9?= <a@caisses.example>\r\n", "caisses.example"),
        (b"From:\r\n <folded@caisses.example>\r\n", "caisses.example"),
        (b"Subject: no author\r\n", "no_from"),
        (b"From: <a@caisses.example>\r\nFROM: <b@caisses.example>\r\n", "several_from"),
        (b"From: a@caisses.example, b@caisses.example\r\n", "bad_from"),
        (b"From: undisclosed\r\n", "bad_from"),
        (b"From: <@caisses.example>\r\n", "bad_from"),
        # Forms where readers disagree on the author: never signed as the fund's.
        (b"From: a@caisses.example\r\nFrom : Direction <boss@x.example>\r\n", "several_from"),
        (b"From : <a@caisses.example>\r\n", "bad_from"),
        (b"From: a@caisses.example <boss@second.example>\r\n", "bad_from"),
        (b"From: <a@caisses.example> <boss@evil.example>\r\n", "bad_from"),
        (b"From: a@caisses.example (x) boss@evil.example\r\n", "bad_from"),
        (b"From: <@evil.example:a@caisses.example>\r\n", "bad_from"),
        (b"From: Caisses <a@caisses.example> (service)\r\n", "caisses.example"),
        # A group whose member list the header registry cannot read: refused, not a crash.
        (b"From: Content-Type: multipart/mixed; boundary=x\r\n", "bad_from"),
        (b"From: Caisses: <a@caisses.example>;\r\n", "bad_from"),  # a group is no author
    ],
)
def test_header_from(head: bytes, expected: str) -> None:
    found = policy.header_from_domain(head + b"To: m@example.org\r\n\r\nFrom: <x@evil.example>\r\n")
    if isinstance(found, Rejection):
        assert (found.code, found.status, found.reason) == (550, "5.6.0", expected)
    else:
        assert found == expected


def reference_from_fields(head: bytes) -> list[tuple[bool, tuple[tuple[str, str], ...]]]:
    """Each From field as the SMTP policy's own parse of the block reads it: whether it
    has defects, and its addresses (the definition the faster split must keep)."""
    fields = []
    for name, raw_value in BytesHeaderParser(policy=SMTP).parsebytes(head).raw_items():
        if name.lower() != "from":
            continue
        try:
            value = SMTP.header_fetch_parse(name, raw_value)
            addresses = tuple((a.username, a.domain) for a in value.addresses)
            fields.append((bool(value.defects), addresses))
        except Exception:  # the registry's own failure: not a readable From
            fields.append((True, ()))
    return fields


FROM_PIECES = st.sampled_from(
    [
        b"From: ",
        b"from:",
        b"From : ",
        b"Content-Type: multipart/mixed; boundary=x\r\n",
        b'Content-Type: text/plain; charset="utf-8\r\n',
        b"<a@caisses.example>",
        b"a@caisses.example, b@x.example",
        b"=?utf-8?q?Caf=C3=A9?= ",
        b"(c) ",
        b"\r\n",
        b"\r\n ",
        b"\r\n\t",
        b"\n",
        b"Subject: x\r\n",
        b"\xc3\xa9",
        b"\r\n\r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(FROM_PIECES, max_size=14))
def test_the_from_check_reads_the_fields_the_smtp_policy_reads(pieces: list[bytes]) -> None:
    head = b"".join(pieces)
    found = policy.header_from_domain(head)
    fields = reference_from_fields(head.split(b"\r\n\r\n")[0] + b"\r\n")
    if isinstance(found, str):
        assert len(fields) == 1
        assert not fields[0][0]
        assert {d.lower() for _, d in fields[0][1]} == {found}
    elif found.reason == "several_from":
        assert len(fields) > 1 or len(re.findall(rb"(?im)^from[ \t]*:", head)) > 1


# ---------------------------------------------------------------------------- forbidden bytes

HEAD = b"From: <a@caisses.example>\r\nSubject: Decompte 2026\r\n"
BODY = b"Bonjour,\r\nci-joint votre decompte.\r\n"
# Every byte RFC 5322 forbids in a header field besides CR and LF (left to the line-end
# check): the C0 controls other than TAB, and DEL.
HEADER_CONTROLS = [b for b in [*range(0x01, 0x20), 0x7F] if b not in (0x09, 0x0A, 0x0D)]


def forbidden(data: bytes) -> Rejection:
    rejection = policy.check_forbidden_bytes(data)
    assert rejection is not None
    assert (rejection.code, rejection.status) == (550, "5.6.0")
    return rejection


def test_clean_messages_pass() -> None:
    assert policy.check_forbidden_bytes(HEAD + b"\r\n" + BODY) is None
    assert policy.check_forbidden_bytes(b"") is None
    assert policy.check_forbidden_bytes(HEAD) is None  # no body at all
    # TAB is whitespace in a header; UTF-8 header text is RFC 6532's.
    assert policy.check_forbidden_bytes(HEAD + "X-Note:\tdécompte à payer\r\n\r\n".encode()) is None
    # Controls other than NUL are data in a body (RFC 2045 allows them in 7bit and 8bit),
    # and a body is in whatever charset it declares, so not checked as UTF-8.
    body = bytes(HEADER_CONTROLS) + b"\xe9t\xe9\xff\r\n"
    assert policy.check_forbidden_bytes(HEAD + b"\r\n" + body) is None


def test_nul_in_the_header_is_refused() -> None:
    rejection = forbidden(b"From: <a@caisses.example>\r\nSubject: Decompte 2026\0 annule\r\n\r\n")
    assert rejection.reason == "nul_byte"
    assert rejection.text == "NUL byte in message header (line 2): NUL is not allowed in mail"


@pytest.mark.parametrize("body", [b"\0", b"a\0b\r\n", b"line\r\n\0\r\n", b"last\r\n\0"], ids=repr)
def test_nul_in_the_body_is_refused(body: bytes) -> None:
    # RFC 2045 2.7/2.8: 7bit and 8bit data hold no NUL, and the gateway offers no
    # BINARYMIME, the only way to send it.
    rejection = forbidden(HEAD + b"\r\n" + body)
    assert rejection.reason == "nul_byte"
    assert rejection.text.startswith("NUL byte in message body (line ")


def test_nul_in_a_message_without_body_or_header() -> None:
    assert forbidden(b"Subject: x\0").text.startswith("NUL byte in message header")
    assert forbidden(b"\r\n\0body\r\n").text.startswith("NUL byte in message body (line 2)")


@pytest.mark.parametrize("byte", HEADER_CONTROLS, ids=lambda b: f"0x{b:02X}")
@pytest.mark.parametrize("where", ["name", "value", "folded", "last line"])
def test_controls_and_del_in_the_header_are_refused(byte: int, where: str) -> None:
    char = bytes([byte])
    head = {
        "name": HEAD + b"X-Tag" + char + b": 1\r\n",
        "value": HEAD + b"X-Tag: a" + char + b"b\r\n",
        "folded": HEAD + b"X-Tag: a\r\n\t" + char + b"b\r\n",
        "last line": HEAD + b"X-Tag: ab" + char + b"\r\n",
    }[where]
    rejection = forbidden(head + b"\r\n" + BODY)
    assert rejection.reason == "header_control"
    line = 4 if where == "folded" else 3
    assert rejection.text == (
        f"Control character 0x{byte:02X} in message header (line {line}): "
        "not allowed in header fields"
    )


@pytest.mark.parametrize(
    "text",
    [
        b"d\xe9compte",  # Latin-1
        b"\xc3",  # cut in the middle of a character
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xff",
    ],
    ids=repr,
)
def test_header_text_must_be_utf8(text: bytes) -> None:
    rejection = forbidden(HEAD + b"X-Note: " + text + b"\r\n\r\n" + BODY)
    assert rejection.reason == "header_not_utf8"
    assert rejection.text.startswith("Message header is not valid UTF-8 (line 3): ")


def test_only_the_first_blank_line_ends_the_header() -> None:
    # A control after the blank line is body data; the same byte before it is header.
    assert policy.check_forbidden_bytes(HEAD + b"\r\nX-Tag: \x1b\r\n") is None
    assert forbidden(HEAD + b"X-Tag: \x1b\r\n\r\n").reason == "header_control"


@pytest.mark.parametrize(
    ("data", "reply", "reason"),
    [
        (
            message(extra_headers="X-Ref: Decompte 2026\0 annule\r\n"),
            "550 5.6.0 NUL byte in message header (line 4): NUL is not allowed in mail",
            "nul_byte",
        ),
        (
            message(body="Montant : 120,00 EUR\r\n\0 annule\r\n"),
            "550 5.6.0 NUL byte in message body (line 9): NUL is not allowed in mail",
            "nul_byte",
        ),
        (
            message(extra_headers="X-Ref: \x1b[8mcache\r\n"),
            "550 5.6.0 Control character 0x1B in message header (line 4): "
            "not allowed in header fields",
            "header_control",
        ),
        (
            message().replace("décompte".encode(), "décompte".encode("latin-1")),
            "550 5.6.0 Message header is not valid UTF-8 (line 3): "
            "write non-ASCII header text in UTF-8 or as RFC 2047 encoded-words",
            "header_not_utf8",
        ),
    ],
    ids=["nul-header", "nul-body", "escape-header", "latin1-header"],
)
async def test_forbidden_bytes_are_refused_by_the_listener(
    gateway: Gateway, data: bytes, reply: str, reason: str
) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        assert await transaction(client, data) == reply
        assert gateway.spool.puts == []  # nothing sealed, nothing queued
        # The session goes on: the same message without the byte is accepted.
        assert (await transaction(client, message())).startswith("250 2.0.0 Queued as ")
    assert len(gateway.spool.puts) == 1
    assert gateway.metrics.rejected.value(reason) == 1
    assert gateway.metrics.sealed.value() == 1


@pytest.mark.parametrize(
    "author",
    [
        "Content-Type: multipart/mixed; boundary=x",  # a group the registry cannot read
        "undisclosed-recipients:;",
        "a: <b@caisses.example>;",
        "<a@caisses.example",
        '"\\" <a@caisses.example>',
    ],
)
async def test_an_unreadable_from_is_refused_without_a_traceback(
    gateway: Gateway, author: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = message().replace(
        f"From: Caisses Sociales <decomptes@{DOMAIN}>".encode(), f"From: {author}".encode()
    )
    assert data.startswith(f"From: {author}\r\n".encode())
    async with raw(gateway.port()) as client:
        await client.greet()
        reply = await transaction(client, data)
    assert reply.startswith("550 5.6.0 "), reply
    assert gateway.spool.puts == []
    assert not [r for r in caplog.records if r.exc_info], (
        "a client's From put a traceback in the log"
    )


@pytest.mark.parametrize(
    "address",
    [
        "m@x.example",
        "first.last+tag@sub.x.example",
        '"a b"@x.example',
        "décompte@assureur.example",
        "m@[192.0.2.1]",
        "m@[IPv6:2001:db8::1]",
        "m@localhost",
    ],
)
def test_a_well_formed_mailbox_passes(address: str) -> None:
    assert policy.check_address_syntax(address, "recipient") is None


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("", "it must be local-part@domain"),
        ("<>", "it must be local-part@domain"),
        ("a", "it must be local-part@domain"),
        ('"ab@x>"', "the local part is not valid"),
        ("a b@x.example", "the local part is not valid"),
        (".a@x.example", "the local part is not valid"),
        ("a" * 65 + "@x.example", "the local part is not valid"),
        ("m@[300.1.1.1]", "the domain is not valid"),
        ("m@[IPv6:zz]", "the domain is not valid"),
        ("m@-x.example", "the domain is not valid"),
        ("m@x_y.example", "the domain is not valid"),
        ("m@" + "a" * 64 + ".example", "the domain is not valid"),
    ],
)
def test_a_malformed_mailbox_is_refused_with_the_reason(address: str, problem: str) -> None:
    rejection = policy.check_address_syntax(address, "recipient")
    assert rejection is not None
    assert (rejection.code, rejection.status) == (501, "5.1.3")
    assert rejection.text == f"Bad recipient address syntax: {problem}"
    sender = policy.check_address_syntax(address, "sender")
    assert sender is not None
    assert sender.status == ("5.7.1" if address in ("", "<>") else "5.1.7")


@pytest.mark.parametrize("name", policy.ONCE_ONLY)
def test_a_field_rfc_5322_allows_once_is_refused_twice(name: str) -> None:
    head = f"From: <a@caisses.example>\r\n{name}: one\r\n".encode()
    assert policy.check_repeated_fields(head + b"\r\nbody\r\n") is None
    twice = head + f"{name.upper()}: two\r\n".encode()
    rejection = policy.check_repeated_fields(twice + b"\r\nbody\r\n")
    assert rejection is not None
    assert (rejection.code, rejection.status, rejection.reason) == (550, "5.6.0", "repeated_field")
    assert rejection.text == f"Message has 2 {name} headers; RFC 5322 allows one"
    # The same name in the body is not a header.
    assert policy.check_repeated_fields(head + b"\r\n" + twice) is None


def test_the_verifier_s_shown_fields_are_all_refused_twice() -> None:
    """Sealed means authentic: every field the verifier refuses to vouch for when it is
    present twice is one the gateway refuses to seal twice."""
    from verifier.headers import SHOWN

    once = {name.lower() for name in policy.ONCE_ONLY} | {"from"}
    assert {name.decode() for name in SHOWN} <= once

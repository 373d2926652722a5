"""The policy checks, as pure functions."""

from __future__ import annotations

import pytest

from gateway import policy
from gateway.policy import Client, ClientDirectory, Rejection
from gateway.settings import ClientSettings

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
        (b"a\nb\r\n", True),
        (b"a\r\nb\r", True),
        (b"a\rb\r\n", True),
        (b"a\r\n\nb\r\n", True),
        (b"a\r\r\nb\r\n", True),
    ],
)
def test_line_ends(data: bytes, bare: bool) -> None:
    assert (policy.check_line_ends(data) is not None) is bare


def test_line_length() -> None:
    assert policy.check_line_length(b"x" * 998 + b"\r\n", 998) is None
    rejection = policy.check_line_length(b"ok\r\n" + b"x" * 999 + b"\r\n", 998)
    assert rejection is not None
    assert (rejection.code, rejection.status) == (554, "5.6.0")


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
    ],
)
def test_header_from(head: bytes, expected: str) -> None:
    found = policy.header_from_domain(head + b"To: m@example.org\r\n\r\nFrom: <x@evil.example>\r\n")
    if isinstance(found, Rejection):
        assert (found.code, found.status, found.reason) == (550, "5.6.0", expected)
    else:
        assert found == expected

"""What a message's MAIL parameters ask of the next hop (RFC 6531, RFC 6152)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.mail_params import MailParams, Unsendable, from_options, options_for

ASCII = b"From: <a@caisses.example>\r\nSubject: statement\r\n\r\nbody\r\n"
UTF8_HEADER = "From: <a@caisses.example>\r\nSubject: décompte\r\n\r\nbody\r\n".encode()
UTF8_BODY = "From: <a@caisses.example>\r\nSubject: statement\r\n\r\nremboursé\r\n".encode()


def offers(*names: str) -> Callable[[str], bool]:
    return lambda name: name in names


def test_mail_options_are_read_as_aiosmtpd_passes_them() -> None:
    assert from_options(True, ["BODY=8BITMIME", "SMTPUTF8"]) == MailParams(True, "8BITMIME")
    assert from_options(False, ["SIZE=100", "body=7bit"]) == MailParams(False, "7BIT")
    assert from_options(False, []) == MailParams(False, "")


@pytest.mark.parametrize(
    ("params", "rcpt", "data", "expected"),
    [
        (MailParams(True, "8BITMIME"), "j@x.example", ASCII, []),  # nothing needs it
        (MailParams(True, ""), "jörg@x.example", ASCII, ["SMTPUTF8"]),
        (MailParams(True, "8BITMIME"), "j@x.example", UTF8_HEADER, ["SMTPUTF8", "BODY=8BITMIME"]),
        # Not asked for: a UTF-8 header goes as it came, as 8-bit content.
        (MailParams(False, ""), "j@x.example", UTF8_HEADER, ["BODY=8BITMIME"]),
        (MailParams(False, "7BIT"), "j@x.example", UTF8_BODY, ["BODY=8BITMIME"]),
    ],
)
def test_parameters_sent_to_a_hop_that_offers_both(
    params: MailParams, rcpt: str, data: bytes, expected: list[str]
) -> None:
    both = offers("smtputf8", "8bitmime")
    assert options_for(params, "s@caisses.example", [rcpt], data, both, "mx") == expected


def test_a_hop_without_what_the_message_needs_is_refused_with_the_reason() -> None:
    only_8bit = offers("8bitmime")
    with pytest.raises(Unsendable, match=r"^5\.6\.7 mx does not support SMTPUTF8"):
        options_for(MailParams(True), "s@c.example", ["jörg@x.example"], ASCII, only_8bit, "mx")
    with pytest.raises(Unsendable, match=r"^5\.6\.3 mx does not support 8BITMIME"):
        options_for(MailParams(), "s@c.example", ["j@x.example"], UTF8_BODY, offers(), "mx")

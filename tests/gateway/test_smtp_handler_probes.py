"""Hostile command sequences through real sockets, as an outside prober sends them: each
gets a precise reply with an enhanced status code, the session goes on, and nothing the
client sends puts an error or a traceback in the log.
"""

from __future__ import annotations

import base64
import logging
import ssl

import pytest

from tests.gateway.test_smtp_handler import DOMAIN, Gateway, Raw, raw, smtps
from tests.gateway.test_smtp_handler import gateway as gateway  # fixtures, re-exported
from tests.gateway.test_smtp_handler import server_tls as server_tls

MAIL = f"MAIL FROM:<decomptes@{DOMAIN}>".encode()


def assert_no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert faults == [], [r.getMessage() for r in faults]


async def replies(client: Raw, commands: list[bytes]) -> list[str]:
    """The last line of the reply to each command, then NOOP's to show the session lives."""
    got = []
    for command in [*commands, b"NOOP"]:
        await client.send(command + b"\r\n")
        got.append((await client.reply()).splitlines()[-1])
    assert got.pop() == "250 2.0.0 OK"
    return got


@pytest.mark.parametrize(
    ("commands", "reply"),
    [
        # Bytes no command may hold (RFC 5321 4.1.1; RFC 6531 3.3: UTF-8 only). Before,
        # NUL was passed on, and invalid UTF-8 in an address put lone surrogates in the
        # reply text: a traceback and 451 per command.
        ([b"NOOP \x00"], "500 5.5.2 Error: control character or bad UTF-8 in command"),
        ([b"EHLO a\x01b"], "500 5.5.2 Error: control character or bad UTF-8 in command"),
        ([b"\x16\x03\x01\x02\x00"], "500 5.5.2 Error: control character or bad UTF-8 in command"),
        (
            [MAIL[:-1] + b"\xc0\xaf>"],
            "500 5.5.2 Error: control character or bad UTF-8 in command",
        ),
        ([MAIL, b"RCPT TO:<\xff@x.example>"], "500 5.5.2"),
        # MAIL parameters: RFC 1870 SIZE is ASCII digits; a keyword appears once.
        ([MAIL + b" SIZE=-1"], "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
        ([MAIL + b" SIZE=99999999999999999999"], "552 5.3.4 Message too big: at most 65536"),
        ([MAIL + " SIZE=٣".encode()], "501 5.5.4 Syntax: MAIL FROM"),
        ([MAIL + " SIZE=１".encode()], "501 5.5.4 Syntax: MAIL FROM"),
        ([MAIL + b" SIZE=10 SIZE=20"], "501 5.5.4 Syntax: MAIL FROM"),
        ([MAIL + b" BODY=8BITMIME BODY=7BIT"], "501 5.5.4 Syntax: MAIL FROM"),
        ([MAIL + b" BODY="], "501 5.5.4 Syntax: MAIL FROM"),
        ([MAIL + b" BODY=BINARYMIME"], "501 5.5.4 Error: BODY can only be one of 7BIT"),
        ([MAIL + b" RET=HDRS"], "555 5.5.4 MAIL FROM parameters not recognized"),
        # Addresses: aiosmtpd's parser reads '<a"b@x>' as '"ab@x>"' and passes "<>" on.
        ([b"MAIL FROM:<>"], "550 5.7.1 The null sender <> is not accepted"),
        ([MAIL, b"RCPT TO:<>"], "501 5.1.3 Bad recipient address syntax: it must be"),
        ([MAIL, b'RCPT TO:<a"b@x.example>'], "501 5.1.3 Bad recipient address syntax: the local"),
        ([MAIL, b"RCPT TO:<a@[300.1.1.1]>"], "501 5.1.3 Bad recipient address syntax: the domain"),
        (
            [MAIL, b"RCPT TO:<" + b"a" * 65 + b"@x.example>"],
            "501 5.1.3 Bad recipient address syntax: the local",
        ),
        ([MAIL, b"RCPT TO:<a@-x.example>"], "501 5.1.3 Bad recipient address syntax: the domain"),
        ([MAIL, b"RCPT TO:<a@b.example> NOTIFY=NEVER"], "555 5.5.4 RCPT TO parameters"),
        # Commands this gateway does not offer, each refused with a code (RFC 2034).
        ([b"XCLIENT ADDR=192.0.2.1"], '500 5.5.2 Error: command "XCLIENT" not recognized'),
        ([b"BDAT 10 LAST"], '500 5.5.2 Error: command "BDAT" not recognized'),
        ([b"EXPN root"], "502 5.5.1 EXPN not implemented"),
        ([b"VRFY root"], "252 2.5.2 Cannot VRFY user"),
        ([b"RSET x"], "501 5.5.4 Syntax: RSET"),
        ([b"HELO"], "501 5.5.4 Syntax: HELO hostname"),
        # AUTH before TLS is refused before its arguments are read; a bare AUTH crashed.
        ([b"AUTH"], "538 5.7.11 Encryption required"),
    ],
)
async def test_hostile_commands_get_precise_replies(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, commands: list[bytes], reply: str
) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        got = await replies(client, commands)
    assert got[-1].startswith(reply)
    assert gateway.spool.puts == []
    assert_no_error_logged(caplog)


@pytest.mark.parametrize(
    ("commands", "reply"),
    [
        ([b"AUTH"], "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ([b"AUTH PLAIN AGI= extra"], "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ([b"AUTH PLAIN !!!!"], "501 5.5.2 Cannot decode base64"),
        ([b"AUTH PLAIN " + base64.b64encode(b"\0\0\0\0")], "501 5.5.2 Malformed PLAIN"),
        ([b"AUTH PLAIN", b"!!"], "501 5.5.2 Can't decode base64"),
        ([b"AUTH PLAIN", b"*"], "501 5.7.0 Auth aborted"),
        ([b"AUTH PLAIN", b"AGEAYg\x00=="], "500 5.5.2 Error: control character"),
        ([b"AUTH PLAIN " + base64.b64encode(b"\0\xff\xfe\0pw")], "535 5.7.8"),
        (["AUTH é".encode()], "504 5.5.4 Unrecognized authentication type"),
    ],
)
async def test_hostile_auth_gets_precise_replies(
    gateway: Gateway,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    commands: list[bytes],
    reply: str,
) -> None:
    async with smtps(gateway.port("smtps"), client_tls) as client:
        await client.greet()
        got = await replies(client, commands)
    assert got[-1].startswith(reply)
    assert_no_error_logged(caplog)


async def test_a_source_route_is_dropped_and_the_mailbox_kept(gateway: Gateway) -> None:
    """RFC 5321 4.1.1.3: servers ignore a source route rather than refuse it."""
    async with raw(gateway.port()) as client:
        await client.greet()
        assert await replies(client, [MAIL, b"RCPT TO:<@a.example,@b.example:m@x.example>"]) == [
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
        ]
        await client.send(b"DATA\r\n")
        assert (await client.reply()).startswith("354 ")
        await client.send(f"From: <decomptes@{DOMAIN}>\r\nSubject: x\r\n\r\nbody\r\n.\r\n".encode())
        assert (await client.reply()).startswith("250 2.0.0 Queued as ")
    assert gateway.spool.puts[0].recipients == ["m@x.example"]


async def test_an_overlong_command_is_refused_and_the_session_goes_on(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    async with raw(gateway.port()) as client:
        await client.greet()
        got = await replies(
            client, [MAIL + b" X=" + b"y" * 5000, b"RCPT TO:<" + b"a" * 70 + b"@x.example>"]
        )
    assert got == ["500 5.5.6 Command line too long", "503 5.5.1 Error: need MAIL command"]
    assert_no_error_logged(caplog)

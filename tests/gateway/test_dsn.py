"""DSNs read back with the email package as RFC 3464 says they must look."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage, Message

import pytest

from gateway.dsn import Failure, build_dsn, original_headers, status_code

ORIGINAL = (
    b"DKIM-Signature: v=1; a=ed25519-sha256; d=caisses.example; s=s1e;\r\n"
    b"\tb=abc\r\n"
    b"From: Statements <decomptes@caisses.example>\r\n"
    b"To: member@x.example, other@y.example\r\n"
    b"Subject: =?utf-8?q?D=C3=A9compte?=\r\n"
    b"Message-ID: <42@caisses.example>\r\n"
    b"\r\n"
    b"Confidential body that must not be returned\r\n"
)


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def status_blocks(report: EmailMessage) -> list[Message]:
    """The message/delivery-status part's field blocks: per message, then per recipient."""
    (part,) = [p for p in report.iter_parts() if p.get_content_type() == "message/delivery-status"]
    payload = part.get_payload()
    assert isinstance(payload, list)
    blocks = [b for b in payload if isinstance(b, Message)]
    assert len(blocks) == len(payload)
    return blocks


def dsn(failures: list[Failure]) -> EmailMessage:
    raw = build_dsn(
        original=ORIGINAL,
        sender="decomptes@caisses.example",
        failures=failures,
        reporting_mta="gw.caisses.example",
        mailer_domain="caisses.example",
        queue_id="ABC123",
        arrival=datetime(2026, 11, 20, 8, 30, tzinfo=UTC),
        now=datetime(2026, 11, 21, 9, 0, tzinfo=UTC),
    )
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    return parse(raw)


def test_dsn_is_a_multipart_report_with_three_parts() -> None:
    msg = dsn([Failure("member@x.example", "550 5.1.1 <member@x.example>: no such user")])
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "decomptes@caisses.example"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@caisses.example>"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    human = parts[0].get_content()
    assert "member@x.example" in human
    assert "n'a pas pu être remis" in human


def test_delivery_status_fields_per_message_and_per_recipient() -> None:
    msg = dsn(
        [
            Failure("member@x.example", "550 5.1.1 no such user"),
            Failure("other@y.example", "451 4.4.1 connect to mx.y.example: refused", expired=True),
            Failure("third@z.example", "4.4.1 mx.z.example: connection refused", expired=True),
        ]
    )
    per_message, *per_recipient = status_blocks(msg)
    assert per_message["Reporting-MTA"] == "dns; gw.caisses.example"
    assert per_message["Arrival-Date"] == "Fri, 20 Nov 2026 08:30:00 +0000"
    assert [b["Final-Recipient"] for b in per_recipient] == [
        "rfc822; member@x.example",
        "rfc822; other@y.example",
        "rfc822; third@z.example",
    ]
    assert {b["Action"] for b in per_recipient} == {"failed"}
    assert [b["Status"] for b in per_recipient] == ["5.1.1", "4.4.1", "4.4.1"]
    assert [b["Diagnostic-Code"] for b in per_recipient] == [
        "smtp; 550 5.1.1 no such user",
        "smtp; 451 4.4.1 connect to mx.y.example: refused",
        "X-Sealpost; 4.4.1 mx.z.example: connection refused",
    ]


def test_original_headers_are_returned_but_never_the_body() -> None:
    msg = dsn([Failure("member@x.example", "550 5.1.1 no such user")])
    headers_part = list(msg.iter_parts())[2]
    returned = headers_part.get_payload(decode=True)
    assert isinstance(returned, bytes)
    assert b"Message-ID: <42@caisses.example>" in returned
    assert b"DKIM-Signature: v=1; a=ed25519-sha256" in returned
    assert b"Confidential body" not in msg.as_bytes()


def test_status_codes() -> None:
    assert status_code(Failure("a@x", "550 5.7.1 relaying denied")) == "5.7.1"
    assert status_code(Failure("a@x", "550 go away")) == "5.0.0"
    assert status_code(Failure("a@x", "451 later", expired=True)) == "4.4.7"


def test_original_headers_accepts_bare_lf_input() -> None:
    assert original_headers(b"A: 1\nB: 2\n\nbody\n") == b"A: 1\r\nB: 2"


def test_no_dsn_for_the_null_sender() -> None:
    with pytest.raises(ValueError, match="null sender"):
        build_dsn(
            original=ORIGINAL,
            sender="",
            failures=[Failure("a@x.example", "550 no")],
            reporting_mta="gw",
            mailer_domain="caisses.example",
            queue_id="Q",
            arrival=datetime.now(UTC),
        )

"""Delivery Status Notifications (RFC 3464) for recipients that failed for good.

``build_dsn`` returns the raw bytes of a ``multipart/report; report-type=delivery-status``
message with CRLF line ends: a human-readable part, the ``message/delivery-status`` part
(Reporting-MTA, Arrival-Date, then Final-Recipient / Action / Status / Diagnostic-Code
per failed recipient) and ``text/rfc822-headers`` with the original headers, byte for
byte. The text is written out directly rather than through the ``email`` package so the
original header bytes pass untouched and the layout is exactly what RFC 3464 shows. It
is sealed (DKIM) and spooled by the scheduler like any mail, sent from the null sender.

For a message that came with SMTPUTF8 the DSN is the international form of RFC 6533:
``report-type=global-delivery-status``, a ``message/global-delivery-status`` part whose
non-ASCII recipients are written ``utf-8; <address>`` and a ``message/global-headers``
part; such a DSN is itself sent with SMTPUTF8 (its addresses and returned headers may
not be ASCII).
"""

from __future__ import annotations

import quopri
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Final

_ENHANCED: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_REPLY: Final = re.compile(r"^[245]\d\d\b")


@dataclass(frozen=True)
class Failure:
    recipient: str
    reply: str  # the last reply or local reason, as recorded in the spool
    expired: bool = False  # given up because the message outlived its lifetime


def status_code(failure: Failure) -> str:
    """The RFC 3463 status: the reply's own enhanced code if it has one."""
    found = _ENHANCED.search(failure.reply)
    if found is not None:
        return found.group(0)
    if _SMTP_REPLY.match(failure.reply) and failure.reply.startswith("5"):
        return "5.0.0"
    return "4.4.7" if failure.expired else "5.0.0"


def original_headers(data: bytes) -> bytes:
    """The header block of ``data`` (without the blank line), with CRLF line ends."""
    end = data.find(b"\r\n\r\n")
    head = data[:end] if end >= 0 else data.split(b"\n\n", 1)[0]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    return b"\r\n".join(lines)


def build_dsn(
    *,
    original: bytes,
    sender: str,
    failures: Sequence[Failure],
    reporting_mta: str,
    mailer_domain: str,
    queue_id: str,
    arrival: datetime,
    now: datetime | None = None,
    international: bool = False,
) -> bytes:
    """The DSN to ``sender`` for the ``failures`` of message ``queue_id``;
    `international` for a message that came with SMTPUTF8 (RFC 6533)."""
    if not sender:
        raise ValueError("no DSN is ever sent to the null sender")
    if not failures:
        raise ValueError("a DSN needs at least one failed recipient")
    when = now or datetime.now(UTC)
    boundary = f"=_sealpost_{secrets.token_hex(12)}"
    date = format_datetime(when)
    report, headers_type = (
        ("global-delivery-status", "message/global-headers")
        if international
        else ("delivery-status", "text/rfc822-headers")
    )
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mailer_domain}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{int(when.timestamp())}.dsn@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={report}; boundary="{boundary}"',
    ]
    human = [
        "This is the mail system at " + reporting_mta + ".",
        "",
        "Your message could not be delivered to the recipients below.",
        "Votre message n'a pas pu être remis aux destinataires ci-dessous.",
        "",
        *(f"<{f.recipient}>: {_clean(f.reply)}" for f in failures),
    ]
    per_message = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Sealpost-Queue-ID: {queue_id}",
        f"Arrival-Date: {format_datetime(arrival.astimezone(UTC))}",
    ]
    per_recipient: list[str] = []
    for f in failures:
        per_recipient += [
            "",
            f"Final-Recipient: {_address_type(f.recipient)}; {f.recipient}",
            "Action: failed",
            f"Status: {status_code(f)}",
            f"Diagnostic-Code: {_diagnostic(f.reply)}",
            f"Last-Attempt-Date: {date}",
        ]
    text = [
        *headers,
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Description: Notification",
        "",
        _quoted_printable(human),
        "",
        f"--{boundary}",
        f"Content-Type: message/{report}",
        "Content-Description: Delivery report",
        "",
        *per_message,
        *per_recipient,
        "",
        f"--{boundary}",
        f"Content-Type: {headers_type}",
        "Content-Description: Undelivered message headers",
        "",
        "",  # the blank line between the part's own headers and the returned ones
    ]
    tail = f"\r\n\r\n--{boundary}--\r\n".encode()
    # The boundary is random, so the original headers cannot close the part early.
    return "\r\n".join(text).encode() + original_headers(original) + tail


def _address_type(address: str) -> str:
    # RFC 6533 3: "utf-8" for an address that is not ASCII, which only a global DSN holds
    # (the gateway accepts one only with SMTPUTF8, and then builds a global DSN).
    return "rfc822" if address.isascii() else "utf-8"


def _diagnostic(reply: str) -> str:
    # RFC 3464 2.3.6: a diagnostic is US-ASCII text (UTF-8 needs RFC 6533's global DSN).
    text = _clean(reply).encode("ascii", "replace").decode("ascii")
    # "smtp" only for a reply a server gave; a local reason (connect failed...) says so.
    return f"smtp; {text}" if _SMTP_REPLY.match(text) else f"X-Sealpost; {text}"


def _quoted_printable(lines: list[str]) -> str:
    # 7-bit on the wire, so the DSN needs no 8BITMIME from whoever relays it.
    encoded = quopri.encodestring("\n".join(lines).encode("utf-8")).decode("ascii")
    return encoded.replace("\n", "\r\n")


# Lone surrogates (undecodable bytes) cannot be encoded, controls do not belong in mail.
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _clean(text: str) -> str:
    return _UNSAFE.sub("?", " ".join(text.split()))[:900]

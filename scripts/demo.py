"""``make demo``: the whole flow against a running ``make run``, in plain sight.

1. Send realistic statement emails through the gateway's relay port: a French subject
   with accents, a one-page PDF "Décompte de prestations"; one to a member and one to the
   mailbox an insurer registered with the fund (the convention lets each complementary
   organisation register up to 5 dedicated mailboxes).
2. Find the delivered copies in the outbox Maildir (a bounded wait: the gateway holds each
   message until a published checkpoint of its statement log covers it, log.interval).
3. Submit each copy to the verifier's JSON API and print its verdict and where its seals
   are in the statement log.
4. Change one byte of the PDF inside one delivered copy (decode, change, re-encode) and
   show the verifier answering "tampered".

Only the standard library: the demo runs with the project's own interpreter and needs
nothing the gateway does not already have. Exit status 0 when every verdict is the one
expected, 1 otherwise, 2 when the gateway or the verifier cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import email.parser
import email.policy
import json
import re
import smtplib
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, TextIO

DEFAULT_RELAY = "127.0.0.1:2525"
DEFAULT_VERIFIER = "http://127.0.0.1:8080"
DEFAULT_MAILDIR = Path("var/outbox")
DEFAULT_SENDER = "decomptes@caisses.example"
EXIT_OK, EXIT_UNEXPECTED, EXIT_UNREACHABLE = 0, 1, 2
HTTP_TIMEOUT = 30.0


class Unreachable(Exception):
    """The gateway or the verifier does not answer."""


@dataclass(frozen=True)
class Statement:
    """One statement email to send, and who it is for."""

    kind: str  # "member" or "insurer"
    recipient: str
    number: str
    member: str
    lines: tuple[tuple[str, str, str], ...]  # (date, act, amount refunded)


STATEMENTS = (
    Statement(
        kind="member",
        recipient="marie.dupont@example.org",
        number="2026-118734",
        member="Mme Marie Dupont",
        lines=(
            ("03/11/2026", "Consultation médecin généraliste", "22,40"),
            ("05/11/2026", "Pharmacie — ordonnance du 03/11", "31,85"),
        ),
    ),
    Statement(
        kind="insurer",
        # A dedicated mailbox the complementary organisation registered with the fund.
        recipient="teletransmission@mutuelle-azur.example",
        number="2026-118735",
        member="M. Jean-Hervé Ségur",
        lines=(
            ("07/11/2026", "Séance de kinésithérapie (x3)", "48,96"),
            ("10/11/2026", "Radiographie du genou", "19,95"),
        ),
    ),
)


# ---------------------------------------------------------------------------- the PDF


def _pdf_text(text: str) -> bytes:
    """A PDF literal string in WinAnsiEncoding (cp1252 covers French accents)."""
    raw = text.encode("cp1252")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def statement_pdf(statement: Statement) -> bytes:
    """A minimal, valid one-page PDF 1.4 written by hand: catalog, pages, one page, a
    content stream, the standard Helvetica font, and a cross-reference table whose
    offsets are computed, so any reader opens it."""
    rows: list[tuple[int, int, str]] = [
        (16, 780, "Caisses Sociales de Monaco"),
        (13, 752, "Décompte de prestations"),
        (10, 726, f"N° {statement.number} — {statement.member}"),
        (10, 700, "Date        Acte                                        Remboursé (€)"),
    ]
    y = 682
    for date, act, amount in statement.lines:
        rows.append((10, y, f"{date}  {act}"))
        rows.append((10, y - 14, f"            montant remboursé : {amount} €"))
        y -= 34
    rows.append((9, y - 10, "Copie exacte du décompte papier. Prestations en espèces exclues."))
    content = b"".join(
        b"BT /F1 %d Tf 56 %d Td %s Tj ET\n" % (size, ypos, _pdf_text(text))
        for size, ypos, text in rows
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%sendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# ---------------------------------------------------------------------------- the email


def statement_email(statement: Statement, sender: str) -> EmailMessage:
    domain = sender.rpartition("@")[2]
    message = EmailMessage()
    message["From"] = f"Caisses Sociales de Monaco <{sender}>"
    message["To"] = statement.recipient
    # Non-ASCII: the email package writes it as an RFC 2047 encoded word.
    message["Subject"] = f"Votre décompte de prestations n° {statement.number}"
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = make_msgid("demo", domain)
    if statement.kind == "insurer":
        text = (
            "Madame, Monsieur,\n\n"
            f"Veuillez trouver ci-joint le décompte de prestations de {statement.member}, "
            "adhérent(e) de votre organisme, transmis à sa demande.\n\n"
            "Ce décompte est scellé : vérifiez-le sur le service d'authentification "
            "des Caisses Sociales.\n"
        )
    else:
        text = (
            f"Bonjour {statement.member},\n\n"
            "Votre décompte de prestations est joint à ce message.\n\n"
            "Les Caisses Sociales de Monaco\n"
        )
    message.set_content(text)
    message.add_attachment(
        statement_pdf(statement),
        maintype="application",
        subtype="pdf",
        filename=f"decompte-{statement.number}.pdf",
    )
    return message


# ---------------------------------------------------------------------------- plumbing


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def check_reachable(relay: tuple[str, int], verifier: str) -> None:
    try:
        with socket.create_connection(relay, timeout=5):
            pass
    except OSError as exc:
        raise Unreachable(
            f"the gateway's relay port {relay[0]}:{relay[1]} does not answer ({exc})"
        ) from None
    try:
        with urllib.request.urlopen(f"{verifier}/healthz", timeout=5) as response:  # noqa: S310
            response.read()
    except (OSError, urllib.error.URLError) as exc:
        raise Unreachable(f"the verifier at {verifier} does not answer ({exc})") from None


def send(relay: tuple[str, int], sender: str, message: EmailMessage) -> str:
    """Send over SMTP; the reply text of the final 250 (it names the queue id)."""
    data = message.as_bytes(policy=email.policy.SMTP)
    with smtplib.SMTP(relay[0], relay[1], timeout=30) as client:
        client.ehlo("demo.caisses.example")
        client.mail(sender)
        code, reply = client.rcpt(str(message["To"]))
        if code != 250:
            raise smtplib.SMTPRecipientsRefused({str(message["To"]): (code, reply)})
        code, reply = client.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
    return reply.decode("utf-8", "replace")


def find_delivered(
    maildir: Path, wanted: dict[str, str], timeout: float
) -> dict[tuple[str, str], Path]:
    """{(message id, recipient): file} for each wanted message id -> recipient, waiting up
    to ``timeout`` seconds. Files are opened once: only their headers are parsed."""
    new = maildir / "new"
    found: dict[tuple[str, str], Path] = {}
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(p.name for p in new.iterdir()) if new.is_dir() else []
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            path = new / name
            try:
                with path.open("rb") as f:
                    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parse(f)
            except OSError:
                continue
            message_id = str(headers.get("Message-ID", "")).strip()
            recipient = str(headers.get("Delivered-To", "")).strip()
            if wanted.get(message_id) == recipient:
                found[(message_id, recipient)] = path
        if len(found) == len(wanted) or time.monotonic() >= deadline:
            # In the order sent: delivery order is the scheduler's, not the demo's.
            return {key: found[key] for key in wanted.items() if key in found}
        time.sleep(0.2)


def verify(verifier: str, data: bytes) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the verifier's URL, http(s) by argument
        f"{verifier}/api/v1/verify",
        data=data,
        method="POST",
        headers={"Content-Type": "message/rfc822", "Accept-Language": "en"},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:  # 422 (not an email) still carries a report
        body = exc.read()
    except (OSError, urllib.error.URLError) as exc:
        raise Unreachable(f"the verifier at {verifier} does not answer ({exc})") from None
    report: dict[str, Any] = json.loads(body)
    return report


def tamper(data: bytes) -> tuple[bytes, str]:
    """Change one byte of the first PDF's decoded content and re-encode the message; the
    .p7s beside it is left as it was. Returns the new message and what changed."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    for part in message.walk():
        if part.get_content_type() != "application/pdf":
            continue
        assert isinstance(part, EmailMessage)
        document = part.get_content()
        assert isinstance(document, bytes)
        # An amount on the statement: "22,40" becomes "92,40".
        at = document.find(b"montant rembours")
        at = document.find(b",", at) - 2
        changed = bytearray(document)
        before = chr(changed[at])
        changed[at] = ord("9") if changed[at] != ord("9") else ord("8")
        part.set_content(
            bytes(changed),
            maintype="application",
            subtype="pdf",
            disposition="attachment",
            filename=part.get_filename(),
        )
        amount = bytes(changed[at : at + 5]).decode("ascii")
        what = (
            f"{part.get_filename()}: byte {at} changed from {before!r} to {chr(changed[at])!r}"
            f" (a refunded amount now reads {amount} €); its .p7s left as it was"
        )
        return message.as_bytes(policy=email.policy.SMTP), what
    raise ValueError("no PDF document in the delivered message")


def summary(report: dict[str, Any]) -> list[str]:
    lines = []
    for check in report.get("dkim", []):
        lines.append(
            f"DKIM {check['algorithm']} d={check['domain']} s={check['selector']}: "
            f"{check['status']}" + (f" ({check['reason']})" if check.get("reason") else "")
        )
    for document in report.get("documents", []):
        lines.append(
            f"document {document['filename']} sha256={document['sha256'][:16]}…: "
            f"{document['status']}" + (f" ({document['reason']})" if document.get("reason") else "")
        )
    log = report.get("log")
    if isinstance(log, dict):
        lines.append(log_line(log))
    return lines


def log_line(log: dict[str, Any]) -> str:
    """The statement log's word on the seals, from the report's `log` object."""
    if log.get("status") != "logged":
        return f"statement log: {log.get('status')}"
    line = f"logged: entry {log['index']} of {log['origin']}"
    if log.get("tsa"):
        return f"{line} at {log['logged_at']}, time certified by {log['tsa']}"
    return f"{line}, time not certified (no time-stamp authority)"


# ---------------------------------------------------------------------------- the demo


def run(args: argparse.Namespace, out: TextIO) -> int:
    relay: tuple[str, int] = args.relay
    verifier = str(args.verifier).rstrip("/")
    maildir: Path = args.maildir

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"Sealpost demo: relay {relay[0]}:{relay[1]}, verifier {verifier}, Maildir {maildir}")
    check_reachable(relay, verifier)

    say("\n1. Sending statements through the gateway's relay port")
    wanted: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for statement in STATEMENTS:
        message = statement_email(statement, args.sender)
        wire = message.as_bytes(policy=email.policy.SMTP)
        folded = re.search(rb"^Subject: (.*(?:\r\n[ \t].*)*)", wire, re.M)
        subject_on_wire = folded[1].replace(b"\r\n", b"").decode("ascii") if folded else ""
        reply = send(relay, args.sender, message)
        message_id = str(message["Message-ID"])
        wanted[message_id] = statement.recipient
        kinds[message_id] = statement.kind
        say(f"   {statement.kind:<8} {statement.recipient}")
        say(f"            Subject: {message['Subject']}")
        say(f"            on the wire: {subject_on_wire}")
        say(f"            decompte-{statement.number}.pdf attached; gateway: {reply}")

    say(f"\n2. Waiting up to {args.wait:g} s for the delivered copies in {maildir / 'new'}")
    found = find_delivered(maildir, wanted, args.wait)
    for (message_id, recipient), path in found.items():
        say(f"   {kinds[message_id]:<8} {recipient}: {path.name}")
    if len(found) < len(wanted):
        missing = [r for m, r in wanted.items() if (m, r) not in found]
        say(f"   not delivered in time: {', '.join(missing)} (see `sealpost-gateway queue list`)")
        return EXIT_UNEXPECTED

    say("\n3. Verifying each delivered copy: POST /api/v1/verify (message/rfc822)")
    ok = True
    for (message_id, recipient), path in found.items():
        report = verify(verifier, path.read_bytes())
        ok &= report.get("verdict") == "authentic"
        say(f"   {kinds[message_id]:<8} {recipient}: verdict {report.get('verdict')}")
        for line in summary(report):
            say(f"            {line}")

    say("\n4. Altering one byte of a document in a delivered copy, then verifying it")
    (message_id, recipient), path = next(iter(found.items()))
    altered, what = tamper(path.read_bytes())
    say(f"   {what}")
    report = verify(verifier, altered)
    ok &= report.get("verdict") == "tampered"
    say(f"   altered  {recipient}: verdict {report.get('verdict')}")
    for line in summary(report):
        say(f"            {line}")

    say(
        "\nAs expected: the sealed statements are authentic and the altered one is tampered."
        if ok
        else "\nUNEXPECTED: a verdict differs from what the demo expects (see above)."
    )
    return EXIT_OK if ok else EXIT_UNEXPECTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demo.py", description="Send statements through Sealpost and verify them."
    )
    parser.add_argument(
        "--relay",
        type=parse_address,
        default=parse_address(DEFAULT_RELAY),
        help=f"the gateway's relay port, host:port (default {DEFAULT_RELAY})",
    )
    parser.add_argument(
        "--verifier",
        default=DEFAULT_VERIFIER,
        help=f"the verifier's base URL (default {DEFAULT_VERIFIER})",
    )
    parser.add_argument(
        "--maildir",
        type=Path,
        default=DEFAULT_MAILDIR,
        help=f"the gateway's outbox Maildir (default {DEFAULT_MAILDIR})",
    )
    parser.add_argument("--sender", default=DEFAULT_SENDER, help="envelope sender and From")
    parser.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for delivery (default 30)"
    )
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args, out)
    except Unreachable as exc:
        print(f"demo: {exc}.\nStart `make run` first (in another terminal).", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (smtplib.SMTPException, OSError) as exc:
        print(f"demo: the gateway refused or failed: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())

"""The MAIL parameters a message keeps from intake to delivery: SMTPUTF8 (RFC 6531) and
BODY (RFC 6152), and what they ask of the next hop.

At intake the client's ``MAIL FROM`` parameters are kept with the message in the spool.
At delivery, once the next hop's EHLO is known, `options_for` gives the parameters to
send or the reason the message cannot go to that hop at all:

- SMTPUTF8 is sent only when the message needs it: a non-ASCII envelope address (which
  intake accepts only with SMTPUTF8), or a non-ASCII header in a message submitted with
  SMTPUTF8 (RFC 6531 3.4: a client that knows neither needs it SHOULD NOT send the
  parameter). A message that needs it and a hop that does
  not offer it: the message is not sent, the recipients bounce with 5.6.7 (RFC 6531 3.4
  leaves the choice of rejecting or downgrading; no downgrade is offered, as it would
  change the signed headers). A message submitted without SMTPUTF8 is sent as it came,
  without it, as Postfix does for mail received over SMTP (it trusts the client's flag
  and autodetects only for local submissions).
- BODY=8BITMIME is sent when the message holds any 8-bit byte, whatever the client
  declared (the declaration was only a promise about the same bytes). To a hop without
  8BITMIME such a message bounces with 5.6.3 ("conversion required but not supported",
  RFC 3463): RFC 6152 3 lets a client either convert it to 7 bit or return it, and
  converting would break the DKIM signatures the gateway put on it; sending it as is,
  as Postfix does with its conversion turned off, is what RFC 6152 forbids, and a hop
  that strips the eighth bit would change a signed statement silently. Every
  mainstream MTA offers 8BITMIME, so this costs nothing in practice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

Body = Literal["", "7BIT", "8BITMIME"]  # "": the client gave no BODY parameter
BODY_VALUES: Final[tuple[Body, ...]] = ("", "7BIT", "8BITMIME")


@dataclass(frozen=True)
class MailParams:
    smtputf8: bool = False
    body: Body = ""


# A message whose client gave neither parameter.
NO_PARAMS: Final = MailParams()


class Unsendable(Exception):
    """The message cannot go to this hop: `str()` is the reply kept for the DSN, with
    its RFC 3463 enhanced status code first."""


def from_options(smtputf8: bool, mail_options: Iterable[str]) -> MailParams:
    """The parameters of one MAIL command (aiosmtpd has already refused any BODY other
    than 7BIT or 8BITMIME, and SMTPUTF8 with a value)."""
    body: Body = ""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "BODY":
            body = "8BITMIME" if value.upper() == "8BITMIME" else "7BIT"
    return MailParams(smtputf8, body)


def body_of(value: object) -> Body:
    """A stored BODY value, checked."""
    for body in BODY_VALUES:
        if value == body:
            return body
    raise ValueError(f"unknown BODY value {value!r}")


def header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def needs_smtputf8(params: MailParams, sender: str, recipients: Sequence[str], data: bytes) -> bool:
    # A non-ASCII address cannot go on the wire without SMTPUTF8 at all (intake accepts
    # one only with it; spools from before the flag was kept have it set by migration).
    if not (sender.isascii() and all(r.isascii() for r in recipients)):
        return True
    return params.smtputf8 and not header_block(data).isascii()


def options_for(
    params: MailParams,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    offers: Callable[[str], bool],
    host: str,
) -> list[str]:
    """The MAIL parameters for this message to a hop whose EHLO `offers` extensions by
    name; raises Unsendable when the hop lacks one the message needs."""
    options: list[str] = []
    if needs_smtputf8(params, sender, recipients, data):
        if not offers("smtputf8"):
            raise Unsendable(
                f"5.6.7 {host} does not support SMTPUTF8, which this message needs "
                "(a non-ASCII address or header, RFC 6531)"
            )
        options.append("SMTPUTF8")
    if not data.isascii():
        if not offers("8bitmime"):
            raise Unsendable(
                f"5.6.3 {host} does not support 8BITMIME, and this signed message has "
                "8-bit content that cannot be converted without breaking its seal (RFC 6152)"
            )
        options.append("BODY=8BITMIME")
    return options

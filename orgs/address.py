"""Mailbox addresses as the registry keeps and compares them.

An insurer's mailbox is an envelope address the gateway delivers to, so the check is RFC
5321's Mailbox (4.1.2) rather than RFC 5322's looser addr-spec: a dot-string or quoted-string
local part of at most 64 octets, and a host name (not an address literal: a bare IP cannot
present a certificate for a name, and these mailboxes get verified TLS or nothing).

Domains are kept lower-case in their ASCII form (IDNA 2008 A-labels, UTS #46 mapping), so
`Décomptes@Assureur.MC`, `décomptes@assureur.mc` and the punycode spelling are one mailbox.
Local parts keep their case for delivery but compare without it: every mail system the
fund's statements reach treats them so, and two registrations differing only in case
would be one mailbox registered twice.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import idna

MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 253  # RFC 1035 2.3.4 without the trailing dot
MAX_LABEL = 63

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
# qtextSMTP (%d32-33 / %d35-91 / %d93-126) or quoted-pairSMTP (backslash, %d32-126).
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class AddressError(ValueError):
    """The text is not a mailbox the registry can hold; the message says which part."""


@dataclass(frozen=True)
class MailAddress:
    local: str  # as given (dot-string form when the quotes were unnecessary)
    domain: str  # lower-case A-labels

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The form two addresses are compared in."""
        return f"{self.local.lower()}@{self.domain}"


# A pure function of its text, asked for each recipient's domain, and the domains mail
# goes to are few: kept for the last few thousand (an AddressError is not kept).
@functools.lru_cache(maxsize=4096)
def normalise_domain(text: str) -> str:
    """`text` as lower-case A-labels, or AddressError. A trailing dot (the root) is dropped."""
    name = text.strip().rstrip(".")
    if not name:
        raise AddressError("the domain is empty")
    if name.startswith("["):
        raise AddressError(
            f"{text!r} is an address literal: a registered mailbox needs a domain name, "
            "whose certificate the gateway can verify"
        )
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise AddressError(f"{text!r} is not a valid internationalised domain: {exc}") from None
    name = name.lower()
    labels = name.split(".")
    if len(name) > MAX_DOMAIN:
        raise AddressError(f"the domain {text!r} is longer than {MAX_DOMAIN} characters")
    if len(labels) < 2:
        raise AddressError(f"the domain {text!r} has no dot: a mail domain needs one")
    for label in labels:
        if not _LDH_LABEL.fullmatch(label):
            raise AddressError(
                f"the domain {text!r} has an invalid label {label!r} "
                f"(letters, digits and inner hyphens, 1 to {MAX_LABEL} characters)"
            )
    if labels[-1].isdigit():
        raise AddressError(f"the domain {text!r} ends in a numeric label: not a host name")
    if any(label.startswith("xn--") for label in labels):
        try:
            idna.decode(name)  # a malformed A-label is not a name anyone can register
        except idna.IDNAError as exc:
            raise AddressError(f"the domain {text!r} has an invalid A-label: {exc}") from None
    return name


def _local_part(text: str, whole: str) -> str:
    if not text:
        raise AddressError(f"{whole!r} has an empty local part (before the @)")
    if not text.isascii():
        raise AddressError(
            f"{whole!r} has non-ASCII characters before the @: such a mailbox needs "
            "SMTPUTF8 all the way, register its ASCII alias"
        )
    if _DOT_STRING.fullmatch(text):
        local = text
    elif _QUOTED_STRING.fullmatch(text):
        unquoted = re.sub(r"\\(.)", r"\1", text[1:-1])
        # "jean"@x and jean@x are one mailbox: keep the plain spelling when it exists.
        local = unquoted if _DOT_STRING.fullmatch(unquoted) else text
    else:
        raise AddressError(
            f"{whole!r} has an invalid local part {text!r} (RFC 5321: letters, digits, "
            "!#$%&'*+/=?^_`{|}~- and single dots between them, or a quoted string)"
        )
    if len(local.encode("ascii")) > MAX_LOCAL:
        raise AddressError(f"{whole!r} has a local part longer than {MAX_LOCAL} characters")
    return local


def _parts(text: str) -> tuple[str, str, str]:
    """`text` without its spaces and angle brackets, its local part and its domain."""
    whole = text.strip()
    if whole.startswith("<") and whole.endswith(">"):
        whole = whole[1:-1]
    local, at, domain = whole.rpartition("@")
    if not at:
        raise AddressError(f"{text!r} is not a mail address: it has no @")
    return whole, local, domain


def parse_address(text: str) -> MailAddress:
    """The registry form of a mailbox address, or AddressError saying what is wrong."""
    whole, local, domain = _parts(text)
    return MailAddress(_local_part(local, whole), normalise_domain(domain))


def address_domain(text: str) -> str:
    """The domain `parse_address(text)` would have, its local part unchecked: when no
    mailbox is at that domain, the address is none of them, whatever its local part."""
    return normalise_domain(_parts(text)[2])

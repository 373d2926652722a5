"""Who may send what through the gateway: pure checks, each returning a Rejection or None.

Nothing here talks SMTP; the handler turns a Rejection into a reply. The rules:
- only an authenticated client, or one connecting from its allow-listed networks, may
  relay at all (never an open relay);
- the envelope sender and the header From must be in a domain this gateway signs for
  and that the client may use, so every message leaves signed by its own domain;
- exactly one From header, and every header line a field or a continuation of one;
- lines end with CRLF and nothing else, and are at most 998 characters (a bare CR or LF
  is how SMTP smuggling hides a second message from one server and shows it to the next);
- no byte that RFC 5322 / RFC 6532 forbid in a message the fund signs: no NUL anywhere, no
  other control character (TAB aside) or DEL in the header, and header text in UTF-8 (a
  reader that stops at NUL or renders a control shows less than the seal vouches for);
- a non-ASCII envelope address only in a transaction opened with SMTPUTF8 (RFC 6531 3.4).
  8-bit message bytes are accepted without BODY=8BITMIME, as Postfix does by default
  (strict_8bitmime off): the client's declaration changes nothing in the bytes signed, and
  delivery looks at the bytes, not the declaration (gateway/mail_params.py).

Every refusal of a message's content after DATA is ``550 5.6.0``: RFC 5321 4.3.2 lists
both 550 and 554 after DATA, and 550 (with X.6.0, "other or undefined media error", RFC
3463) is what Postfix answers to content it refuses. One code for the whole class lets a
client's error handling treat it as one thing: this message, as it is, will not be taken.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import Address
from email.policy import SMTP as SMTP_POLICY
from typing import Any

from gateway import header_block
from gateway.settings import ClientSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Rejection:
    code: int
    status: str  # the enhanced status code, RFC 3463
    text: str
    reason: str  # a short stable label for metrics and logs


@dataclass(frozen=True)
class Client:
    name: str
    sender_domains: frozenset[str]


class ClientDirectory:
    """The configured clients, found by login name or by the network they connect from."""

    def __init__(self, clients: Iterable[ClientSettings]) -> None:
        self._by_name: dict[str, Client] = {}
        self._networks: list[tuple[IPNetwork, Client]] = []
        for entry in clients:
            client = Client(entry.name, frozenset(d.lower() for d in entry.sender_domains))
            self._by_name[entry.name] = client
            self._networks.extend((ipaddress.ip_network(n), client) for n in entry.networks)

    def by_name(self, name: str) -> Client | None:
        return self._by_name.get(name)

    def by_address(self, address: str | IPAddress | None) -> Client | None:
        """The first client whose networks contain the address (an IPv4-mapped IPv6
        address counts as its IPv4 address)."""
        if address is None:
            return None
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return None  # a Unix socket or a garbled PROXY header: no network identity
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network, client in self._networks:
            if ip.version == network.version and ip in network:
                return client
        return None


RELAY_DENIED = Rejection(
    550, "5.7.1", "Relaying denied: authenticate or connect from an allowed network", "relay_denied"
)


def check_relay(client: Client | None) -> Rejection | None:
    return RELAY_DENIED if client is None else None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


# RFC 5321 4.1.2 Mailbox, with RFC 6531's UTF-8 in atoms, quoted strings and labels.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]"
_LOCAL_PART = re.compile(
    rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
)
_LABEL = re.compile(r"(?!-)(?:[^\W_]|-){1,63}(?<!-)")  # letters, digits, hyphens inside
_MAX_LOCAL_PART = 64  # octets, RFC 5321 4.5.3.1.1
_MAX_DOMAIN = 255


def _valid_domain(domain: str) -> bool:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return False
        return True
    return len(domain.encode("utf-8")) <= _MAX_DOMAIN and all(
        _LABEL.fullmatch(label) for label in domain.split(".")
    )


def check_address_syntax(address: str, role: str) -> Rejection | None:
    """A mailbox the gateway can store and relay: local@domain, or a refusal with RFC
    3463's code for a bad `role` ("sender" or "recipient") address.

    aiosmtpd's parser is lenient: it turns "<a\"b@x>" into '"ab@x>"' and passes "<>" in
    RCPT and a bare "<a>" on, addresses no next hop would take. A source route
    ("<@a,@b:c@d>") is dropped before this, as RFC 5321 4.1.1.3 asks.
    """
    if role == "sender" and address in ("", "<>"):
        # The null reverse-path is good syntax, but bounces do not pass through here.
        return Rejection(
            550,
            "5.7.1",
            "The null sender <> is not accepted: send from a signed domain",
            "null_sender",
        )
    local, at, domain = address.rpartition("@")
    problem = None
    if not at or not local or not domain:
        problem = "it must be local-part@domain"
    elif len(local.encode("utf-8")) > _MAX_LOCAL_PART or not _LOCAL_PART.fullmatch(local):
        problem = "the local part is not valid"
    elif not _valid_domain(domain):
        problem = "the domain is not valid"
    if problem is None:
        return None
    status = "5.1.7" if role == "sender" else "5.1.3"
    return Rejection(501, status, f"Bad {role} address syntax: {problem}", f"bad_{role}_address")


def check_sender_domain(
    domain: str, client: Client, signing_domains: frozenset[str], what: str
) -> Rejection | None:
    """`what` names the address checked ("Sender" or "From") in the reply text."""
    if not domain or domain not in signing_domains:
        return Rejection(
            550,
            "5.7.1",
            f"{what} domain {domain or '(none)'} is not a domain this gateway signs for",
            "domain_not_signed",
        )
    if domain not in client.sender_domains:
        return Rejection(
            550,
            "5.7.1",
            f"{what} domain {domain} is not allowed for client {client.name}",
            "domain_not_allowed",
        )
    return None


def check_address(address: str, smtputf8: bool, role: str) -> Rejection | None:
    """`role` is "sender" or "recipient"; `address` as aiosmtpd decoded it (UTF-8, with
    undecodable bytes kept as lone surrogates)."""
    if address.isascii():
        return None
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        status = "5.1.7" if role == "sender" else "5.1.3"  # bad sender's / destination syntax
        return Rejection(553, status, f"The {role} address is not valid UTF-8", "address_not_utf8")
    if not smtputf8:
        # RFC 6531 3.7.4.1: 553, "Non-ASCII addresses not permitted for that
        # sender/recipient" (X.6.7).
        return Rejection(
            553,
            "5.6.7",
            f"Non-ASCII {role} address not permitted without SMTPUTF8: "
            "send MAIL FROM:<address> SMTPUTF8",
            "address_needs_smtputf8",
        )
    return None


def check_recipient_count(count: int, limit: int) -> Rejection | None:
    """`count` recipients already accepted; may one more be added?"""
    if count >= limit:
        return Rejection(
            452, "4.5.3", f"Too many recipients: at most {limit} per message", "too_many_recipients"
        )
    return None


# A CR not followed by an LF, an LF not preceded by a CR. Each pattern starts with its
# line-end byte, so the regex engine skips from one to the next at C speed.
_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"\n(?<!\r\n)")


def check_lines(data: bytes, limit: int) -> Rejection | None:
    """Every line ends with CRLF and nothing else, and holds at most `limit` characters.

    Nothing is split or counted (those cost 95 us on a 27 KB statement): two regex scans
    find a bare line end, and a line longer than `limit` must hold one of the bytes at
    limit, 2 * limit + 1, ... (every limit + 1 consecutive bytes hold one), so only the
    lines under those bytes are measured, from the LF before to the CR after.
    """
    if _BARE_CR.search(data) is not None or _BARE_LF.search(data) is not None:
        return Rejection(
            550,
            "5.6.0",
            "Bare CR or LF in message data: every line must end with CRLF",
            "bare_line_end",
        )
    for at in range(limit, len(data), limit + 1):
        if data[at] in b"\r\n":
            continue  # between two lines
        end = data.find(b"\r", at)
        if (len(data) if end < 0 else end) - data.rfind(b"\n", 0, at) - 1 > limit:
            return Rejection(
                550, "5.6.0", f"Line too long: at most {limit} characters per line", "line_too_long"
            )
    return None


def _header_end(data: bytes) -> int:
    """Where the header block ends: the index just past its last line's CRLF (the blank
    line that follows is not part of it), or len(data) when there is no body."""
    if data.startswith(b"\r\n"):
        return 0  # an empty header block: the message starts with the blank line
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 2


def _line_of(data: bytes, index: int) -> int:
    """The 1-based line number of data[index]; called only on the refusal path."""
    return data.count(b"\r\n", 0, index) + 1


# RFC 5322 3.2.5/3.5: header text is VCHAR and WSP (obs-NO-WS-CTL is obsolete syntax that
# must not be generated), and 8-bit header text is UTF-8 (RFC 6532 3.2). CR and LF are
# left to check_lines; TAB is WSP. NUL is found by the whole-message scan first.
_HEADER_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_forbidden_bytes(data: bytes) -> Rejection | None:
    """Refuse NUL anywhere, other controls and DEL in the header, and header text that
    is not UTF-8.

    NUL in the body is refused too: RFC 2045 2.7/2.8 say 7bit and 8bit data hold no NUL,
    and this gateway offers no BINARYMIME (RFC 3030), the only way to send it. Other
    controls stay allowed in the body, as RFC 2045 allows them there. Each test is one
    scan in C (bytes.find, a compiled character class over the header only, a UTF-8
    decode of the header only), as this runs on every message.
    """
    head_end = _header_end(data)
    nul = data.find(b"\0")
    if nul >= 0:
        where = "header" if nul < head_end else "body"
        return Rejection(
            550,
            "5.6.0",
            f"NUL byte in message {where} (line {_line_of(data, nul)}): NUL is not allowed in mail",
            "nul_byte",
        )
    control = _HEADER_CONTROL.search(data, 0, head_end)
    if control is not None:
        return Rejection(
            550,
            "5.6.0",
            f"Control character 0x{control.group()[0]:02X} in message header "
            f"(line {_line_of(data, control.start())}): not allowed in header fields",
            "header_control",
        )
    head = data[:head_end]
    if not head.isascii():  # the common case is plain ASCII, and needs no decode
        try:
            head.decode("utf-8")  # strict: no overlong forms, no surrogates, nothing cut
        except UnicodeDecodeError as error:
            return Rejection(
                550,
                "5.6.0",
                f"Message header is not valid UTF-8 (line {_line_of(head, error.start)}): "
                "write non-ASCII header text in UTF-8 or as RFC 2047 encoded-words",
                "header_not_utf8",
            )
    return None


# RFC 5322 2.2/3.6.8: a header line is a field ("name:" with a name of printable ASCII
# but the colon, no space before the colon) or the continuation of one (starting with
# space or TAB). Any other line cannot be DKIM-signed (dkimpy refuses it) and is read
# differently by different readers (as a field, as the start of the body, or dropped).
_NOT_A_FIELD = re.compile(rb"^(?![!-9;-~]+:|[ \t]|$)", re.MULTILINE)


def check_header_lines(data: bytes) -> Rejection | None:
    """Refuse a header line that is neither a field nor a continuation line."""
    head_end = _header_end(data)
    if data[:1] in (b" ", b"\t"):
        bad: int | None = 0  # a continuation of nothing
    else:
        found = _NOT_A_FIELD.search(data, 0, head_end)
        bad = None if found is None else found.start()
    if bad is None:
        return None
    return Rejection(
        550,
        "5.6.0",
        f"Header line {_line_of(data, bad)} is not a header field: "
        "each line must be name: value, or continue the line before with a space or TAB",
        "bad_header_line",
    )


# RFC 5322 3.6: each of these fields appears at most once (From is checked with its
# address, below). A second Subject or To is shown by some readers and not by others, so
# the verifier never vouches for a block holding one: the gateway does not seal it.
ONCE_ONLY = (
    "Date",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
)
_ONCE_ONLY_FIELD = re.compile(
    rb"^(" + b"|".join(re.escape(name.encode()) for name in ONCE_ONLY) + rb"):",
    re.IGNORECASE | re.MULTILINE,
)


def check_repeated_fields(data: bytes) -> Rejection | None:
    """Refuse a header block with a second Date, Subject, To, Cc, Message-ID..."""
    counts: dict[str, int] = {}
    for match in _ONCE_ONLY_FIELD.finditer(data, 0, _header_end(data)):
        key = match.group(1).decode("ascii").lower()
        counts[key] = counts.get(key, 0) + 1
    for name in ONCE_ONLY:
        if counts.get(name.lower(), 0) > 1:
            return Rejection(
                550,
                "5.6.0",
                f"Message has {counts[name.lower()]} {name} headers; RFC 5322 allows one",
                "repeated_field",
            )
    return None


_FROM_FIELD = re.compile(rb"^from[ \t]*:", re.IGNORECASE | re.MULTILINE)


@functools.lru_cache(maxsize=512)
def _from_addresses(value: str) -> tuple[Address, ...]:
    """The addresses of one From field as the SMTP policy's header registry reads them, or
    none when the field has defects or does not parse. Parsed once per distinct value (a
    sending system writes the same From on every statement; the parse cost 3% of a lane)."""
    try:
        field: Any = SMTP_POLICY.header_fetch_parse("From", value)
        # A defect means readers may disagree on the author ("a@x <b@y>" is a@x to
        # Python and b@y to many mail readers): only a plainly parsed From is signed.
        # RFC 5322 3.6.2: From is a mailbox-list; a group ("a: <b@x>;") is not an author.
        if field.defects or any(group.display_name is not None for group in field.groups):
            return ()
        return tuple(field.addresses)
    except Exception:
        return ()


def header_from_domain(data: bytes) -> str | Rejection:
    """The domain of the one From header's address, or why the message has none."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    # Split as compat32 splits it: the same raw fields as the SMTP policy, without parsing
    # every Content-Type through the header registry.
    headers = header_block.parse(head)
    values = [value for name, value in headers.raw_items() if name.lower() == "from"]
    # Counted in the bytes too: "From :" (obsolete syntax, space before the colon) is not
    # a From to Python or dkimpy, but some mail readers show it.
    fields = len(_FROM_FIELD.findall(head))
    if not values and not fields:
        return Rejection(550, "5.6.0", "Message has no From header", "no_from")
    if max(len(values), fields) > 1:
        return Rejection(
            550,
            "5.6.0",
            f"Message has {max(len(values), fields)} From headers; exactly one is allowed",
            "several_from",
        )
    addresses = _from_addresses(values[0]) if values else ()
    domains = {a.domain.lower() for a in addresses if a.username and a.domain}
    if len(addresses) != 1 or len(domains) != 1:
        # RFC 5322 allows several authors with a Sender header; one statement has one
        # author, and the DKIM domain must be that author's.
        return Rejection(
            550, "5.6.0", "From header must hold exactly one valid address", "bad_from"
        )
    return domains.pop()

"""The client's address behind reverse proxies, as nginx's realip module computes it with
`real_ip_recursive on`: a forwarding header is believed only when the peer is one of our
proxies, and then the client is the right-most address in it that is not itself one of
our proxies. Everything to its left was written by the client, who can write anything.

One header is read, the one our proxies write (`X-Forwarded-For`, or RFC 7239
`Forwarded`): a proxy passes the other one through as the client sent it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7239 section 4: forwarded-pair = token "=" value, value = token / quoted-string.
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')
# IPv6 clients get a /64 each from their provider: per address, one client is many.
IPV6_PREFIX = 64


def parse_address(text: str) -> Address | None:
    """An address as forwarding headers write it: bare, `v4:port` or `[v6]:port`."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 has two colons or more
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for(values: Iterable[str]) -> list[str]:
    """The `for=` value of each element of RFC 7239 `Forwarded` header lines, in order
    (an element without one counts as unknown, so that it still stops the walk)."""
    found: list[str] = []
    for line in values:
        for element in _elements(line):
            value = "unknown"
            for pair in element.split(";"):
                match = _PAIR.fullmatch(pair)
                if match and match.group(1).lower() == "for":
                    value = _unquote(match.group(2))
            found.append(value)
    return found


def _elements(line: str) -> list[str]:
    """Splits on commas outside quoted strings."""
    elements: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in line:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append("".join(current))
            current = []
            continue
        current.append(char)
    elements.append("".join(current))
    return [e for e in elements if e.strip()]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def x_forwarded_for(values: Iterable[str]) -> list[str]:
    return [item.strip() for line in values for item in line.split(",") if item.strip()]


class ClientAddress:
    """Computes the client address of a request from its peer and its headers."""

    def __init__(self, trusted: Sequence[str], header: str = "x-forwarded-for") -> None:
        self.trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(t) for t in trusted)
        self.header = header

    def is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def of(self, peer: str, headers: Sequence[tuple[bytes, bytes]]) -> str:
        """The client's address as text; the peer's own when it is not a trusted proxy."""
        address = parse_address(peer)
        if address is None or not self.trusted or not self.is_trusted(address):
            return str(address) if address is not None else peer
        name = self.header.encode("ascii")
        lines = [v.decode("latin-1") for k, v in headers if k.lower() == name]
        hops = forwarded_for(lines) if self.header == "forwarded" else x_forwarded_for(lines)
        for hop in reversed(hops):
            found = parse_address(hop)
            if found is None:
                # "unknown", an obfuscated name, garbage: the nearest hop we can name.
                return str(address)
            address = found
            if not self.is_trusted(found):
                return str(found)
        return str(address)  # every hop is ours: the left-most is the client


def rate_bucket(client: str) -> str:
    """The rate-limit bucket of a client address: itself, or its /64 for IPv6."""
    address = parse_address(client)
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False)
        return f"ip:{network}"
    return f"ip:{client}"

"""DNS for delivery: one dnspython resolver, asked for DNSSEC status, with the answers
cached for their TTL.

DANE trusts the AD bit of the answer, as Postfix does: the resolver configured here must be
a validating resolver the gateway trusts (on the host or over a protected path). The AD
bit from anything else proves nothing, so ``resolver = ""`` (the system's) is only safe when
the system's resolver is such a local validator.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rdata
import dns.resolver

from keys.dns import parse_resolver

# EDNS0 with the DO bit and AD in the query (RFC 6840 5.7): a validating resolver then
# says whether the answer is authenticated. 1232 octets avoids IP fragmentation.
_EDNS_PAYLOAD = 1232
# Answers (MX, addresses, TLSA, TXT) kept for their TTL; bounded, least recently used out.
_CACHE_ENTRIES = 50_000


class LookupFailed(Exception):
    """The lookup failed (SERVFAIL, timeout, malformed answer): neither yes nor no."""


@dataclass(frozen=True)
class Lookup:
    records: tuple[dns.rdata.Rdata, ...]  # empty: the name or the type does not exist
    secure: bool  # the resolver set AD: the answer, or the denial, is DNSSEC-validated
    nxdomain: bool = False


def make_resolver(address: str = "", timeout: float = 10.0) -> dns.asyncresolver.Resolver:
    """A resolver at ``address`` (IP[:port]; "" for the system's) asking for DNSSEC status."""
    if address:
        where = parse_resolver(address)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [where.address]
        resolver.port = where.port
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.use_edns(0, dns.flags.DO, _EDNS_PAYLOAD)
    resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.lifetime = timeout
    resolver.cache = dns.resolver.LRUCache(_CACHE_ENTRIES)
    return resolver


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> Lookup:
    """The records of ``rdtype`` at ``name`` and whether they are validated; raises
    LookupFailed when there is no answer either way."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except dns.resolver.NXDOMAIN as exc:
        return Lookup((), _authenticated(_response_of(exc, name)), nxdomain=True)
    except dns.resolver.NoAnswer as exc:
        return Lookup((), _authenticated(exc.kwargs.get("response")))
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"{rdtype} lookup for {name} failed: {exc}") from exc
    return Lookup(tuple(answer), _authenticated(answer.response))


def _response_of(exc: dns.resolver.NXDOMAIN, name: str) -> dns.message.Message | None:
    responses = exc.kwargs.get("responses") or {}
    for qname, response in responses.items():
        if qname.to_text(omit_final_dot=True).lower() == name.lower().rstrip("."):
            return response  # type: ignore[no-any-return]
    return next(iter(responses.values()), None)


def _authenticated(response: dns.message.Message | None) -> bool:
    return response is not None and bool(response.flags & dns.flags.AD)


def txt_text(record: dns.rdata.Rdata) -> str:
    """A TXT record's strings joined, as ASCII; "" when it is not ASCII."""
    strings: tuple[bytes, ...] = getattr(record, "strings", ())
    try:
        return b"".join(strings).decode("ascii")
    except UnicodeDecodeError:
        return ""

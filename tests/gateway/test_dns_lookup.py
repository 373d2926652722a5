"""Lookups through the configured resolver, with the DNSSEC status it vouches for."""

from __future__ import annotations

import dns.flags
import pytest

from gateway.dns_lookup import LookupFailed, lookup, make_resolver, txt_text
from tests.gateway import local_dns


async def test_answers_and_denials_carry_the_resolvers_ad_bit() -> None:
    zone = local_dns.Zone(signed={"signed.test"})
    zone.add("mx.signed.test", "A", "192.0.2.1")
    zone.add("mx.plain.test", "A", "192.0.2.2")
    async with local_dns.serve(zone) as port:
        resolver = make_resolver(f"127.0.0.1:{port}", timeout=2.0)
        signed = await lookup(resolver, "mx.signed.test", "A")
        plain = await lookup(resolver, "mx.plain.test", "A")
        nodata = await lookup(resolver, "mx.signed.test", "TLSA")
        missing = await lookup(resolver, "gone.signed.test", "A")
    assert [r.to_text() for r in signed.records] == ["192.0.2.1"]
    assert signed.secure
    assert not plain.secure
    assert plain.records
    assert (nodata.records, nodata.secure, nodata.nxdomain) == ((), True, False)
    assert (missing.records, missing.secure, missing.nxdomain) == ((), True, True)


async def test_queries_ask_for_dnssec_status() -> None:
    zone = local_dns.Zone()
    async with local_dns.serve(zone) as port:
        await lookup(make_resolver(f"127.0.0.1:{port}", timeout=2.0), "x.test", "A")
    (query,) = zone.messages
    assert query.flags & dns.flags.AD
    assert query.ednsflags & dns.flags.DO


async def test_answers_are_cached_for_their_ttl() -> None:
    zone = local_dns.Zone()
    zone.add("mx.test", "A", "192.0.2.1")
    async with local_dns.serve(zone) as port:
        resolver = make_resolver(f"127.0.0.1:{port}", timeout=2.0)
        for _ in range(3):
            await lookup(resolver, "mx.test", "A")
    assert zone.queries == [("mx.test", "A")]


async def test_a_server_failure_is_neither_yes_nor_no() -> None:
    zone = local_dns.Zone(fail={"_25._tcp.mx.test"})
    async with local_dns.serve(zone) as port:
        with pytest.raises(LookupFailed, match=r"TLSA lookup for _25\._tcp\.mx\.test failed"):
            await lookup(
                make_resolver(f"127.0.0.1:{port}", timeout=2.0), "_25._tcp.mx.test", "TLSA"
            )


async def test_txt_strings_are_joined() -> None:
    zone = local_dns.Zone()
    zone.add("_mta-sts.x.test", "TXT", '"v=STSv1; " "id=abc"')
    async with local_dns.serve(zone) as port:
        found = await lookup(make_resolver(f"127.0.0.1:{port}", 2.0), "_mta-sts.x.test", "TXT")
    assert [txt_text(r) for r in found.records] == ["v=STSv1; id=abc"]


def test_a_resolver_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        make_resolver("dns.example")

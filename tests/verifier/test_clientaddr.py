"""The client's address: from the peer, or from the forwarding header of a trusted proxy,
right-most address first, never from what the client wrote itself."""

from __future__ import annotations

import pytest

from verifier.clientaddr import (
    ClientAddress,
    forwarded_for,
    parse_address,
    rate_bucket,
    x_forwarded_for,
)

PROXIES = ("10.0.0.0/24", "2001:db8:ffff::1/128")


def of(peer: str, *headers: tuple[str, str], header: str = "x-forwarded-for") -> str:
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]
    return ClientAddress(PROXIES, header).of(peer, raw)


def test_the_peer_is_the_client_when_it_is_not_a_proxy() -> None:
    assert of("192.0.2.5", ("X-Forwarded-For", "198.51.100.1")) == "192.0.2.5"
    assert of("192.0.2.5", ("Forwarded", "for=198.51.100.1"), header="forwarded") == "192.0.2.5"


def test_with_no_proxy_configured_no_header_counts() -> None:
    raw = [(b"x-forwarded-for", b"198.51.100.1")]
    assert ClientAddress(()).of("10.0.0.1", raw) == "10.0.0.1"


def test_a_proxy_is_believed_about_the_address_it_saw() -> None:
    assert of("10.0.0.7", ("X-Forwarded-For", "198.51.100.1")) == "198.51.100.1"


def test_what_the_client_wrote_left_of_the_proxy_entry_is_ignored() -> None:
    # The client sent "X-Forwarded-For: 203.0.113.9"; the proxy appended what it saw.
    assert of("10.0.0.7", ("X-Forwarded-For", "203.0.113.9, 198.51.100.1")) == "198.51.100.1"


def test_a_chain_of_our_proxies_is_walked_from_the_right() -> None:
    chain = ("X-Forwarded-For", "203.0.113.9, 198.51.100.1, 10.0.0.3, 10.0.0.4")
    assert of("10.0.0.7", chain) == "198.51.100.1"


def test_several_header_lines_are_one_list() -> None:
    lines = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.1")]
    assert of("10.0.0.7", *lines) == "198.51.100.1"


def test_when_every_hop_is_ours_the_left_most_is_the_client() -> None:
    assert of("10.0.0.7", ("X-Forwarded-For", "10.0.0.1, 10.0.0.2")) == "10.0.0.1"


def test_a_proxy_without_the_header_is_the_client() -> None:
    assert of("10.0.0.7") == "10.0.0.7"


@pytest.mark.parametrize("hop", ["unknown", "_hidden", "garbage", "999.1.1.1"])
def test_a_hop_that_is_no_address_stops_at_the_nearest_known_one(hop: str) -> None:
    assert of("10.0.0.7", ("X-Forwarded-For", f"198.51.100.1, {hop}")) == "10.0.0.7"
    assert of("10.0.0.7", ("X-Forwarded-For", f"198.51.100.1, {hop}, 10.0.0.2")) == "10.0.0.2"


def test_only_the_configured_header_is_read() -> None:
    both = [("X-Forwarded-For", "198.51.100.1"), ("Forwarded", "for=203.0.113.9")]
    assert of("10.0.0.7", *both) == "198.51.100.1"
    assert of("10.0.0.7", *both, header="forwarded") == "203.0.113.9"


def test_rfc_7239_forms() -> None:
    assert forwarded_for(
        [
            'for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https',
            'For="192.0.2.60:8080";by=203.0.113.43, by=10.0.0.1',
            'for="_gazonk", for=unknown, for="a,b";host=x',
        ]
    ) == ["192.0.2.43", "[2001:db8:cafe::17]:4711", "192.0.2.60:8080", "unknown", "_gazonk",
          "unknown", "a,b"]  # fmt: skip
    line = ("Forwarded", 'for=203.0.113.9, for="[2001:db8:cafe::17]:4711"')
    assert of("10.0.0.7", line, header="forwarded") == "2001:db8:cafe::17"
    assert of("10.0.0.7", ("Forwarded", "for=198.51.100.1;by=10.0.0.7"), header="forwarded") == (
        "198.51.100.1"
    )


def test_addresses_as_proxies_write_them() -> None:
    assert str(parse_address("192.0.2.1:8080")) == "192.0.2.1"
    assert str(parse_address("[2001:db8::1]:443")) == "2001:db8::1"
    assert str(parse_address("2001:db8::1")) == "2001:db8::1"
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert parse_address("") is None
    assert x_forwarded_for(["a, ,b", "c"]) == ["a", "b", "c"]


def test_an_ipv6_proxy_and_a_mapped_peer() -> None:
    assert of("2001:db8:ffff::1", ("X-Forwarded-For", "198.51.100.1")) == "198.51.100.1"
    assert of("::ffff:10.0.0.7", ("X-Forwarded-For", "198.51.100.1")) == "198.51.100.1"


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert rate_bucket("2001:db8:1:2::1") == rate_bucket("2001:db8:1:2:ffff::9")
    assert rate_bucket("2001:db8:1:2::1") != rate_bucket("2001:db8:1:3::1")
    assert rate_bucket("192.0.2.1") == "ip:192.0.2.1"


@pytest.mark.parametrize(
    ("forwarded", "bucket"),
    [
        # One IPv4 client, however its address is written: one bucket.
        (("X-Forwarded-For", "::ffff:198.51.100.1"), "ip:198.51.100.1"),
        (("X-Forwarded-For", "0:0:0:0:0:ffff:c633:6401"), "ip:198.51.100.1"),
        (("X-Forwarded-For", "198.51.100.1:61000"), "ip:198.51.100.1"),
        (("Forwarded", 'for="198.51.100.1:443"'), "ip:198.51.100.1"),
        # One IPv6 client: its /64, with a port, a zone or another spelling.
        (("Forwarded", 'for="[2001:DB8:1:2::77]:80"'), "ip:2001:db8:1:2::/64"),
        (("X-Forwarded-For", "2001:db8:1:2:0:0:0:99%eth0"), "ip:2001:db8:1:2::/64"),
        (("X-Forwarded-For", "[2001:db8:1:2::5]:8080"), "ip:2001:db8:1:2::/64"),
    ],
)
def test_no_spelling_of_an_address_opens_a_new_rate_bucket(
    forwarded: tuple[str, str], bucket: str
) -> None:
    """Probed as an attacker would: switching how the same client's address is written
    (IPv4-mapped, ports, zones, case, brackets) or moving within its /64 gains nothing."""
    header = "forwarded" if forwarded[0] == "Forwarded" else "x-forwarded-for"
    assert rate_bucket(of("10.0.0.7", forwarded, header=header)) == bucket


def test_a_name_in_place_of_an_address_counts_against_the_proxy_not_nobody() -> None:
    """RFC 7239 obfuscated identifiers, "unknown", garbage: the walk stops at the nearest
    hop it can name, our proxy. Such clients share one bucket rather than none."""
    for value in ("for=_hidden", "for=unknown", 'for="[::1'):
        assert of("10.0.0.7", ("Forwarded", value), header="forwarded") == "10.0.0.7"

"""MTA-STS policies (RFC 8461): the TXT record, the policy text, MX patterns, the HTTPS
fetch from a real local TLS host, and the cache that outlives a restart."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from gateway import dns_lookup
from gateway.mta_sts import (
    MAX_AGE_CEILING,
    MAX_POLICY_SIZE,
    HttpsFetcher,
    MtaSts,
    Policy,
    PolicyCache,
    PolicyError,
    ascii_domain,
    mx_matches,
    parse_policy,
    parse_txt,
)
from tests.gateway import local_dns, policy_host
from tests.support import Clock

DOMAIN = "insurer.test"
NOW = 1_800_000_000.0  # the wall clock of the cache tests (2027), moved by hand
POLICY = (
    b"version: STSv1\r\nmode: enforce\r\nmx: mx.insurer.test\r\nmx: *.backup.test\r\n"
    b"max_age: 86400\r\n"
)


# -- the TXT record (3.1) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20260101T000000"], "20260101T000000"),
        (["v=STSv1;id=abc;"], "abc"),
        (["v=STSv1; id=abc; ext=1"], "abc"),
        (["something else", "v=STSv1; id=abc"], "abc"),  # other records are discarded
        (["v=STSv1; id=abc", "v=STSv1; id=def"], None),  # two: no policy
        (["v=STSv1; id=" + "a" * 33], None),  # id is 1 to 32 characters
        (["v=STSv1; id=a-b"], None),  # letters and digits only
        (["v=STSv1;"], None),  # no id
        (["id=abc; v=STSv1"], None),  # v= must come first
        (["v=STSv2; id=abc"], None),
        ([], None),
    ],
)
def test_txt_record_gives_the_policy_id_only_when_exactly_one_is_valid(
    records: list[str], expected: str | None
) -> None:
    assert parse_txt(records) == expected


# -- the policy (3.2) --------------------------------------------------------------------


def test_a_policy_is_parsed_with_lf_or_crlf_and_unknown_keys_ignored() -> None:
    text = "version: STSv1\nmode: testing\nmx: MX1.Insurer.test.\nfuture: x\nmax_age: 604800\n"
    assert parse_policy(text) == Policy("testing", ("mx1.insurer.test",), 604800)
    assert parse_policy(POLICY.decode()).mx == ("mx.insurer.test", "*.backup.test")


def test_max_age_is_capped_at_one_year() -> None:
    policy = parse_policy("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 9999999999\n")
    assert policy.max_age == MAX_AGE_CEILING


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "without any mx"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n", "mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\ngarbage\n", "malformed line"),
        ("<html>not a policy</html>", "malformed line"),
    ],
)
def test_an_invalid_policy_is_refused_with_the_reason(text: str, complaint: str) -> None:
    with pytest.raises(PolicyError, match=complaint):
        parse_policy(text)


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 60\n").mode == "none"


@given(st.text())
def test_any_text_is_a_policy_or_a_policy_error(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError:
        return
    assert policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age <= MAX_AGE_CEILING


@given(st.lists(st.text(max_size=60), max_size=3))
def test_any_txt_strings_give_an_id_or_none(records: list[str]) -> None:
    found = parse_txt(records)
    assert found is None or (found.isalnum() and len(found) <= 32)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mx.insurer.test", "mx.insurer.test", True),
        ("mx.insurer.test", "MX.Insurer.Test.", True),
        ("mx.insurer.test", "mx2.insurer.test", False),
        ("*.insurer.test", "mx.insurer.test", True),
        ("*.insurer.test", "a.mx.insurer.test", False),  # one label only (4.1)
        ("*.insurer.test", "insurer.test", False),
        ("*.insurer.test", ".insurer.test", False),
    ],
)
def test_mx_patterns_follow_rfc_8461_4_1(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_domains_are_looked_up_in_a_labels() -> None:
    assert ascii_domain("Mutuelle-Santé.test") == "xn--mutuelle-sant-nhb.test"
    assert ascii_domain("../etc") is None
    assert ascii_domain("localhost") is None


# -- fetching over real HTTPS -------------------------------------------------------------


@pytest.fixture
async def dns_port() -> AsyncIterator[int]:
    zone = local_dns.Zone()
    zone.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
    zone.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=one"')
    async with local_dns.serve(zone) as port:
        yield port


def fetcher(port: int, https_port: int, context: ssl.SSLContext) -> HttpsFetcher:
    resolver = dns_lookup.make_resolver(f"127.0.0.1:{port}", timeout=2.0)
    return HttpsFetcher(resolver, context, 3.0, port=https_port)


async def test_a_policy_is_fetched_from_the_well_known_url_over_verified_https(
    ca: trustme.CA, client_tls: ssl.SSLContext, dns_port: int
) -> None:
    async with policy_host.serve(ca, f"mta-sts.{DOMAIN}") as host:
        host.body = POLICY
        policy = await fetcher(dns_port, host.port, client_tls)(DOMAIN)
    assert policy.mode == "enforce"
    assert host.requests == [("/.well-known/mta-sts.txt", f"mta-sts.{DOMAIN}:{host.port}")]


async def test_a_certificate_for_another_name_is_refused(
    ca: trustme.CA, client_tls: ssl.SSLContext, dns_port: int
) -> None:
    async with policy_host.serve(ca, "mta-sts.elsewhere.test") as host:
        host.body = POLICY
        with pytest.raises(PolicyError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetcher(dns_port, host.port, client_tls)(DOMAIN)
        assert host.requests == []


async def test_an_untrusted_certificate_is_refused(ca: trustme.CA, dns_port: int) -> None:
    async with policy_host.serve(ca, f"mta-sts.{DOMAIN}") as host:
        host.body = POLICY
        with pytest.raises(PolicyError):
            await fetcher(dns_port, host.port, ssl.create_default_context())(DOMAIN)
        assert host.requests == []


@pytest.mark.parametrize(
    ("status", "content_type", "body", "complaint"),
    [
        ("301 Moved Permanently", "text/plain", POLICY, "HTTP 301"),  # never followed
        ("404 Not Found", "text/plain", b"", "HTTP 404"),
        ("200 OK", "text/html", POLICY, "not text/plain"),
        ("200 OK", "text/plain", b"x" * (MAX_POLICY_SIZE + 1), "larger than"),
        ("200 OK", "text/plain; charset=utf-8", b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_a_fetch_that_breaks_the_rules_of_3_3_is_refused(
    ca: trustme.CA,
    client_tls: ssl.SSLContext,
    dns_port: int,
    status: str,
    content_type: str,
    body: bytes,
    complaint: str,
) -> None:
    async with policy_host.serve(ca, f"mta-sts.{DOMAIN}") as host:
        host.status, host.content_type, host.body = status, content_type, body
        host.extra_headers = "Location: https://evil.test/\r\n"
        with pytest.raises(PolicyError, match=complaint):
            await fetcher(dns_port, host.port, client_tls)(DOMAIN)
        assert len(host.requests) == 1


# -- finding and caching --------------------------------------------------------------------


class CountingFetcher:
    def __init__(self, policy: Policy) -> None:
        self.policy: Policy | None = policy
        self.calls = 0

    async def __call__(self, domain: str) -> Policy:
        self.calls += 1
        if self.policy is None:
            raise PolicyError(f"mta-sts.{domain}: connection refused")
        return self.policy


ENFORCE = Policy("enforce", ("mx.insurer.test",), 7 * 86400)


@pytest.fixture
async def zone() -> AsyncIterator[tuple[local_dns.Zone, int]]:
    found = local_dns.Zone()
    found.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=one"')
    async with local_dns.serve(found) as port:
        yield found, port


def finder(
    port: int, directory: Path, fetch: CountingFetcher, clock: Clock, results: list[str]
) -> MtaSts:
    resolver = dns_lookup.make_resolver(f"127.0.0.1:{port}", timeout=2.0)
    return MtaSts(resolver, PolicyCache(directory), fetch, on_fetch=results.append, clock=clock)


async def test_a_policy_is_fetched_once_and_again_when_the_txt_id_changes(
    zone: tuple[local_dns.Zone, int], tmp_path: Path
) -> None:
    records, port = zone
    fetch, clock, results = CountingFetcher(ENFORCE), Clock(NOW), list[str]()
    sts = finder(port, tmp_path, fetch, clock, results)
    assert await sts.policy(DOMAIN) == ENFORCE
    assert await sts.policy(DOMAIN) == ENFORCE
    assert fetch.calls == 1
    records.records[(f"_mta-sts.{DOMAIN}", "TXT")] = ['"v=STSv1; id=two"']
    sts = finder(port, tmp_path, fetch, clock, results)  # a fresh resolver cache too
    fetch.policy = Policy("testing", ("mx.insurer.test",), 86400)
    assert (await sts.policy(DOMAIN) or ENFORCE).mode == "testing"
    assert fetch.calls == 2
    assert results == ["fetched", "fetched"]


async def test_the_cached_policy_survives_a_restart_and_a_dead_policy_host(
    zone: tuple[local_dns.Zone, int], tmp_path: Path
) -> None:
    _, port = zone
    clock = Clock(NOW)
    await finder(port, tmp_path, CountingFetcher(ENFORCE), clock, []).policy(DOMAIN)
    assert (tmp_path / f"{DOMAIN}.json").is_file()

    down = CountingFetcher(ENFORCE)
    down.policy = None
    results: list[str] = []
    clock.now += 2 * 86400  # the daily refresh is due, max_age (a week) is not over
    restarted = finder(port, tmp_path, down, clock, results)
    assert await restarted.policy(DOMAIN) == ENFORCE  # the fetch failed: the cache stays

    clock.now += 6 * 86400  # past max_age
    restarted = finder(port, tmp_path, down, clock, results)
    assert await restarted.policy(DOMAIN) is None  # expired, and no fresh one
    assert results == ["failed", "failed"]


async def test_a_failed_fetch_is_not_retried_for_every_message(
    zone: tuple[local_dns.Zone, int], tmp_path: Path
) -> None:
    _, port = zone
    down, clock = CountingFetcher(ENFORCE), Clock(NOW)
    down.policy = None
    sts = finder(port, tmp_path, down, clock, [])
    for _ in range(5):
        assert await sts.policy(DOMAIN) is None
    assert down.calls == 1
    clock.now += 301
    await sts.policy(DOMAIN)
    assert down.calls == 2


async def test_a_cached_policy_stays_in_force_when_the_txt_record_disappears(
    zone: tuple[local_dns.Zone, int], tmp_path: Path
) -> None:
    records, port = zone
    clock = Clock(NOW)
    await finder(port, tmp_path, CountingFetcher(ENFORCE), clock, []).policy(DOMAIN)
    del records.records[(f"_mta-sts.{DOMAIN}", "TXT")]
    fetch = CountingFetcher(ENFORCE)
    assert await finder(port, tmp_path, fetch, clock, []).policy(DOMAIN) == ENFORCE
    assert fetch.calls == 0


async def test_no_txt_record_and_no_cache_means_no_policy(tmp_path: Path) -> None:
    async with local_dns.serve(local_dns.Zone()) as port:
        fetch = CountingFetcher(ENFORCE)
        assert await finder(port, tmp_path, fetch, Clock(NOW), []).policy(DOMAIN) is None
    assert fetch.calls == 0


async def test_mode_none_is_cached_but_applies_no_policy(
    zone: tuple[local_dns.Zone, int], tmp_path: Path
) -> None:
    _, port = zone
    fetch = CountingFetcher(Policy("none", (), 86400))
    assert await finder(port, tmp_path, fetch, Clock(NOW), []).policy(DOMAIN) is None
    assert (tmp_path / f"{DOMAIN}.json").is_file()


async def test_an_unreadable_cache_file_counts_as_no_cache(
    zone: tuple[local_dns.Zone, int], tmp_path: Path
) -> None:
    _, port = zone
    (tmp_path / f"{DOMAIN}.json").write_text("{not json")
    fetch = CountingFetcher(ENFORCE)
    assert await finder(port, tmp_path, fetch, Clock(NOW), []).policy(DOMAIN) == ENFORCE
    assert fetch.calls == 1


async def test_any_failure_of_the_fetch_leaves_the_cached_policy_in_force(
    zone: tuple[local_dns.Zone, int], tmp_path: Path
) -> None:
    records, port = zone
    clock = Clock(NOW)
    await finder(port, tmp_path, CountingFetcher(ENFORCE), clock, []).policy(DOMAIN)
    records.records[(f"_mta-sts.{DOMAIN}", "TXT")] = ['"v=STSv1; id=two"']

    async def broken(domain: str) -> Policy:
        raise RuntimeError("a response nobody expected")

    results: list[str] = []
    resolver = dns_lookup.make_resolver(f"127.0.0.1:{port}", timeout=2.0)
    sts = MtaSts(resolver, PolicyCache(tmp_path), broken, on_fetch=results.append, clock=clock)
    assert await sts.policy(DOMAIN) == ENFORCE
    assert results == ["failed"]

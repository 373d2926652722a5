"""DANE and MTA-STS on the mx route, end to end: a local DNS server (validated or not), a
local HTTPS policy host and a real aiosmtpd MX with STARTTLS, all on 127.0.0.1, with the
real Delivery in between. What must never happen: a message in clear text, or to a host
the policy rules out."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from gateway import __main__ as gateway_main
from gateway import dane, dns_lookup
from gateway.delivery import Delivery, DirectMX, DnsMxResolver, Outcome
from gateway.metrics import Metrics
from gateway.mta_sts import HttpsFetcher, MtaSts, PolicyCache
from gateway.settings import DeliverySettings, Settings
from gateway.tls_policy import TlsPolicy
from tests.gateway import local_dns, policy_host
from tests.gateway.conftest import Peer, start_peer
from tests.support import free_port

DOMAIN = "insurer.test"
MX = "mx.insurer.test"
MESSAGE = b"From: s@caisses.example\r\nTo: a@insurer.test\r\nSubject: x\r\n\r\nstatement\r\n"


def policy_text(mode: str, *mx: str) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 604800"]
    return ("\r\n".join(lines) + "\r\n").encode()


def certificate_for(ca: trustme.CA, *names: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context with a certificate for ``names``, and that certificate (DER)."""
    issued = ca.issue_cert(*names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issued.configure_cert(context)
    return context, ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


@dataclass
class World:
    """The recipient domain's DNS, its policy host, and its MX."""

    ca: trustme.CA
    zone: local_dns.Zone
    dns_port: int
    policy: policy_host.PolicyHost
    cache: Path
    stack: contextlib.AsyncExitStack
    reports: list[tuple[str, str]] = field(default_factory=list)
    made: list[Delivery] = field(default_factory=list)

    def publish_policy(self, mode: str, *mx: str, policy_id: str = "1") -> None:
        self.zone.records[(f"_mta-sts.{DOMAIN}", "TXT")] = [f'"v=STSv1; id={policy_id}"']
        self.policy.body = policy_text(mode, *mx)

    def publish_tlsa(self, port: int, *records: dane.Tlsa) -> None:
        self.zone.records[(dane.tlsa_name(MX, port), "TLSA")] = [
            f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in records
        ]

    async def mx(self, context: ssl.SSLContext | None) -> Peer:
        peer, server = await start_peer(context)
        self.stack.callback(server.close)
        return peer

    def delivery(
        self,
        port: int,
        *,
        tls_required: frozenset[str] = frozenset(),
        registered: Callable[[str], bool] | None = None,
    ) -> Delivery:
        """A gateway as __main__ wires it, trusting only the test CA; a new one is a restart."""
        trusting = ssl.create_default_context()
        self.ca.configure_trust(trusting)
        resolver = dns_lookup.make_resolver(f"127.0.0.1:{self.dns_port}", timeout=2.0)
        fetcher = HttpsFetcher(resolver, trusting, 3.0, port=self.policy.port)
        finder = MtaSts(resolver, PolicyCache(self.cache), fetcher)
        policy = TlsPolicy(
            resolver,
            mta_sts=finder,
            dane_enabled=True,
            report=lambda p, r: self.reports.append((p, r)),
        )
        made = Delivery(
            DirectMX(port=port),
            tls_required_domains=tls_required,
            tls_required=registered,
            verify_context=trusting,
            resolver=DnsMxResolver(resolver),
            local_hostname="gw.test",
            timeout=5.0,
            tls_policy=policy,
        )
        self.made.append(made)
        return made

    async def send(self, port: int) -> Outcome:
        (outcome,) = await self.delivery(port).deliver(
            "s@caisses.example", ["a@insurer.test"], MESSAGE
        )
        return outcome


@pytest.fixture
async def world(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[World]:
    zone = local_dns.Zone()
    zone.add(DOMAIN, "MX", f"10 {MX}.")
    zone.add(MX, "A", "127.0.0.1")
    zone.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
    async with (
        contextlib.AsyncExitStack() as stack,
        local_dns.serve(zone) as port,
        policy_host.serve(ca, f"mta-sts.{DOMAIN}") as host,
    ):
        found = World(ca, zone, port, host, tmp_path / "mta-sts", stack)
        yield found
        for made in found.made:
            await made.close()


# -- MTA-STS ---------------------------------------------------------------------------------


async def test_enforce_with_a_valid_certificate_for_the_mx_delivers_over_tls(
    world: World,
) -> None:
    world.publish_policy("enforce", MX)
    peer = await world.mx(certificate_for(world.ca, MX)[0])
    outcome = await world.send(peer.port)
    assert outcome.status == "delivered"
    assert [m.tls for m in peer.messages] == [True]
    assert ("mta-sts-enforce", "ok") in world.reports


async def test_enforce_with_a_certificate_for_another_name_defers_and_sends_nothing(
    world: World,
) -> None:
    world.publish_policy("enforce", MX)
    peer = await world.mx(certificate_for(world.ca, "other.test")[0])
    outcome = await world.send(peer.port)
    assert outcome.status == "transient"
    assert outcome.reply.startswith("4.7.5")
    assert "mta-sts-enforce" in outcome.reply
    assert peer.messages == []
    assert peer.transactions == 0
    assert ("mta-sts-enforce", "failed") in world.reports


async def test_enforce_without_starttls_defers_rather_than_send_in_clear(world: World) -> None:
    world.publish_policy("enforce", MX)
    peer = await world.mx(None)
    outcome = await world.send(peer.port)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert peer.transactions == 0


async def test_enforce_with_the_mx_not_in_the_policy_defers_without_connecting(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.publish_policy("enforce", "mx.elsewhere.test", "*.insurer-backup.test")
    world.zone.add(f"_smtp._tls.{DOMAIN}", "TXT", '"v=TLSRPTv1; rua=mailto:tls@insurer.test"')
    peer = await world.mx(certificate_for(world.ca, MX)[0])
    outcome = await world.send(peer.port)
    assert outcome.status == "transient"
    assert outcome.reply.startswith("4.7.5")
    assert "MTA-STS" in outcome.reply
    assert peer.connections == 0
    assert ("mta-sts-enforce", "mx_not_in_policy") in world.reports
    (line,) = [r.getMessage() for r in caplog.records if "tls_policy_no_host" in r.getMessage()]
    assert "tls_rpt=mailto:tls@insurer.test" in line


async def test_testing_mode_delivers_despite_a_bad_certificate_and_counts_the_failure(
    world: World,
) -> None:
    world.publish_policy("testing", MX)
    peer = await world.mx(certificate_for(world.ca, "other.test")[0])
    outcome = await world.send(peer.port)
    assert outcome.status == "delivered"
    assert [m.tls for m in peer.messages] == [True]
    assert world.reports == [("mta-sts-testing", "failed")]


async def test_the_policy_is_kept_across_a_restart_when_the_policy_host_is_down(
    world: World,
) -> None:
    world.publish_policy("enforce", MX)
    good = await world.mx(certificate_for(world.ca, MX)[0])
    assert (await world.send(good.port)).status == "delivered"
    assert len(world.policy.requests) == 1

    world.policy.status = "503 Service Unavailable"  # and the gateway restarts
    world.publish_policy("enforce", MX, policy_id="2")  # a new id forces a fetch, which fails
    impostor = await world.mx(certificate_for(world.ca, "other.test")[0])
    outcome = await world.send(impostor.port)
    assert len(world.policy.requests) == 2
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert impostor.transactions == 0


async def test_no_policy_published_means_opportunistic_delivery(world: World) -> None:
    peer = await world.mx(certificate_for(world.ca, "other.test")[0])
    outcome = await world.send(peer.port)
    assert outcome.status == "delivered"
    assert world.policy.requests == []
    assert world.reports == []


async def test_every_address_of_the_mx_is_tried_in_turn(world: World) -> None:
    world.zone.records[(MX, "A")] = ["127.0.0.2", "127.0.0.1"]  # nobody on 127.0.0.2
    world.publish_policy("enforce", MX)
    peer = await world.mx(certificate_for(world.ca, MX)[0])
    assert (await world.send(peer.port)).status == "delivered"
    assert peer.connections == 1


async def test_an_mx_whose_aaaa_lookup_fails_is_still_reached_over_ipv4_with_dane(
    world: World,
) -> None:
    context, certificate = certificate_for(world.ca, MX)
    peer = await world.mx(context)
    world.zone.signed.add(DOMAIN)
    world.zone.fail.add((MX, "AAAA"))
    world.publish_tlsa(peer.port, dane.record_for(certificate, 1, 1))
    assert (await world.send(peer.port)).status == "delivered"
    assert world.reports == [("dane", "ok")]


# -- DANE --------------------------------------------------------------------------------------


async def test_dane_ee_3_1_1_match_delivers_without_any_name_check(world: World) -> None:
    context, certificate = certificate_for(trustme.CA(), "not-the-mx.test")  # untrusted CA too
    peer = await world.mx(context)
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(certificate, 1, 1))
    outcome = await world.send(peer.port)
    assert outcome.status == "delivered"
    assert [m.tls for m in peer.messages] == [True]
    assert world.reports == [("dane", "ok")]


async def test_dane_mismatch_defers_and_sends_nothing(world: World) -> None:
    context, _ = certificate_for(world.ca, MX)
    peer = await world.mx(context)
    _, someone_else = certificate_for(world.ca, MX)
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(someone_else, 1, 1))
    outcome = await world.send(peer.port)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert "TLSA" in outcome.reply
    assert peer.transactions == 0
    assert world.reports == [("dane", "failed")]


async def test_dane_ta_delivers_to_a_chain_from_the_anchor_for_the_mx_name(world: World) -> None:
    anchor = trustme.CA().create_child_ca()  # the domain's own CA, which nobody else trusts
    peer = await world.mx(certificate_for(anchor, MX)[0])
    world.zone.signed.add(DOMAIN)
    anchor_der = ssl.PEM_cert_to_DER_cert(anchor.cert_pem.bytes().decode())
    world.publish_tlsa(peer.port, dane.record_for(anchor_der, 1, 1, usage=2))
    assert (await world.send(peer.port)).status == "delivered"

    wrong_name = await world.mx(certificate_for(anchor, "mx.elsewhere.test")[0])
    world.publish_tlsa(wrong_name.port, dane.record_for(anchor_der, 1, 1, usage=2))
    outcome = await world.send(wrong_name.port)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert wrong_name.transactions == 0
    assert world.reports == [("dane", "ok"), ("dane", "failed")]


async def test_tlsa_records_without_the_ad_bit_are_ignored(world: World) -> None:
    context, _ = certificate_for(world.ca, MX)
    peer = await world.mx(context)
    _, someone_else = certificate_for(world.ca, MX)
    world.publish_tlsa(peer.port, dane.record_for(someone_else, 1, 1))  # zone not signed
    outcome = await world.send(peer.port)
    assert outcome.status == "delivered"
    assert world.reports == []
    assert (dane.tlsa_name(MX, peer.port), "TLSA") not in world.zone.queries


async def test_dane_host_without_starttls_defers(world: World) -> None:
    peer = await world.mx(None)
    _, certificate = certificate_for(world.ca, MX)
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(certificate, 1, 1))
    outcome = await world.send(peer.port)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert peer.transactions == 0


async def test_only_unusable_tlsa_records_still_make_tls_mandatory(world: World) -> None:
    _, certificate = certificate_for(world.ca, MX)
    pkix_ee = dane.Tlsa(1, 1, 1, dane.record_for(certificate).data)
    world.zone.signed.add(DOMAIN)
    clear = await world.mx(None)
    world.publish_tlsa(clear.port, pkix_ee)
    outcome = await world.send(clear.port)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert clear.transactions == 0

    encrypted = await world.mx(certificate_for(trustme.CA(), "anything.test")[0])
    world.publish_tlsa(encrypted.port, pkix_ee)
    assert (await world.send(encrypted.port)).status == "delivered"
    assert [m.tls for m in encrypted.messages] == [True]


async def test_a_failing_tlsa_lookup_on_a_signed_host_defers(world: World) -> None:
    peer = await world.mx(certificate_for(world.ca, MX)[0])
    world.zone.signed.add(DOMAIN)
    world.zone.fail.add(dane.tlsa_name(MX, peer.port))
    outcome = await world.send(peer.port)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert peer.connections == 0


async def test_dane_takes_precedence_over_mta_sts(world: World) -> None:
    context, certificate = certificate_for(world.ca, "not-the-mx.test")
    peer = await world.mx(context)
    world.publish_policy("enforce", MX)  # whose name check this certificate would fail
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(certificate, 0, 2))  # 3 0 2, SHA-512
    outcome = await world.send(peer.port)
    assert outcome.status == "delivered"
    assert world.reports == [("dane", "ok")]


async def test_tls_required_domains_win_over_dane(world: World) -> None:
    context, certificate = certificate_for(trustme.CA(), MX)  # a CA the gateway does not trust
    peer = await world.mx(context)
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(certificate, 1, 1))
    delivery = world.delivery(peer.port, tls_required=frozenset({DOMAIN}))
    (outcome,) = await delivery.deliver("s@caisses.example", ["a@insurer.test"], MESSAGE)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert peer.transactions == 0


async def test_a_registered_insurers_domain_gets_verified_tls_as_tls_required_domains(
    world: World,
) -> None:
    context, certificate = certificate_for(trustme.CA(), MX)  # a CA the gateway does not trust
    peer = await world.mx(context)
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(certificate, 1, 1))
    delivery = world.delivery(peer.port, registered=lambda domain: domain == DOMAIN)
    (outcome,) = await delivery.deliver("s@caisses.example", ["a@insurer.test"], MESSAGE)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert outcome.destination == f"{MX}:{peer.port}+tls"
    assert peer.transactions == 0


# -- with the dead-destination cache and the idle pool ---------------------------------------

OTHER = "other.test"  # an unsigned domain without policy, sharing insurer.test's MX


async def test_a_dane_mismatch_defers_its_domain_but_holds_no_mail_for_the_shared_mx(
    world: World,
) -> None:
    context, _ = certificate_for(world.ca, MX)
    peer = await world.mx(context)
    _, someone_else = certificate_for(world.ca, MX)
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(someone_else, 1, 1))
    world.zone.add(OTHER, "MX", f"10 {MX}.")
    delivery = world.delivery(peer.port)
    # The domain without policy first: its session, parked in the pool, must not be the
    # one the DANE domain's message then goes through unchecked.
    (plain,) = await delivery.deliver("s@caisses.example", [f"b@{OTHER}"], MESSAGE)
    (dane_domain,) = await delivery.deliver("s@caisses.example", ["a@insurer.test"], MESSAGE)
    assert plain.status == "delivered"
    assert plain.destination == f"{MX}:{peer.port}"
    assert (dane_domain.status, dane_domain.reply[:5]) == ("transient", "4.7.5")
    assert dane_domain.destination == f"{MX}:{peer.port}+dane"
    assert dane_domain.hold is None  # the host answered: not a dead destination
    assert peer.transactions == 1
    assert [v.state for v in delivery.destinations.views()] == []  # nothing failing
    (again,) = await delivery.deliver("s@caisses.example", [f"b@{OTHER}"], MESSAGE)
    assert again.status == "delivered"


async def test_an_mta_sts_certificate_mismatch_is_not_a_dead_destination(world: World) -> None:
    world.publish_policy("enforce", MX)
    peer = await world.mx(certificate_for(world.ca, "not-the-mx.test")[0])
    delivery = world.delivery(peer.port)
    for _ in range(2):  # tried again at once: nothing held back
        (outcome,) = await delivery.deliver("s@caisses.example", ["a@insurer.test"], MESSAGE)
        assert (outcome.status, outcome.reply[:5], outcome.hold) == ("transient", "4.7.5", None)
        assert outcome.destination == f"{MX}:{peer.port}+mta-sts-enforce"
    assert world.reports == [("mta-sts-enforce", "failed")] * 2
    assert peer.transactions == 0


async def test_a_dead_mx_under_dane_is_failing_for_that_requirement_only(world: World) -> None:
    port = free_port()  # the MX is down: connections refused
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(port, dane.record_for(certificate_for(world.ca, MX)[1], 1, 1))
    world.zone.add(OTHER, "MX", f"10 {MX}.")
    delivery = world.delivery(port)
    (outcome,) = await delivery.deliver("s@caisses.example", ["a@insurer.test"], MESSAGE)
    assert outcome.status == "transient"
    assert outcome.hold is not None
    assert outcome.hold.attempted
    views = {v.destination: v.state for v in delivery.destinations.views()}
    assert views == {f"{MX}:{port}+dane": "failing"}
    (other,) = await delivery.deliver("s@caisses.example", [f"b@{OTHER}"], MESSAGE)
    assert other.reply.startswith("4.4.1")  # tried, not held by the +dane hop's state
    assert other.destination == f"{MX}:{port}"


# -- as the gateway wires it ----------------------------------------------------------------


async def test_the_settings_wire_dane_mta_sts_and_their_metrics(
    world: World, tmp_path: Path
) -> None:
    context, _ = certificate_for(world.ca, MX)
    peer = await world.mx(context)
    _, someone_else = certificate_for(world.ca, MX)
    world.zone.signed.add(DOMAIN)
    world.publish_tlsa(peer.port, dane.record_for(someone_else, 1, 1))
    world.publish_policy("enforce", MX)  # fetched from port 443, where nobody listens
    ca_file = tmp_path / "ca.pem"
    world.ca.cert_pem.write_to_path(str(ca_file))
    settings = Settings(
        delivery=DeliverySettings(
            route="mx",
            resolver=f"127.0.0.1:{world.dns_port}",
            tls_ca_file=str(ca_file),
            mta_sts_cache=str(tmp_path / "cache"),
            mta_sts_fetch_timeout=2.0,
        )
    )
    metrics = Metrics()
    delivery = gateway_main._delivery(settings, "gw.test", metrics)
    world.made.append(delivery)
    route = DirectMX(port=peer.port)  # the MX of this test listens on another port than 25
    delivery.route = route
    (outcome,) = await delivery.deliver("s@caisses.example", ["a@insurer.test"], MESSAGE)
    assert (outcome.status, outcome.reply[:5]) == ("transient", "4.7.5")
    assert peer.transactions == 0
    assert metrics.tls_policy.value("dane", "failed") == 1
    assert metrics.mta_sts_fetches.value("failed") == 1
    assert 'sealpost_tls_policy_total{policy="dane",result="failed"} 1' in await metrics.render()

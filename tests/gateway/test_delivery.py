"""Delivery through real sockets to the in-process peer, and into a real Maildir."""

from __future__ import annotations

import asyncio
import email
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import dns.name
import dns.resolver
import pytest

from gateway.delivery import (
    Delivery,
    DirectMX,
    DnsFailure,
    DnsMxResolver,
    MaildirRoute,
    Smarthost,
    maildir_name,
)
from tests.gateway.conftest import Peer

MESSAGE = (
    b"From: sender@caisses.example\r\nTo: a@insurer.example\r\nSubject: statement\r\n"
    b"Message-ID: <1@caisses.example>\r\n\r\nBody line\r\n.leading dot\r\n"
)


class FakeMx:
    """Stands in for public DNS: every domain's MX is the given host names."""

    def __init__(self, hosts: dict[str, list[str]]) -> None:
        self.hosts = hosts
        self.asked: list[str] = []

    async def mx_hosts(self, domain: str) -> list[str]:
        self.asked.append(domain)
        if domain not in self.hosts:
            raise DnsFailure(f"5.1.2 domain {domain} does not exist", permanent=True)
        return self.hosts[domain]


@pytest.fixture
async def make_delivery() -> AsyncIterator[Callable[..., Delivery]]:
    made: list[Delivery] = []

    def make(route: Smarthost | DirectMX | MaildirRoute, **kwargs: object) -> Delivery:
        delivery = Delivery(route, local_hostname="gw.test", timeout=5.0, **kwargs)  # type: ignore[arg-type]
        made.append(delivery)
        return delivery

    yield make
    for d in made:
        await d.close()


async def test_smarthost_delivers_every_recipient_byte_for_byte(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(Smarthost(peer.host, peer.port))
    outcomes = await delivery.deliver("s@caisses.example", ["a@x.example", "b@y.example"], MESSAGE)
    assert [o.status for o in outcomes] == ["delivered", "delivered"]
    (received,) = peer.messages
    assert received.sender == "s@caisses.example"
    assert received.recipients == ["a@x.example", "b@y.example"]
    assert received.data == MESSAGE
    assert not received.tls


async def test_refused_recipient_is_permanent_and_others_delivered(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    peer.refuse["bad@x.example"] = "550 5.1.1 No such user"
    peer.refuse["full@x.example"] = "452 4.2.2 Mailbox full"
    delivery = make_delivery(Smarthost(peer.host, peer.port))
    rcpts = ["ok@x.example", "bad@x.example", "full@x.example"]
    outcomes = {o.recipient: o for o in await delivery.deliver("s@c.example", rcpts, MESSAGE)}
    assert outcomes["ok@x.example"].status == "delivered"
    assert outcomes["bad@x.example"].status == "permanent"
    assert outcomes["bad@x.example"].reply == "550 5.1.1 No such user"
    assert outcomes["full@x.example"].status == "transient"
    assert outcomes["full@x.example"].reply.startswith("452 4.2.2")
    assert peer.messages[0].recipients == ["ok@x.example"]


async def test_every_recipient_refused_and_data_refusals_are_classified(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    peer.refuse["bad@x.example"] = "550 5.1.1 No such user"
    delivery = make_delivery(Smarthost(peer.host, peer.port))
    (only,) = await delivery.deliver("s@c.example", ["bad@x.example"], MESSAGE)
    assert (only.status, only.reply) == ("permanent", "550 5.1.1 No such user")

    peer.fail_next(1, "451 4.3.0 Try again later")
    (later,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert (later.status, later.reply) == ("transient", "451 4.3.0 Try again later")
    peer.fail_next(1, "554 5.6.0 Content refused")
    (never,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert never.status == "permanent"
    assert peer.messages == []


async def test_connection_refused_is_transient(make_delivery: Callable[..., Delivery]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delivery = make_delivery(Smarthost("127.0.0.1", port))
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "transient"
    assert outcome.reply.startswith("4.4.1")


async def test_connections_to_one_destination_are_reused(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(Smarthost(peer.host, peer.port), per_destination=2)
    for i in range(6):
        outcomes = await delivery.deliver("s@c.example", [f"r{i}@x.example"], MESSAGE)
        assert outcomes[0].status == "delivered"
    assert len(peer.messages) == 6
    assert peer.connections == 1


@pytest.mark.parametrize("noticed", [True, False], ids=["noticed", "unnoticed"])
async def test_a_pooled_connection_closed_by_the_peer_is_replaced(
    peer: Peer, make_delivery: Callable[..., Delivery], noticed: bool
) -> None:
    delivery = make_delivery(Smarthost(peer.host, peer.port))
    (first,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    peer.drop_connections()
    if noticed:  # else the client learns of the close only when it next writes
        await asyncio.sleep(0.05)
    (second,) = await delivery.deliver("s@c.example", ["b@x.example"], MESSAGE)
    assert (first.status, second.status) == ("delivered", "delivered")
    assert peer.connections == 2
    assert len(peer.messages) == 2


async def test_concurrency_per_destination_is_bounded(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(Smarthost(peer.host, peer.port), per_destination=2)
    results = await asyncio.gather(
        *(delivery.deliver("s@c.example", [f"r{i}@x.example"], MESSAGE) for i in range(10))
    )
    assert all(r[0].status == "delivered" for r in results)
    assert len(peer.messages) == 10
    assert 1 <= peer.connections <= 2


async def test_opportunistic_tls_is_used_when_offered(
    tls_peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(Smarthost(tls_peer.host, tls_peer.port))
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "delivered"
    assert tls_peer.messages[0].tls


async def test_8bit_content_goes_with_body_8bitmime_over_starttls_too(
    tls_peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    # The extensions offered after STARTTLS decide, not those before it (RFC 3207 4.2).
    data = "From: s@c.example\r\nSubject: x\r\n\r\nrembours\u00e9\r\n".encode()
    delivery = make_delivery(Smarthost(tls_peer.host, tls_peer.port))
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], data)
    assert outcome.status == "delivered", outcome
    (received,) = tls_peer.messages
    assert received.tls
    assert "BODY=8BITMIME" in received.mail_options


async def test_required_tls_with_trusted_certificate_delivers_over_tls(
    tls_peer: Peer, make_delivery: Callable[..., Delivery], client_tls: ssl.SSLContext
) -> None:
    delivery = make_delivery(
        Smarthost(tls_peer.host, tls_peer.port, tls="required"), verify_context=client_tls
    )
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "delivered"
    assert tls_peer.messages[0].tls


async def test_required_tls_with_untrusted_certificate_defers_and_sends_nothing(
    tls_peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    # The default context trusts the system CAs, not the test CA.
    delivery = make_delivery(Smarthost(tls_peer.host, tls_peer.port, tls="required"))
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "transient"
    assert outcome.reply.startswith("4.7.5")
    assert tls_peer.messages == []


async def test_required_tls_without_starttls_defers_and_sends_nothing_in_clear(
    peer: Peer, make_delivery: Callable[..., Delivery], client_tls: ssl.SSLContext
) -> None:
    delivery = make_delivery(
        Smarthost(peer.host, peer.port, tls="required"), verify_context=client_tls
    )
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "transient"
    assert outcome.reply.startswith("4.7.5")
    assert peer.messages == []
    assert peer.transactions == 0


async def test_smarthost_auth_after_tls(
    auth_peer: Peer, make_delivery: Callable[..., Delivery], client_tls: ssl.SSLContext
) -> None:
    route = Smarthost(auth_peer.host, auth_peer.port, "required", "gw", "s3cret")
    assert "s3cret" not in repr(route)
    delivery = make_delivery(route, verify_context=client_tls)
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "delivered"
    assert auth_peer.messages[0].login == "gw"
    assert auth_peer.messages[0].tls


async def test_smarthost_auth_refused_is_transient(
    auth_peer: Peer, make_delivery: Callable[..., Delivery], client_tls: ssl.SSLContext
) -> None:
    route = Smarthost(auth_peer.host, auth_peer.port, "required", "gw", "wrong")
    delivery = make_delivery(route, verify_context=client_tls)
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "transient"
    assert outcome.reply.startswith("4.7.0")
    assert set(auth_peer.auth_attempts) == {"gw"}  # aiosmtplib tries each mechanism
    assert auth_peer.messages == []


async def test_credentials_are_never_sent_without_tls(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(Smarthost(peer.host, peer.port, "opportunistic", "gw", "s3cret"))
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "transient"
    assert "never in clear" in outcome.reply
    assert peer.auth_attempts == []
    assert peer.messages == []


async def test_direct_mx_requires_tls_only_for_listed_domains(
    peer: Peer, make_delivery: Callable[..., Delivery], client_tls: ssl.SSLContext
) -> None:
    resolver = FakeMx({"insurer.example": [peer.host], "member.example": [peer.host]})
    delivery = make_delivery(
        DirectMX(port=peer.port),
        resolver=resolver,
        tls_required_domains=frozenset({"Insurer.Example"}),
        verify_context=client_tls,
    )
    outcomes = await delivery.deliver(
        "s@c.example", ["a@insurer.example", "m@member.example", "x@nowhere.example"], MESSAGE
    )
    statuses = {o.recipient: o.status for o in outcomes}
    assert statuses == {
        "a@insurer.example": "transient",  # the peer offers no STARTTLS
        "m@member.example": "delivered",
        "x@nowhere.example": "permanent",
    }
    assert [m.recipients for m in peer.messages] == [["m@member.example"]]


async def test_direct_mx_looks_each_domain_up_once_per_attempt(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    resolver = FakeMx({"insurer.example": [peer.host]})
    delivery = make_delivery(DirectMX(port=peer.port), resolver=resolver)
    rcpts = [f"r{i}@insurer.example" for i in range(5)]
    outcomes = await delivery.deliver("s@c.example", rcpts, MESSAGE)
    assert [o.status for o in outcomes] == ["delivered"] * 5
    assert resolver.asked == ["insurer.example"]
    assert [m.recipients for m in peer.messages] == [rcpts]


async def test_direct_mx_tries_the_next_host_when_one_is_down(
    peer: Peer, make_delivery: Callable[..., Delivery]
) -> None:
    # Both hosts use the route's port, so "down" is a host that refuses: 127.0.0.2 is
    # loopback too, but the peer listens on 127.0.0.1 only.
    resolver = FakeMx({"x.example": ["127.0.0.2", peer.host]})
    delivery = make_delivery(DirectMX(port=peer.port), resolver=resolver)
    (outcome,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
    assert outcome.status == "delivered", outcome
    assert len(peer.messages) == 1


async def test_maildir_delivery_writes_one_file_per_recipient(
    tmp_path: Path, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(MaildirRoute(tmp_path / "outbox"))
    outcomes = await delivery.deliver("s@c.example", ["a@x.example", "b@y.example"], MESSAGE)
    assert [o.status for o in outcomes] == ["delivered", "delivered"]
    files = sorted((tmp_path / "outbox" / "new").iterdir())
    assert len(files) == 2
    assert list((tmp_path / "outbox" / "tmp").iterdir()) == []
    assert (tmp_path / "outbox" / "cur").is_dir()
    parsed = [email.message_from_bytes(f.read_bytes()) for f in files]
    assert sorted(p["Delivered-To"] for p in parsed) == ["a@x.example", "b@y.example"]
    assert all(p["Return-Path"] == "<s@c.example>" for p in parsed)
    assert all(f.read_bytes().endswith(MESSAGE) for f in files)


def test_maildir_names_are_unique() -> None:
    names = {maildir_name() for _ in range(1000)}
    assert len(names) == 1000
    assert all("/" not in n and ":" not in n for n in names)


class FakeDns:
    """A dnspython resolver stand-in: answers from a table, raises like dnspython."""

    def __init__(self, table: dict[tuple[str, str], list[object] | Exception]) -> None:
        self.table = table

    async def resolve(self, name: str, rdtype: str) -> list[object]:
        found = self.table.get((name, rdtype), dns.resolver.NoAnswer())  # type: ignore[no-untyped-call]
        if isinstance(found, Exception):
            raise found
        return found


class Mx:
    def __init__(self, preference: int, exchange: str) -> None:
        self.preference = preference
        self.exchange = dns.name.from_text(exchange)


async def test_dns_resolver_orders_mx_and_falls_back_to_the_address() -> None:
    fake = FakeDns(
        {
            ("a.example", "MX"): [Mx(20, "mx2.a.example."), Mx(10, "mx1.a.example.")],
            ("b.example", "AAAA"): [object()],
            ("null.example", "MX"): [Mx(0, ".")],
            ("gone.example", "MX"): dns.resolver.NXDOMAIN(),  # type: ignore[no-untyped-call]
            ("slow.example", "MX"): dns.resolver.LifetimeTimeout(timeout=1.0, errors=[]),  # type: ignore[no-untyped-call]
        }
    )
    resolver = DnsMxResolver(fake)  # type: ignore[arg-type]
    assert await resolver.mx_hosts("a.example") == ["mx1.a.example", "mx2.a.example"]
    assert await resolver.mx_hosts("b.example") == ["b.example"]
    for domain, permanent in (
        ("null.example", True),
        ("gone.example", True),
        ("none.example", True),
        ("slow.example", False),
    ):
        with pytest.raises(DnsFailure) as failure:
            await resolver.mx_hosts(domain)
        assert failure.value.permanent is permanent, domain

"""The dead-destination cache, through real sockets: a next hop on 127.0.0.1 that is down
(it accepts each connection, counts it, and answers 421 or hangs up), then comes back as
the recording aiosmtpd peer. Times are short and configurable (probe_interval)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP

from gateway import metrics
from gateway.delivery import Delivery, DirectMX, Smarthost
from gateway.destinations import Destinations, Refusal, Ticket, next_hop, suspended
from gateway.metrics import Metrics
from gateway.scheduler import RetryPolicy, Scheduler
from gateway.spool import Envelope, Recipient, Spool
from tests.gateway.conftest import PEER_HOST, Peer
from tests.gateway.test_delivery import MESSAGE, FakeMx
from tests.gateway.test_dsn import parse, status_blocks
from tests.gateway.test_end_to_end import GatewayProcess
from tests.gateway.test_metrics import http_get
from tests.gateway.test_scheduler import FAST, SENDER, DkimSeal, message
from tests.support import DOMAIN, Clock, statement
from tests.support import scrape as scrape_gateway

Down = Literal["421", "close", "silent"]


@dataclass
class Downstream:
    """A next hop that is down (``down`` says how) or up (the recording peer)."""

    down: Down | None
    peer: Peer = field(default_factory=Peer)
    refused_at: list[float] = field(default_factory=list)  # accepts while down

    def session(self) -> asyncio.BaseProtocol:
        if self.down is None:
            self.peer.connections += 1
            smtp = SMTP(self.peer, hostname="peer.test", enable_SMTPUTF8=True)
            self.peer.sessions.append(smtp)
            return smtp
        self.refused_at.append(time.monotonic())
        return _Refuser(self.down)

    @property
    def label(self) -> str:
        return f'destination="{PEER_HOST}:{self.peer.port}"'


class _Refuser(asyncio.Protocol):
    def __init__(self, how: Down) -> None:
        self.how = how

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.how == "421":
            transport.write(b"421 4.3.2 Service not available, try later\r\n")
        if self.how != "silent":
            transport.close()


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    hop = Downstream(down="421")
    server = await asyncio.get_running_loop().create_server(hop.session, PEER_HOST, 0)
    hop.peer.port = server.sockets[0].getsockname()[1]
    yield hop
    server.close()


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = Spool.open(tmp_path / "spool")
    yield opened
    await opened.close()


@pytest.fixture
def seal(signing_material: object) -> DkimSeal:
    return DkimSeal(signing_material)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    spool: Spool,
    hop: Downstream,
    seal: DkimSeal,
    *,
    probe_interval: float,
    policy: RetryPolicy = FAST,
    on_recorded: Callable[[Mapping[str, int]], None] | None = None,
    prune_interval: float = 60.0,
) -> AsyncIterator[tuple[Scheduler, Delivery]]:
    delivery = Delivery(
        Smarthost(PEER_HOST, hop.peer.port), local_hostname="gw.test", timeout=5.0,
        per_destination=1, destinations=Destinations(probe_interval=probe_interval),
    )  # fmt: skip
    scheduler = Scheduler(
        spool, delivery, seal, reporting_mta="gw.caisses.example", policy=policy,
        poll_interval=0.05, rng=random.Random(1), destinations=delivery.destinations,
        on_recorded=on_recorded, prune_interval=prune_interval,
    )  # fmt: skip
    scheduler.start()
    try:
        yield scheduler, delivery
    finally:
        await scheduler.stop()
        await delivery.close()


async def until(condition: Callable[[], Awaitable[bool] | bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while True:
            result = condition()
            if await result if isinstance(result, Awaitable) else result:
                return
            await asyncio.sleep(0.01)


async def scrape(delivery: Delivery) -> list[str]:
    m = Metrics()
    m.destinations = delivery.destinations.views
    server = await metrics.serve(m, "127.0.0.1", 0)
    try:
        _, _, body = await http_get(server.sockets[0].getsockname()[1], "/metrics")
    finally:
        server.close()
    return body.splitlines()


@pytest.mark.parametrize("how", ["421", "close"], ids=["421-greeting", "hangs-up"])
async def test_a_dead_destination_gets_one_probe_per_interval_then_its_queue_drains(
    spool: Spool, downstream: Downstream, seal: DkimSeal, how: Down
) -> None:
    downstream.down = how
    interval, count = 0.3, 8
    deferrals: list[int] = []  # what the deferred-recipients counter is told

    def counted(states: Mapping[str, int]) -> None:
        deferrals.append(states["deferred"])

    async with running(spool, downstream, seal, probe_interval=interval, on_recorded=counted) as (
        scheduler,
        d,
    ):
        ids = [await spool.put(Envelope(SENDER, [f"r{i}@x.example"], message(), "t"))
               for i in range(count)]  # fmt: skip
        scheduler.notify()

        async def every_message_tried() -> bool:
            return all(r.last_reply for r in await only_recipients(spool, ids))

        await until(every_message_tried)
        await until(lambda: len(downstream.refused_at) >= 3)
        rcpts = await only_recipients(spool, ids)
        assert len(rcpts) == count
        attempts = sum(r.attempts for r in rcpts)
        connections = len(downstream.refused_at)
        # Without the cache, FAST's 20-50 ms back-off would mean dozens per message.
        assert attempts <= connections <= attempts + 1  # the one probe may be in flight
        assert sum(deferrals) <= connections < len(deferrals)  # held ones are not counted
        gaps = [
            b - a for a, b in zip(downstream.refused_at, downstream.refused_at[1:], strict=False)
        ]
        assert min(gaps) >= interval - 0.05, gaps
        held = [r for r in rcpts if r.attempts == 0]
        assert len(held) >= count - connections
        for r in held:
            assert r.state == "deferred"
            assert r.last_reply.startswith("4.4.1 delivery temporarily suspended: ")

        lines = await scrape(d)
        assert f"sealpost_destination_up{{{downstream.label}}} 0.0" in lines
        assert f"sealpost_destination_deferred_messages{{{downstream.label}}} {count}.0" in lines
        assert gauge(lines, "sealpost_destination_consecutive_failures") >= 2
        assert gauge(lines, "sealpost_destination_oldest_deferred_age_seconds") > 0
        assert not any("x.example" in x for x in lines)  # destinations only, never recipients

        downstream.down = None
        refused = len(downstream.refused_at)
        await downstream.peer.wait_for(count, within=5.0)
        await until(lambda: _depth_is(spool, 0))
        lines = await scrape(d)
    assert sorted(r for m in downstream.peer.messages for r in m.recipients) == sorted(
        f"r{i}@x.example" for i in range(count)
    )
    assert len(downstream.refused_at) == refused
    assert downstream.peer.connections == 1  # the probe's session, then reused
    assert not any(downstream.label in x for x in lines)  # up with nothing deferred


async def test_the_lifetime_still_ends_on_time_for_a_held_message(
    spool: Spool, downstream: Downstream, seal: DkimSeal
) -> None:
    short = RetryPolicy(first=0.02, ceiling=0.05, lifetime=1.0, jitter=0.2)
    # The next probe would be 30 s away: only the lifetime can end the wait this soon.
    async with running(spool, downstream, seal, probe_interval=30.0, policy=short) as (s, _):
        queue_id = await spool.put(Envelope(SENDER, ["a@insurer.example"], message(), "t"))
        s.notify()

        async def bounced() -> bool:
            return await spool.load(queue_id) is None

        await until(bounced, within=5.0)
    (dsn,) = await spool.messages()
    assert dsn.sender == ""
    full = await spool.load(dsn.id)
    assert full is not None
    (failed,) = status_blocks(parse(full.data))[1:]
    assert failed["Final-Recipient"] == "rfc822; a@insurer.example"
    assert failed["Status"] == "4.4.1"
    assert "delivery temporarily suspended" in failed["Diagnostic-Code"]
    assert len(downstream.refused_at) == 1  # the bounce itself waits for the probe too


async def test_a_message_deleted_by_the_queue_tool_leaves_the_destination_counts(
    spool: Spool, downstream: Downstream, seal: DkimSeal
) -> None:
    async with running(spool, downstream, seal, probe_interval=30.0, prune_interval=0.05) as (
        scheduler,
        delivery,
    ):
        kept = await spool.put(Envelope(SENDER, ["a@insurer.example"], message(), "t"))
        deleted = await spool.put(Envelope(SENDER, ["b@insurer.example"], message(), "t"))
        scheduler.notify()
        await until(lambda: [v.deferred for v in delivery.destinations.views()] == [2])
        assert await spool.delete(deleted)  # as `queue delete` does, from another process
        await until(lambda: [v.deferred for v in delivery.destinations.views()] == [1])
        assert delivery.destinations.tracked() == {kept}


async def test_at_most_one_probe_is_in_flight(downstream: Downstream) -> None:
    downstream.down = "silent"  # accepts, never greets: each attempt times out
    delivery = Delivery(
        Smarthost(PEER_HOST, downstream.peer.port), local_hostname="gw.test", timeout=0.3,
        destinations=Destinations(probe_interval=0.05),
    )  # fmt: skip
    try:
        (first,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
        assert first.status == "transient"
        assert first.hold is not None
        assert first.hold.attempted
        await asyncio.sleep(0.1)  # the probe is due
        probe = asyncio.create_task(delivery.deliver("s@c.example", ["p@x.example"], MESSAGE))
        await until(lambda: len(downstream.refused_at) == 2)
        others = await asyncio.gather(
            *(delivery.deliver("s@c.example", [f"r{i}@x.example"], MESSAGE) for i in range(5))
        )
        assert len(downstream.refused_at) == 2  # none of them connected
        for (held,) in others:
            assert held.status == "transient"
            assert held.hold is not None
            assert not held.hold.attempted
            assert held.reply.startswith("4.4.1 delivery temporarily suspended: ")
        (probed,) = await probe
        assert probed.hold is not None
        assert probed.hold.attempted
    finally:
        await delivery.close()


async def test_refusals_of_a_recipient_or_a_message_leave_the_destination_up(
    peer: Peer,
) -> None:
    delivery = Delivery(
        Smarthost(peer.host, peer.port), local_hostname="gw.test", timeout=5.0,
        destinations=Destinations(probe_interval=60.0),
    )  # fmt: skip
    peer.refuse["full@x.example"] = "452 4.2.2 Mailbox full"
    peer.refuse["gone@x.example"] = "550 5.1.1 No such user"
    try:
        results = await delivery.deliver(
            "s@c.example", ["full@x.example", "gone@x.example"], MESSAGE
        )
        assert [o.status for o in results] == ["transient", "permanent"]
        assert all(o.hold is None for o in results)
        peer.fail_next(1, "421 4.3.0 Closing, try later")
        (at_data,) = await delivery.deliver("s@c.example", ["a@x.example"], MESSAGE)
        assert at_data.status == "transient"
        assert at_data.hold is None
        assert [v.state for v in delivery.destinations.views()] in ([], ["up"])
        (ok,) = await delivery.deliver("s@c.example", ["b@x.example"], MESSAGE)
        assert ok.status == "delivered"
        assert ok.destination == f"{PEER_HOST}:{peer.port}"
    finally:
        await delivery.close()


async def test_domains_sharing_an_mx_set_share_its_state(downstream: Downstream) -> None:
    mx = FakeMx({"a.example": [PEER_HOST], "b.example": [PEER_HOST]})
    delivery = Delivery(
        DirectMX(port=downstream.peer.port), resolver=mx, local_hostname="gw.test",
        timeout=5.0, destinations=Destinations(probe_interval=60.0),
    )  # fmt: skip
    try:
        (a,) = await delivery.deliver("s@c.example", ["x@a.example"], MESSAGE)
        (b,) = await delivery.deliver("s@c.example", ["y@b.example"], MESSAGE)
    finally:
        await delivery.close()
    assert a.reply.startswith("4.4.1 127.0.0.1:")
    assert b.reply.startswith("4.4.1 delivery temporarily suspended: 127.0.0.1:")
    assert a.destination == b.destination == f"{PEER_HOST}:{downstream.peer.port}"
    assert len(downstream.refused_at) == 1


async def test_the_running_gateway_probes_a_dead_smarthost_and_shows_it_in_its_metrics(
    tmp_path: Path, downstream: Downstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALPOST_GATEWAY_DELIVERY_PROBE_INTERVAL", "0.5")
    gateway = GatewayProcess(tmp_path, downstream.peer)
    await gateway.start()
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.port, start_tls=False)
        async with client:
            await client.sendmail(f"decomptes@{DOMAIN}", ["m0@example.org"], statement("0"))
            await until(lambda: len(downstream.refused_at) >= 1, within=15.0)
            for i in range(1, 5):
                rcpt = f"m{i}@example.org"
                await client.sendmail(f"decomptes@{DOMAIN}", [rcpt], statement(str(i)))

        async def all_five_held() -> bool:
            page = await scrape_gateway(gateway.metrics_port)
            return f"sealpost_destination_deferred_messages{{{downstream.label}}} 5.0" in page

        await until(all_five_held, within=15.0)
        await until(lambda: len(downstream.refused_at) >= 3, within=15.0)
        page = await scrape_gateway(gateway.metrics_port)
        assert f"sealpost_destination_up{{{downstream.label}}} 0.0" in page.splitlines()
        at = downstream.refused_at
        assert min(b - a for a, b in itertools.pairwise(at)) >= 0.45, at

        downstream.down = None
        received = await downstream.peer.wait_for(5, within=15.0)
        assert sorted(r for m in received for r in m.recipients) == [
            f"m{i}@example.org" for i in range(5)
        ]
        await until(lambda: _no_destination_listed(gateway.metrics_port), within=5.0)
        assert await gateway.terminate() == 0
    finally:
        await gateway.kill_if_running()
    log = gateway.log()
    assert "event=destination_failing" in log
    assert "event=destination_up" in log
    events = [line for line in log.splitlines() if "event=destination" in line]
    assert events
    assert not any("example.org" in line for line in events)  # next hops, not recipients
    assert downstream.peer.commands[-1:] == ["QUIT"]  # its idle session, at shutdown


async def _no_destination_listed(metrics_port: int) -> bool:
    return "{destination=" not in await scrape_gateway(metrics_port)


# -- the cache's own rules, on a clock of our own --------------------------------------


def test_a_failing_destination_is_probed_once_per_interval_and_released_when_up() -> None:
    clock = Clock()
    cache = Destinations(probe_interval=60.0, clock=clock)
    released: list[tuple[str, list[str]]] = []
    cache.subscribe(lambda d, ids: released.append((d, ids)))
    first = cache.admit("mx.example:25")
    assert first == Ticket("mx.example:25", probe=False)
    hold = cache.failed(first, "4.4.1 mx.example: Connection refused")
    assert (hold.until, hold.attempted) == (1060.0, True)

    refusal = cache.admit("mx.example:25")
    assert refusal == Refusal(
        "mx.example:25", "4.4.1 delivery temporarily suspended: mx.example: Connection refused",
        1060.0,
    )  # fmt: skip
    assert cache.recorded("q1", 900.0, "mx.example:25", deferred=True, held=True) is False
    clock.now = 1060.0
    probe = cache.admit("mx.example:25")
    assert probe == Ticket("mx.example:25", probe=True)
    assert isinstance(cache.admit("mx.example:25"), Refusal)  # one probe at a time
    assert cache.failed(probe, "4.4.1 again").until == 1120.0
    (view,) = cache.views()
    assert (view.state, view.failing_since, view.failures, view.deferred) == (
        "failing", 1000.0, 2, 1,
    )  # fmt: skip

    clock.now = 1125.0
    assert cache.admit("mx.example:25") == Ticket("mx.example:25", probe=True)
    probe = Ticket("mx.example:25", probe=True)
    cache.succeeded(probe)
    assert released == [("mx.example:25", ["q1"])]
    assert cache.admit("mx.example:25") == Ticket("mx.example:25", probe=False)
    cache.recorded("q1", 900.0, "mx.example:25", deferred=False, held=False)
    assert cache.views() == []


def test_an_abandoned_probe_frees_the_slot_at_once() -> None:
    clock = Clock()
    cache = Destinations(probe_interval=60.0, clock=clock)
    cache.failed(Ticket("relay:587", probe=False), "4.4.1 relay: timed out")
    clock.now += 60
    probe = cache.admit("relay:587")
    assert probe == Ticket("relay:587", probe=True)
    cache.abandoned(probe)  # cancelled at shutdown: no verdict
    assert cache.admit("relay:587") == Ticket("relay:587", probe=True)


def test_next_hop_names_the_host_set_and_tls_beyond_the_route() -> None:
    assert next_hop(["MX2.example", "mx1.example", "mx2.example"], 25) == (
        "mx1.example,mx2.example:25"
    )
    assert next_hop(["relay"], 587, tls_beyond_route=True) == "relay:587+tls"
    assert next_hop(["mx.example"], 25, requirements={"mta-sts-enforce", "dane"}) == (
        "mx.example:25+dane+mta-sts-enforce"
    )
    assert next_hop(["mx.example"], 25, tls_beyond_route=True, requirements={"dane"}) == (
        "mx.example:25+dane+tls"
    )
    assert suspended("weird") == "4.4.1 delivery temporarily suspended: weird"
    assert suspended("4.7.5 h: TLS required") == (
        "4.7.5 delivery temporarily suspended: h: TLS required"
    )


def gauge(lines: list[str], name: str) -> float:
    (line,) = [x for x in lines if x.startswith(name + "{")]
    return float(line.split()[-1])


async def only_recipients(spool: Spool, ids: list[str]) -> list[Recipient]:
    """The one recipient of each message still in the spool."""
    found = [await spool.load(i) for i in ids]
    return [m.recipients[0] for m in found if m is not None]


async def _depth_is(spool: Spool, depth: int) -> bool:
    return await spool.depth() == depth

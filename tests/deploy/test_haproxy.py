"""Scale-out on an existing engine: HAProxy (TCP mode, PROXY protocol v2, health checks)
in front of two gateway processes, each with its own spool and the same key store, both
relaying to one recording SMTP peer in this test's event loop.

HAProxy connects to the gateways from 127.0.0.2 while the clients connect from 127.0.0.1,
and only 127.0.0.1/32 may relay: a message accepted at all proves the gateway took the
client's address from the PROXY header, not from the socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import pytest

from keys import store as key_store
from keys.__main__ import main as keys_main
from tests.deploy.services import Service, environment, eventually, wait_for_port
from tests.gateway.conftest import Peer, start_peer
from tests.support import DOMAIN, free_port, scrape, statement

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
MESSAGES = 500
CLIENTS = 20
KILL_AFTER = 150  # accepted messages before one gateway is killed
ATTEMPTS = 3  # a sending system retries a message that got no 250
BALANCER_SOURCE = "127.0.0.2"  # HAProxy's side of its connections to the gateways
SMALL_PDF = b"%PDF-1.4\n% statement\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"

pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="HAProxy is not installed")


def gateway_config(
    node: Path, keys: Path, public: Path, relay: int, metrics: int, peer: int
) -> str:
    return f"""
[gateway]
hostname = "{node.name}.test"
shutdown_grace = 5
[relay]
listen = "127.0.0.1:{relay}"
proxy_protocol_timeout = 3
[submission]
listen = ""
[metrics]
listen = "127.0.0.1:{metrics}"
[keys]
store = "{keys}"
public_archive = "{public}"
init_domain = ""
[sealing]
workers = 0
[log]
key = "{node / "log.key"}"
interval = 0.2
[spool]
path = "{node / "spool"}"
[delivery]
route = "smarthost"
smarthost = "127.0.0.1:{peer}"
smarthost_tls = "opportunistic"
first_retry = 1
[[clients]]
name = "batch"
networks = ["127.0.0.1/32"]
sender_domains = ["{DOMAIN}"]
"""


def haproxy_config(front: int, stats: int, backends: list[int]) -> str:
    servers = "\n".join(
        f"    server gw{i} 127.0.0.1:{port} send-proxy-v2 source {BALANCER_SOURCE}"
        " check inter 500ms fall 2 rise 2"
        for i, port in enumerate(backends, start=1)
    )
    return f"""
global
    maxconn 500

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A connection refused by a dead node is tried again on another one.
    retries 2
    option redispatch

listen smtp
    bind 127.0.0.1:{front}
    balance roundrobin
{servers}

listen stats
    mode http
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"""


@dataclass
class Cluster:
    front: int
    stats: int
    gateways: list[Service]
    relays: list[int]
    metrics: list[int]
    peer: Peer
    keys: Path

    def server_states(self) -> dict[str, str]:
        """gw1/gw2 -> UP/DOWN as HAProxy sees them, from its CSV stats."""
        url = f"http://127.0.0.1:{self.stats}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = response.read().decode().splitlines()
        states = {}
        for row in rows:
            cells = row.split(",")
            if len(cells) > 17 and cells[0] == "smtp" and cells[1].startswith("gw"):
                states[cells[1]] = cells[17]
        return states

    async def wait_for_states(self, wanted: dict[str, str], within: float = 10.0) -> None:
        """Until HAProxy's checks put the servers in ``wanted``; fails after ``within``."""

        async def reached() -> bool:
            return await asyncio.to_thread(self.server_states) == wanted

        await eventually(reached, within)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    keys, public = tmp_path / "keys", tmp_path / "public"
    # The store is made once, here; neither gateway ever writes to it (init_domain = "").
    key_store.init_domain(keys, public, DOMAIN)
    peer, peer_server = await start_peer()
    relays, metrics = [free_port(), free_port()], [free_port(), free_port()]
    gateways = []
    for i, (relay, metrics_port) in enumerate(zip(relays, metrics, strict=True), start=1):
        node = tmp_path / f"gw{i}"
        node.mkdir()
        # Each node writes its own statement log, with its own origin and key.
        code = keys_main(
            ["--store", str(keys), "--public", str(public), "log-key",
             "--origin", f"{DOMAIN}/statements/gw{i}", "--out", str(node / "log.key")]
        )  # fmt: skip
        assert code == 0
        config = node / "gateway.toml"
        config.write_text(gateway_config(node, keys, public, relay, metrics_port, peer.port))
        gateways.append(
            Service(
                "gateway",
                [sys.executable, "-m", "gateway", "--config", str(config)],
                node,
                environment(),
            )
        )
    front, stats = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(front, stats, relays))
    haproxy = Service("haproxy", [HAPROXY, "-db", "-f", str(config)], tmp_path, environment())
    try:
        await asyncio.gather(*(g.start(port) for g, port in zip(gateways, relays, strict=True)))
        await haproxy.start(front, within=10)
        await wait_for_port(stats, 10, haproxy)
        yield Cluster(front, stats, gateways, relays, metrics, peer, keys)
    finally:
        await asyncio.gather(haproxy.kill(), *(g.stop() for g in gateways))
        peer_server.close()


@dataclass
class Outcomes:
    accepted: dict[str, float] = field(default_factory=dict)  # marker -> when the 250 came
    failures: list[float] = field(default_factory=list)  # when an attempt failed
    gave_up: list[str] = field(default_factory=list)
    enough: asyncio.Event = field(default_factory=asyncio.Event)


async def send_one(port: int, marker: str) -> bool:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    try:
        async with client:
            _, reply = await client.sendmail(
                f"decomptes@{DOMAIN}", ["membre@example.org"], statement(marker, SMALL_PDF)
            )
    except (aiosmtplib.SMTPException, OSError):
        return False
    return reply.startswith("2.0.0")


async def client_loop(port: int, queue: asyncio.Queue[str], outcomes: Outcomes) -> None:
    while not queue.empty():
        marker = queue.get_nowait()
        for _ in range(ATTEMPTS):
            if await send_one(port, marker):
                outcomes.accepted[marker] = time.monotonic()
                if len(outcomes.accepted) >= KILL_AFTER:
                    outcomes.enough.set()
                break
            outcomes.failures.append(time.monotonic())
            await asyncio.sleep(0.2)
        else:
            outcomes.gave_up.append(marker)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` -> SHA-256 of its content."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def delivered_markers(peer: Peer) -> Counter[str]:
    found = (re.search(rb"^Message-ID: <([^@>]+)@", m.data, re.M) for m in peer.messages)
    return Counter(match[1].decode() for match in found if match)


async def wait_for_empty_queue(metrics_port: int, within: float = 10.0) -> None:
    async def empty() -> bool:
        return "sealpost_queue_depth 0\n" in await scrape(metrics_port)

    await eventually(empty, within)


async def test_one_node_killed_mid_stream_loses_nothing(cluster: Cluster) -> None:
    started = time.monotonic()
    store_before = snapshot(cluster.keys)
    await cluster.wait_for_states({"gw1": "UP", "gw2": "UP"})
    queue: asyncio.Queue[str] = asyncio.Queue()
    for n in range(MESSAGES):
        queue.put_nowait(f"hap-{n:04d}")
    outcomes = Outcomes()
    clients = [
        asyncio.create_task(client_loop(cluster.front, queue, outcomes)) for _ in range(CLIENTS)
    ]
    victim = cluster.gateways[0]
    async with asyncio.timeout(30):
        await outcomes.enough.wait()
        killed_at = time.monotonic()
        await victim.kill()  # SIGKILL with sessions in flight
        await asyncio.gather(*clients)
    sent_at = time.monotonic()
    # HAProxy's health checks took the dead node out.
    await cluster.wait_for_states({"gw1": "DOWN", "gw2": "UP"}, within=5)

    during = [t for t in outcomes.accepted.values() if t >= killed_at]
    failed_during = [t for t in outcomes.failures if t >= killed_at]
    # Clients kept being served by the other node: every message ended with a 250.
    assert outcomes.gave_up == []
    assert len(outcomes.accepted) == MESSAGES
    assert len(during) >= MESSAGES // 2
    # Sessions in flight on the killed node broke (their clients tried again).
    assert failed_during

    # The killed node comes back and its spool drains to the peer: every message that got
    # a 250 arrives, at least once.
    await asyncio.sleep(0.5)  # anything the survivor still had in hand has arrived
    before_restart = len(cluster.peer.messages)
    await victim.start(cluster.relays[0])

    async def all_arrived() -> bool:
        return set(outcomes.accepted) <= set(delivered_markers(cluster.peer))

    await eventually(all_arrived, 30)
    delivered = delivered_markers(cluster.peer)
    assert set(delivered) == set(outcomes.accepted)
    duplicates = sum(count - 1 for count in delivered.values())
    for port in cluster.metrics:
        await wait_for_empty_queue(port)
    print(
        f"\nhaproxy scale-out: accepted={len(outcomes.accepted)} delivered={len(delivered)} "
        f"duplicates={duplicates} failed_attempts_during_outage={len(failed_during)} "
        f"failed_attempts_before={len(outcomes.failures) - len(failed_during)} "
        f"accepted_during_outage={len(during)} outage={sent_at - killed_at:.1f}s "
        f"delivered_after_restart={len(cluster.peer.messages) - before_restart} "
        f"total={time.monotonic() - started:.1f}s"
    )

    # Both nodes worked and logged the client's own address, carried by PROXY, never
    # HAProxy's side of the connection.
    for gateway in cluster.gateways:
        addresses = re.findall(r"event=queued .* client_ip=(\S+)", gateway.log())
        assert addresses, gateway.log()
        assert set(addresses) == {"127.0.0.1"}
        assert f"client_ip={BALANCER_SOURCE}" not in gateway.log()
    # The shared key store was only read.
    assert snapshot(cluster.keys) == store_before
    survivor_metrics = await scrape(cluster.metrics[1])
    received = re.search(r"^sealpost_messages_received_total (\d+)$", survivor_metrics, re.M)
    assert received is not None
    assert int(received[1]) >= len(during)
    # Each node logged every seal it made in its own statement log (tlog-tiles, its own
    # origin): between them, at least one entry per acknowledged message.
    from tlog import note

    sizes = []
    for i in (1, 2):
        directory = cluster.keys.parent / "public" / "log" / f"{DOMAIN}-statements-gw{i}"
        text = (directory / "checkpoint").read_text()
        sizes.append(note.Checkpoint.parse(text.split("\n\n")[0] + "\n").size)
    assert all(size > 0 for size in sizes)
    assert sum(sizes) >= len(outcomes.accepted)

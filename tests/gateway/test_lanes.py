"""Lanes: several SMTP processes on one port, each with its own spool shard, statement log
and metrics port, under one parent that starts, restarts and stops them."""

from __future__ import annotations

import asyncio
import re
import smtplib
from pathlib import Path

from gateway.lanes import lane_settings, spool_paths
from gateway.queue_cli import main as queue_main
from gateway.settings import (
    GatewaySettings,
    LogSettings,
    MetricsSettings,
    Settings,
    SpoolSettings,
)
from tests.gateway.conftest import Peer
from tests.gateway.test_end_to_end import GatewayProcess
from tests.support import alive, child_pids, scrape, statement


def test_each_lane_is_a_node_of_its_own() -> None:
    settings = Settings(
        gateway=GatewaySettings(lanes=3),
        spool=SpoolSettings(path="var/spool"),
        metrics=MetricsSettings(listen="127.0.0.1:9125"),
        log=LogSettings(key="var/log.key"),
    )
    second = lane_settings(settings, 1)
    assert second.spool.path == "var/spool/lane-1"
    assert second.metrics.listen == "127.0.0.1:9126"
    assert second.log.key == "var/log-lane1.key"
    assert (
        lane_settings(Settings(metrics=MetricsSettings(listen="[::1]:9125")), 2).metrics.listen
        == "[::1]:9127"
    )
    assert spool_paths(settings) == [Path(f"var/spool/lane-{i}") for i in range(3)]
    assert spool_paths(Settings()) == [Path("var/spool")]


async def test_two_lanes_share_the_port_and_lose_nothing(tmp_path: Path, peer: Peer) -> None:
    gateway = GatewayProcess(tmp_path, peer)
    gateway.config.write_text(
        gateway.config.read_text().replace("[gateway]", "[gateway]\nlanes = 2", 1)
    )
    await gateway.start()
    try:
        count = 40  # one connection each: the kernel spreads them over the lanes

        def send_all() -> list[str]:
            accepted = []
            for n in range(count):
                with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
                    client.sendmail(
                        "batch@caisses.example", ["member@example.org"], statement(f"lane{n}")
                    )
                    accepted.append(f"lane{n}")
            return accepted

        accepted = await asyncio.to_thread(send_all)
        assert len(accepted) == count
        await peer.wait_for(count, within=30)
        subjects = {
            m.group(1).decode()
            for m in (re.search(rb"^Subject: (\S+)", x.data, re.M) for x in peer.messages)
            if m
        }
        assert subjects == set(accepted)
        # Both lanes took connections and each logged what it sealed, in a log of its own.
        logs = sorted((tmp_path / "var" / "public" / "log").iterdir())
        assert [p.name.rsplit("-", 1)[-1] for p in logs] == ["lane0", "lane1"]
        for lane in (0, 1):
            metrics = await scrape(gateway.metrics_port + lane)
            received = re.search(r"^sealpost_messages_received_total (\d+)$", metrics, re.M)
            assert received is not None
            assert int(received[1]) > 0, f"lane {lane} got no connection"
        # The queue tool reads every shard.
        spools = [tmp_path / "var" / "spool" / f"lane-{i}" for i in (0, 1)]
        assert await asyncio.to_thread(queue_main, ["list"], spools) == 0
    finally:
        code = await gateway.terminate()
    assert code == 0
    for directory in (tmp_path / "var" / "public").glob("log/*"):
        assert (directory / "checkpoint").exists()


async def test_lanes_stop_when_their_parent_is_killed(tmp_path: Path, peer: Peer) -> None:
    gateway = GatewayProcess(tmp_path, peer)
    gateway.config.write_text(
        gateway.config.read_text().replace("[gateway]", "[gateway]\nlanes = 2", 1)
    )
    await gateway.start()
    assert gateway.process is not None
    children = child_pids(gateway.process.pid)
    assert len(children) >= 2
    await gateway.kill()
    async with asyncio.timeout(20):
        while any(alive(pid) for pid in children):  # noqa: ASYNC110 - other processes
            await asyncio.sleep(0.2)

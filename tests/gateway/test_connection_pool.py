"""Pooled sessions through real sockets: RSET before each reuse, QUIT once idle, QUIT at
shutdown. The peer is the recording aiosmtpd server of conftest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.delivery import Delivery, Smarthost
from tests.gateway.conftest import Peer
from tests.gateway.test_delivery import MESSAGE


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the peer signals nothing
            await asyncio.sleep(0.01)


def delivery_to(peer: Peer, *, idle_timeout: float = 30.0) -> Delivery:
    return Delivery(
        Smarthost(peer.host, peer.port), local_hostname="gw.test", timeout=5.0,
        idle_timeout=idle_timeout,
    )  # fmt: skip


async def send(delivery: Delivery, rcpt: str) -> str:
    (outcome,) = await delivery.deliver("s@caisses.example", [rcpt], MESSAGE)
    return outcome.status


async def test_a_reused_session_is_reset_between_messages(peer: Peer) -> None:
    delivery = delivery_to(peer)
    try:
        assert await send(delivery, "a@x.example") == "delivered"
        assert peer.commands == []  # a fresh session needs no RSET
        assert await send(delivery, "b@x.example") == "delivered"
        assert peer.commands == ["RSET"]
        assert await send(delivery, "c@x.example") == "delivered"
        assert peer.commands == ["RSET", "RSET"]
        assert peer.connections == 1
        assert [m.recipients for m in peer.messages] == [
            ["a@x.example"],
            ["b@x.example"],
            ["c@x.example"],
        ]
    finally:
        await delivery.close()


async def test_an_idle_session_is_closed_with_quit_without_new_traffic(peer: Peer) -> None:
    delivery = delivery_to(peer, idle_timeout=0.2)
    try:
        assert await send(delivery, "a@x.example") == "delivered"
        assert peer.open_sessions() == 1
        # Nothing else is sent: the idle timer alone ends the session.
        await until(lambda: peer.commands == ["QUIT"] and peer.open_sessions() == 0)
        assert await send(delivery, "b@x.example") == "delivered"
        assert peer.connections == 2  # the closed session was not offered for reuse
        assert peer.commands == ["QUIT"]
    finally:
        await delivery.close()


async def test_a_session_reused_before_its_idle_time_is_kept(peer: Peer) -> None:
    delivery = delivery_to(peer, idle_timeout=0.3)
    try:
        for rcpt in ("a@x.example", "b@x.example", "c@x.example"):
            assert await send(delivery, rcpt) == "delivered"
            await asyncio.sleep(0.1)
        assert peer.connections == 1
        assert "QUIT" not in peer.commands
        # Its idle time counts from the last message, then it ends.
        await until(lambda: peer.commands[-1:] == ["QUIT"] and peer.open_sessions() == 0)
    finally:
        await delivery.close()


async def test_shutdown_quits_every_idle_session(peer: Peer) -> None:
    delivery = delivery_to(peer, idle_timeout=60.0)
    sent: list[Awaitable[str]] = [send(delivery, f"r{i}@x.example") for i in range(3)]
    peer.data_delay = 0.1  # three transactions at once: three sessions in the pool
    assert await asyncio.gather(*sent) == ["delivered"] * 3
    assert peer.open_sessions() == 3
    await delivery.close()
    assert peer.commands == ["QUIT"] * 3
    await until(lambda: peer.open_sessions() == 0)


async def test_a_session_the_peer_dropped_is_found_dead_by_rset_and_replaced(
    peer: Peer,
) -> None:
    delivery = delivery_to(peer)
    try:
        assert await send(delivery, "a@x.example") == "delivered"
        peer.drop_connections()
        await until(lambda: peer.open_sessions() == 0)
        assert await send(delivery, "b@x.example") == "delivered"
        assert peer.connections == 2
        assert [m.recipients for m in peer.messages] == [["a@x.example"], ["b@x.example"]]
    finally:
        await delivery.close()

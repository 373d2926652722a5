"""Metrics in the Prometheus text format, over a real HTTP socket."""

from __future__ import annotations

import asyncio

from gateway import metrics
from gateway.metrics import Metrics


async def http_get(port: int, path: str, method: str = "GET") -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


async def test_scrape_shows_counters_histogram_and_queue_depth() -> None:
    m = Metrics()
    m.received.inc()
    m.received.inc()
    m.rejected.inc("relay_denied")
    m.rejected.inc('odd"label')
    m.signing_seconds.observe(0.003)
    m.signing_seconds.observe(0.2)

    async def depth() -> int:
        return 42

    m.queue_depth = depth
    server = await metrics.serve(m, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        status, headers, body = await http_get(port, "/metrics")
    finally:
        server.close()
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = body.splitlines()
    assert "sealpost_messages_received_total 2" in lines
    assert 'sealpost_messages_rejected_total{reason="relay_denied"} 1' in lines
    assert 'sealpost_messages_rejected_total{reason="odd\\"label"} 1' in lines
    assert "# TYPE sealpost_signing_seconds histogram" in lines
    assert 'sealpost_signing_seconds_bucket{le="0.0025"} 0' in lines
    assert 'sealpost_signing_seconds_bucket{le="0.005"} 1' in lines
    assert 'sealpost_signing_seconds_bucket{le="+Inf"} 2' in lines
    assert "sealpost_signing_seconds_count 2" in lines
    assert "sealpost_queue_depth 42" in lines
    for name in ("delivered", "deferred", "bounced"):
        assert f"sealpost_recipients_{name}_total 0" in lines


async def test_other_paths_and_methods_are_refused() -> None:
    server = await metrics.serve(Metrics(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await http_get(port, "/"))[0] == "HTTP/1.1 404 Not Found"
        assert (await http_get(port, "/metrics", "POST"))[0] == "HTTP/1.1 405 Method Not Allowed"
    finally:
        server.close()

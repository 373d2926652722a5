"""The signing generation as operations see it: one log line when a domain starts signing
with a generation (at start too), and the generation and certificate expiry on /metrics,
scraped over a real socket from a real key store."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from cryptography import x509

from gateway import metrics as metrics_http
from gateway.metrics import Metrics
from gateway.signing_watch import SigningWatch
from keys import store
from tests.support import scrape

DOMAIN = "caisses.example"


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "signing watch test")
    store.init_domain(tmp_path / "keys", tmp_path / "public", DOMAIN)
    return tmp_path / "keys"


def expiry(keys: Path) -> float:
    active = store.load_domain(keys, DOMAIN).active
    assert active is not None
    pem = active.certificate.pem.encode()
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def series(page: str, name: str) -> dict[str, str]:
    """generation -> value of the metric `name` for DOMAIN."""
    pattern = rf'^{name}{{domain="{DOMAIN}",generation="([^"]+)"}} (\S+)$'
    return dict(re.findall(pattern, page, re.MULTILINE))


async def test_start_and_each_new_generation_give_one_line_and_the_metrics(
    keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealpost.gateway.signing")
    first = store.load_domain(keys, DOMAIN).active
    assert first is not None
    watch = SigningWatch(keys)
    metrics = Metrics()
    metrics.signing = watch.series
    server = await metrics_http.serve(metrics, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    watch.start(interval=3600.0)  # the test calls check() itself
    try:
        page = await scrape(port)
        assert series(page, "sealpost_signing_generation") == {first.id: "1"}
        assert float(
            series(page, "sealpost_signing_certificate_expiry_timestamp_seconds")[first.id]
        ) == pytest.approx(expiry(keys))
        watch.check()  # nothing changed: no second line
        lines = [
            r.getMessage() for r in caplog.records if "event=signing_generation" in r.getMessage()
        ]
        assert len(lines) == 1
        assert lines[0].startswith(
            f"event=signing_generation domain={DOMAIN} generation={first.id} previous=- "
            f"certificate={first.certificate.serial} certificate_expires="
        )

        second = store.rotate(keys, keys.parent / "public", DOMAIN)
        store.activate(keys, keys.parent / "public", DOMAIN, force=True)
        watch.check()
        page = await scrape(port)
    finally:
        await watch.stop()
        server.close()
    # The old generation's series is gone: one generation per domain at any time.
    assert series(page, "sealpost_signing_generation") == {second.id: "1"}
    assert float(
        series(page, "sealpost_signing_certificate_expiry_timestamp_seconds")[second.id]
    ) == pytest.approx(expiry(keys))
    lines = [r.getMessage() for r in caplog.records if "event=signing_generation" in r.getMessage()]
    assert len(lines) == 2
    assert f"generation={second.id} previous={first.id} " in lines[1]

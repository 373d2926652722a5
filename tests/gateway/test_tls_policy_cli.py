"""``sealpost-gateway tls-policy DOMAIN``, run as ops would, against a local DNS server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from gateway import dane
from tests.gateway import local_dns

DOMAIN = "insurer.test"
MX = "mx.insurer.test"
REPO = Path(__file__).parents[2]


def zone() -> local_dns.Zone:
    found = local_dns.Zone(signed={DOMAIN})
    found.add(DOMAIN, "MX", f"10 {MX}.")
    found.add(MX, "A", "192.0.2.25")
    return found


async def tls_policy(tmp_path: Path, dns_port: int, delivery: str = "") -> tuple[int, str]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[delivery]\nroute = "mx"\nresolver = "127.0.0.1:{dns_port}"\n{delivery}'
        f'[spool]\npath = "{tmp_path / "spool"}"\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "tls-policy", DOMAIN,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_a_dane_domain_shows_its_records_per_host(tmp_path: Path) -> None:
    records = zone()
    record = dane.Tlsa(3, 1, 1, bytes(range(32)))
    records.add(dane.tlsa_name(MX), "TLSA", f"3 1 1 {record.data.hex()}")
    async with local_dns.serve(records) as port:
        status, output = await tls_policy(tmp_path, port)
    assert status == 0, output
    assert f"{DOMAIN}: MX {MX}" in output
    assert f"{MX}: TLS required, certificate matching TLSA [dane] 3 1 1 0001020304050607" in output
    assert "at 192.0.2.25" in output


async def test_a_cached_mta_sts_policy_that_rules_out_the_mx_says_mail_waits(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "spool" / "mta-sts"
    cache.mkdir(parents=True)
    cached = {
        "id": "7",
        "fetched_at": time.time(),
        "policy": {"mode": "enforce", "mx": ["mx.moved.test"], "max_age": 86400},
    }
    (cache / f"{DOMAIN}.json").write_text(json.dumps(cached))
    before = (cache / f"{DOMAIN}.json").read_bytes()
    records = zone()
    records.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=7"')
    async with local_dns.serve(records) as port:
        status, output = await tls_policy(tmp_path, port)
    assert status == 1, output
    assert f"skipped: 4.7.5 {MX}: not an MX host of {DOMAIN}'s MTA-STS policy" in output
    assert "mail to this domain is deferred (4.7.5)" in output
    assert (cache / f"{DOMAIN}.json").read_bytes() == before


async def test_without_a_policy_the_mx_gets_opportunistic_tls_and_both_can_be_off(
    tmp_path: Path,
) -> None:
    async with local_dns.serve(zone()) as port:
        status, output = await tls_policy(tmp_path, port)
        status_off, output_off = await tls_policy(tmp_path, port, "mta_sts = false\ndane = false\n")
    assert (status, status_off) == (0, 0)
    assert f"{MX}: opportunistic (STARTTLS if offered, certificate not checked)" in output
    assert "every host: opportunistic; DANE and MTA-STS are off" in output_off

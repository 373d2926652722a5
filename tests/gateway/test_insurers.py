"""The registry of insurers applied by the gateway.

First the rules on a real registry; then the whole gateway as a separate process
(`python -m gateway`), fed over SMTP and delivering over STARTTLS to a real aiosmtpd peer
with a trustme certificate, while `sealpost-orgs` changes the registry under it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosmtplib
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.insurers import RULE_ENDED, RULE_UNREGISTERED, Insurers
from orgs.registry import Registry
from tests.gateway.conftest import Peer
from tests.gateway.test_end_to_end import GatewayProcess
from tests.support import DOMAIN, scrape, statement

ORGS_BIN = Path(sys.executable).parent / "sealpost-orgs"
SENDER = f"decomptes@{DOMAIN}"
INSURER = "mutuelle.example"
MAILBOX = f"decomptes@{INSURER}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.sqlite") as opened:
        opened.add("MUT1", "Mutuelle Une")
        opened.add_mailbox("MUT1", MAILBOX, "Décomptes")
        opened.add("FINI", "Assurance Finie")
        opened.add_mailbox("FINI", "flux@fini.example", "Flux")
        opened.end("FINI")
        yield opened


# ---------------------------------------------------------------------------- the rules


def test_a_statement_may_go_to_registered_mailboxes_and_elsewhere(registry: Registry) -> None:
    insurers = Insurers(registry)
    assert insurers.check_statement([MAILBOX, "Decomptes@Mutuelle.Example"]) == []
    assert insurers.check_statement(["membre@example.org", f"x@sub.{INSURER}"]) == []


def test_a_statement_to_an_unregistered_address_at_an_insurer_names_the_rule(
    registry: Registry,
) -> None:
    [violation] = Insurers(registry).check_statement([MAILBOX, f"typo@{INSURER}"])
    assert violation.rule == RULE_UNREGISTERED
    rejection = violation.rejection()
    assert (rejection.code, rejection.status, rejection.reason) == (
        550,
        "5.7.1",
        "org_unregistered_mailbox",
    )
    assert f"<typo@{INSURER}> is not a registered mailbox of organisation MUT1" in rejection.text
    assert "rule orgs.unregistered" in rejection.text


def test_a_domain_shared_by_two_insurers_names_both(registry: Registry) -> None:
    registry.add("MUT2", "Mutuelle Deux")
    registry.add_mailbox("MUT2", f"soins@{INSURER}", "Soins")
    [violation] = Insurers(registry).check_statement([f"autre@{INSURER}"])
    assert violation.organisations == ("MUT1", "MUT2")
    assert Insurers(registry).check_statement([f"soins@{INSURER}"]) == []


def test_an_ended_insurers_mailbox_is_refused_and_its_domain_keeps_verified_tls(
    registry: Registry,
) -> None:
    insurers = Insurers(registry)
    violation = insurers.ended("FLUX@fini.example")
    assert violation is not None
    assert violation.rule == RULE_ENDED
    assert "organisation FINI, whose convention has ended" in violation.rejection().text
    assert "rule orgs.ended" in violation.rejection().text
    assert insurers.ended(MAILBOX) is None
    assert insurers.tls_required("fini.example")
    assert insurers.tls_required("MUTUELLE.example")
    assert not insurers.tls_required("example.org")
    assert insurers.organisation_of(MAILBOX) == "MUT1"
    assert insurers.organisation_of(f"autre@{INSURER}") is None


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    recipients=st.lists(
        st.sampled_from(
            [MAILBOX, "Decomptes@MUTUELLE.example", f"typo@{INSURER}", "flux@fini.example",
             "autre@fini.example", "membre@example.org", f"x@sub.{INSURER}", "pas une adresse",
             f"<{MAILBOX}>", f"a..b@{INSURER}"]
        ),
        max_size=5,
    )
)  # fmt: skip
def test_a_statement_is_checked_as_ended_then_unregistered_per_recipient(
    registry: Registry, recipients: list[str]
) -> None:
    """check_statement looks each mailbox up once; what it finds is the rules one by one."""
    insurers = Insurers(registry)
    expected = [insurers.ended(r) or insurers.unregistered(r) for r in recipients]
    assert insurers.check_statement(recipients) == [v for v in expected if v is not None]


def test_an_unknown_mode_is_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="refuse, warn"):
        Insurers(registry, "ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the gateway


def orgs(registry: Path, *args: str) -> str:
    """Runs `sealpost-orgs` as ops would; its output."""
    done = subprocess.run(
        [str(ORGS_BIN), "--registry", str(registry), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def send(port: int, recipients: list[str], data: bytes) -> tuple[int, str]:
    """One transaction; the first reply that is not a success (RCPT or end of data), or
    the final 250."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    async with client:
        await client.mail(SENDER)
        for recipient in recipients:
            try:
                await client.rcpt(recipient)
            except aiosmtplib.SMTPRecipientRefused as refused:
                await client.rset()
                return refused.code, refused.message
        try:
            reply = await client.data(data)
        except aiosmtplib.SMTPDataError as refused:
            return refused.code, refused.message
    return reply.code, reply.message


def plain(marker: str) -> bytes:
    return (
        f"From: Caisses Sociales <{SENDER}>\r\nTo: x@{INSURER}\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@{DOMAIN}>\r\n\r\nNo document here.\r\n"
    ).encode()


async def metric(gateway: GatewayProcess, line: str) -> str:
    """The scraped page once it holds `line` (counters move just after the peer's 250)."""
    for _ in range(150):
        scraped = await scrape(gateway.metrics_port)
        if line in scraped:
            return scraped
        await asyncio.sleep(0.1)
    raise AssertionError(f"{line!r} not in the metrics within 15 s:\n{scraped}")


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "orgs" / "registry.sqlite"
    orgs(path, "add", "MUT1", "--name", "Mutuelle Une")
    orgs(path, "mailbox", "add", "MUT1", MAILBOX, "--label", "Décomptes")
    orgs(path, "add", "FINI", "--name", "Assurance Finie")
    orgs(path, "mailbox", "add", "FINI", "flux@fini.example", "--label", "Flux")
    orgs(path, "end", "FINI")
    return path


def insurer_gateway(workdir: Path, peer: Peer, registry: Path, mode: str) -> GatewayProcess:
    """The end-to-end gateway, relaying to `peer` with opportunistic TLS, so only the
    registry can make it verify a certificate."""
    gateway = GatewayProcess(workdir, peer)
    gateway.config.write_text(
        gateway.config.read_text(encoding="utf-8")
        + f'\n[orgs]\nregistry = "{registry}"\nunregistered = "{mode}"\n',
        encoding="utf-8",
    )
    return gateway


@pytest.fixture
def trusting(tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway process trusts the test CA (and nothing else) for verified TLS."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


@pytest.fixture
async def refusing(
    tmp_path: Path, tls_peer: Peer, registry_file: Path
) -> AsyncIterator[GatewayProcess]:
    gateway = insurer_gateway(tmp_path, tls_peer, registry_file, "refuse")
    yield gateway
    await gateway.kill_if_running()


async def test_statements_reach_only_registered_mailboxes_over_verified_tls(
    trusting: None, refusing: GatewayProcess, tls_peer: Peer, registry_file: Path
) -> None:
    await refusing.start()
    code, text = await send(refusing.port, [MAILBOX, "membre@example.org"], statement("ok"))
    assert code == 250, text
    received = await tls_peer.wait_for(2, within=15)
    assert all(r.tls for r in received)
    assert sorted(a for r in received for a in r.recipients) == [MAILBOX, "membre@example.org"]

    code, text = await send(refusing.port, [MAILBOX, f"typo@{INSURER}"], statement("typo"))
    assert code == 550
    assert text.startswith("5.7.1 Statement refused: <typo@mutuelle.example> is not a registered")
    assert "(rule orgs.unregistered)" in text
    # Mail without a statement document to the insurer's other addresses is not the rule's.
    code, _ = await send(refusing.port, [f"accueil@{INSURER}"], plain("plain"))
    assert code == 250

    code, text = await send(refusing.port, ["flux@fini.example"], statement("ended"))
    assert code == 550
    assert "5.7.1 <flux@fini.example> is a mailbox of organisation FINI" in text
    assert "(rule orgs.ended)" in text

    scraped = await metric(refusing, 'sealpost_org_recipients_delivered_total{org="MUT1"} 1')
    assert 'sealpost_messages_rejected_total{reason="org_unregistered_mailbox"} 1' in scraped
    assert 'sealpost_messages_rejected_total{reason="org_ended"} 1' in scraped
    assert await refusing.terminate() == 0
    log = refusing.log()
    assert "reason=org_unregistered_mailbox reply=550" in log
    assert "typo@" not in log  # the reply names the address; the log does not


async def test_a_registry_change_by_ops_applies_to_the_running_gateway(
    trusting: None, refusing: GatewayProcess, tls_peer: Peer, registry_file: Path
) -> None:
    await refusing.start()
    second = f"soins@{INSURER}"
    code, _ = await send(refusing.port, [second], statement("before"))
    assert code == 550
    orgs(registry_file, "mailbox", "add", "MUT1", second, "--label", "Soins")
    code, text = await send(refusing.port, [second], statement("after-add"))
    assert code == 250, text
    [received] = await tls_peer.wait_for(1, within=15)
    assert received.recipients == [second]
    orgs(registry_file, "end", "MUT1")
    code, text = await send(refusing.port, [MAILBOX], statement("after-end"))
    assert code == 550
    assert "organisation MUT1, whose convention has ended" in text


async def test_a_registered_mailbox_whose_certificate_does_not_verify_gets_nothing(
    refusing: GatewayProcess, tls_peer: Peer
) -> None:
    # No `trusting`: the gateway does not know the peer's CA. The member's copy goes with
    # opportunistic TLS; the insurer's waits in the queue rather than go unverified.
    await refusing.start()
    code, text = await send(refusing.port, [MAILBOX, "membre@example.org"], statement("nv"))
    assert code == 250, text
    [received] = await tls_peer.wait_for(1, within=15)
    assert received.recipients == ["membre@example.org"]
    await metric(refusing, 'sealpost_org_recipients_deferred_total{org="MUT1"} 1')
    listed = await refusing.queue_list("--org", "MUT1")
    assert MAILBOX in listed
    assert "membre@example.org" not in listed
    assert re.search(r"deferred .*4\.7\.5 127\.0\.0\.1: TLS required", listed)
    assert "1 message(s) in queue for MUT1 (Mutuelle Une, active)" in listed
    assert "0 queued, 1 deferred, 0 delivered, 0 bounced" in listed
    assert tls_peer.messages == [received]


async def test_warn_mode_delivers_and_counts(
    tmp_path: Path, trusting: None, tls_peer: Peer, registry_file: Path
) -> None:
    gateway = insurer_gateway(tmp_path, tls_peer, registry_file, "warn")
    await gateway.start()
    try:
        code, text = await send(gateway.port, [f"typo@{INSURER}"], statement("warned"))
        assert code == 250, text
        code, text = await send(gateway.port, ["flux@fini.example"], statement("ended"))
        assert code == 250, text
        received = await tls_peer.wait_for(2, within=15)
        assert {a for r in received for a in r.recipients} == {
            f"typo@{INSURER}",
            "flux@fini.example",
        }
        scraped = await metric(gateway, 'sealpost_org_policy_warnings_total{rule="orgs.ended"} 1')
        assert 'sealpost_org_policy_warnings_total{rule="orgs.unregistered"} 1' in scraped
        assert "org_unregistered_mailbox" not in scraped
        assert await gateway.terminate() == 0
    finally:
        await gateway.kill_if_running()
    log = gateway.log()
    assert "event=org_policy_warning rule=orgs.unregistered org=MUT1" in log
    assert f"recipient_domain={INSURER}" in log
    assert "event=org_policy_warning rule=orgs.ended org=FINI" in log


def test_a_transaction_is_checked_against_one_view_of_the_registry(registry: Registry) -> None:
    """The gateway takes a transaction's view at its first RCPT and checks its DATA on it:
    a change in between applies from the next transaction."""
    insurers = Insurers(registry)
    view = insurers.view()
    registry.end("MUT1")
    assert insurers.ended(MAILBOX, view) is None
    assert insurers.check_statement([MAILBOX], view) == []
    [violation] = insurers.check_statement([MAILBOX])
    assert violation.rule == RULE_ENDED

"""The statement log behind a verdict: a real key store, the gateway's own sealing and log
writer, a real RFC 3161 TSA (openssl ts), and the verifier reading what they published.

What insurers get from it: a statement logged before its key was compromised stays
authentic after the revocation; anything sealed once the log exists and absent from it is
never authentic, whatever key signed it and whatever time it states.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.log_writer import LogConfig, LogWriter
from gateway.seal import DocumentRules, seal
from gateway.spool import Envelope, Spool
from keys import store as key_store
from keys.archive import load_archive
from keys.signing import SigningKeys
from tests.checks import crlf
from tests.support import Tsa, document_and_signature, start_tsa, statement
from tests.verifier.conftest import make_settings, serve
from tlog import merkle, note
from tlog.__main__ import main as log_main
from verifier import i18n, log_check
from verifier.app import create_app
from verifier.i18n import translator
from verifier.log_check import LogUnavailable
from verifier.report import DkimStatus, DocStatus, Verdict
from verifier.serialize import report_json
from verifier.settings import Limits
from verifier.trust import Trust
from verifier.verify import verify_email, verify_pair

DOMAIN = "caisses.example"
ORIGIN = f"{DOMAIN}/statements/gw1"

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsa]:
    yield from start_tsa(tmp_path_factory.mktemp("tsa"))


@dataclass
class Fund:
    """The fund's side: its key store, one gateway node's spool and statement log."""

    store: Path
    public: Path
    spool: Spool
    writer: LogWriter
    log_dir: Path

    def keys(self) -> SigningKeys:
        return SigningKeys(self.store, check_interval=0)

    async def send(self, marker: str, now: dt.datetime | None = None, logged: bool = True) -> bytes:
        """Seal a statement as the gateway does; logged like the gateway logs it, or made
        outside the gateway (a thief with a copy of the keys) when `logged` is False."""
        material = self.keys().material(DOMAIN)
        sealed = seal(crlf(statement(marker)), material, DocumentRules(), now)
        if logged:
            await self.spool.put(
                Envelope(f"a@{DOMAIN}", ["m@example.org"], sealed.data, log_entry=sealed.entry)
            )
            await self.writer.integrate()
        return sealed.data

    def trust(self) -> Trust:
        return Trust(load_archive(self.public), self.public)


@pytest.fixture
async def fund(tmp_path: Path, tsa: Tsa, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fund]:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "log test passphrase")
    store, public = tmp_path / "keys", tmp_path / "public"
    # The keys have been signing for two hours, the log for one.
    now = dt.datetime.now(dt.UTC)
    key_store.init_domain(store, public, DOMAIN, now=now - dt.timedelta(hours=2))
    signer_text, verifier_text = note.generate_key(ORIGIN)
    record = key_store.add_log(
        store,
        public,
        ORIGIN,
        verifier_text,
        tsa_root=tsa.ca_pem.read_text(),
        now=now - dt.timedelta(hours=1),
    )
    spool = Spool.open(tmp_path / "spool")
    config = LogConfig(
        directory=public / record.path,
        signer=note.Signer.from_text(signer_text),
        tsa_url=tsa.url,
        tsa_roots=(tsa.ca_pem.read_bytes(),),
        stamp_interval=0.0,  # every checkpoint kept and stamped: each test's own
    )
    writer = LogWriter(spool, config)
    try:
        yield Fund(store, public, spool, writer, public / record.path)
    finally:
        await writer.stop()
        await spool.close()


async def test_a_logged_statement_is_authentic_with_a_proof_anyone_can_check(
    fund: Fund,
) -> None:
    await fund.send("first")
    data = await fund.send("second")
    report = verify_email(data, fund.trust(), Limits())
    assert report.verdict is Verdict.AUTHENTIC
    assert report.log is not None
    assert report.log.status == "logged"
    proof = report.log.proof
    assert proof is not None
    assert (proof.origin, proof.index) == (ORIGIN, 1)
    assert proof.logged_at is not None
    assert abs(proof.logged_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    # Offline, with nothing but RFC 9162 and the archive's key: the entry's leaf is in the
    # signed checkpoint.
    opened = note.open_note(proof.checkpoint.encode(), [note.Verifier.from_text(_log_key(fund))])
    checkpoint = note.Checkpoint.parse(opened.text)
    leaf = merkle.leaf_hash(proof.entry.encode())
    hashes = [base64.b64decode(h) for h in proof.proof]
    assert merkle.verify_inclusion(leaf, proof.index, checkpoint.size, hashes, checkpoint.root)
    # The checkpoint's RFC 3161 token verifies with openssl alone.
    history = fund.log_dir / "checkpoints"
    assert (history / str(checkpoint.size)).read_bytes() == proof.checkpoint.encode()
    verified = _openssl_ts_verify(
        history / str(checkpoint.size), history / f"{checkpoint.size}.tsr", _tsa_ca(fund)
    )
    assert b"Verification: OK" in verified.stdout, verified.stderr
    # The JSON report the API gives carries all of it: `sealpost-log report` checks it.
    document = report_json(report, translator("en"), "en")
    saved = fund.public.parent / "report.json"
    saved.write_text(json.dumps(document))
    archive = str(fund.public / "archive.json")
    assert log_main(["report", str(saved), "--archive", archive]) == 0
    document["log"]["index"] = 0
    saved.write_text(json.dumps(document))
    assert log_main(["report", str(saved), "--archive", archive]) == 1


async def test_a_statement_logged_before_its_key_was_compromised_stays_authentic(
    fund: Fund,
) -> None:
    data = await fund.send("before-compromise")
    await asyncio.sleep(1.2)  # the compromise comes after the TSA's time, to the second
    _revoke_active(fund, compromised_at=dt.datetime.now(dt.UTC))
    report = verify_email(data, fund.trust(), Limits())
    assert report.verdict is Verdict.AUTHENTIC
    assert {(c.status, c.reason) for c in report.dkim} == {
        (DkimStatus.PASS, "logged_before_compromise")
    }
    assert report.documents[0].status is DocStatus.VALID
    assert "warning_logged_before_compromise" in report.warnings


async def test_the_log_never_vouches_for_headers_the_seal_does_not_cover(fund: Fund) -> None:
    """A revoked key's signature that the log saves is held to the same header rules."""
    data = await fund.send("headers")
    await asyncio.sleep(1.2)
    _revoke_active(fund, compromised_at=dt.datetime.now(dt.UTC))
    forged = b"Return-Path: <x>\rReply-To: <rib@evil.example>\r\r\n" + data
    report = verify_email(forged, fund.trust(), Limits())
    assert report.verdict is not Verdict.AUTHENTIC
    assert "bare_cr" in report.message.defects


async def test_a_forgery_with_the_stolen_keys_is_never_authentic_whatever_its_date(
    fund: Fund,
) -> None:
    await fund.send("genuine")  # the log exists and is in use
    # A thief with a copy of the active keys, before anyone noticed: no revocation yet, a
    # signing time stated in the past (after the log started). Only the log tells it apart.
    backdated = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    forged = await fund.send("forged", now=backdated, logged=False)
    report = verify_email(forged, fund.trust(), Limits())
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_not_logged"
    assert report.log is not None
    assert report.log.status == "not_logged"
    # Once the fund revokes the keys, still not authentic.
    _revoke_active(fund, compromised_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    assert verify_email(forged, fund.trust(), Limits()).verdict is Verdict.TAMPERED


@pytest.mark.parametrize("removal", ["entry", "index"])
async def test_a_statement_whose_entry_was_removed_is_not_authentic(
    fund: Fund, removal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sealed (and logged) ten minutes ago: long enough for any copy of the log to have it.
    data = await fund.send("to-remove", now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    assert verify_email(data, fund.trust(), Limits()).verdict is Verdict.AUTHENTIC
    if removal == "entry":
        # The entry changed in its bundle: it no longer hashes to the signed tree.
        for bundle in (fund.log_dir / "tile" / "entries").rglob("*"):
            if bundle.is_file():
                bundle.write_bytes(bundle.read_bytes().replace(b"sealed 20", b"sealed 19"))
    else:
        for shard in (fund.log_dir / "index").iterdir():
            shard.write_text("")
    monkeypatch.setattr(log_check, "_stores", {})  # a verifier that has not read it yet
    report = verify_email(data, fund.trust(), Limits())
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_not_logged"


async def test_a_document_and_its_p7s_uploaded_alone_keep_the_log_rules(fund: Fund) -> None:
    """Without its email, a document is judged by the same log: a forgery made with the
    stolen keys is no more authentic for arriving as a PDF and its .p7s."""
    genuine = await fund.send("genuine")
    forged = await fund.send("forged", logged=False)
    # Checked ten minutes later: long enough for any copy of the log to hold a genuine seal.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    report = verify_pair(*document_and_signature(genuine), fund.trust(), now=later)
    assert report.verdict is Verdict.AUTHENTIC
    assert report.log is not None
    assert report.log.status == "logged"
    report = verify_pair(*document_and_signature(forged), fund.trust(), now=later)
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_not_logged"


async def test_a_statement_sealed_before_the_log_existed_keeps_today_s_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "log test passphrase")
    store, public = tmp_path / "keys", tmp_path / "public"
    key_store.init_domain(store, public, DOMAIN)
    material = SigningKeys(store).material(DOMAIN)
    early = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    data = seal(crlf(statement("old")), material, DocumentRules(), early).data
    _, verifier_text = note.generate_key(ORIGIN)
    key_store.add_log(store, public, ORIGIN, verifier_text)
    (public / key_store.log_directory(ORIGIN)).mkdir(parents=True)
    (public / key_store.log_directory(ORIGIN) / "checkpoint").write_text("x")
    report = verify_email(data, Trust(load_archive(public), public), Limits())
    assert report.log is not None
    assert report.log.status == "before_log"
    assert "warning_sealed_before_log" in report.warnings


async def test_a_seal_of_the_last_minutes_not_yet_logged_gets_try_again_not_a_verdict(
    fund: Fund,
) -> None:
    """This host's copy of the log follows the gateway's by seconds: no "tampered" for a
    statement that may simply not have arrived in it yet."""
    await fund.send("genuine")
    fresh = await fund.send("fresh", logged=False)
    with pytest.raises(LogUnavailable, match="not in the log yet"):
        verify_email(fresh, fund.trust(), Limits())


async def test_a_witness_cosignature_is_checked_and_shown(fund: Fund) -> None:
    data = await fund.send("witnessed")
    witness_signer, witness_key = note.generate_key("mutuelle-azur.example/witness")
    key_store.add_witness(fund.store, fund.public, witness_key)
    report = verify_email(data, fund.trust(), Limits())
    assert report.log is not None
    assert report.log.proof is not None
    size = report.log.proof.tree_size
    signed = fund.log_dir / "checkpoints" / str(size)
    text = note.open_note(signed.read_bytes(), [note.Verifier.from_text(_log_key(fund))]).text
    line = note.cosign(text, note.Signer.from_text(witness_signer), 1_796_000_000)
    stranger = note.cosign(text, note.Signer.from_text(note.generate_key("other")[0]), 1)
    signed.write_bytes(signed.read_bytes() + line.encode() + stranger.encode())
    proof = verify_email(data, fund.trust(), Limits()).log
    assert proof is not None
    assert proof.proof is not None
    assert proof.proof.cosigners == ("mutuelle-azur.example/witness (2026-11-30 00:53:20 UTC)",)
    assert proof.proof.other_signatures == ("other",)


async def test_a_log_the_archive_lists_but_that_cannot_be_read_gives_no_verdict(
    fund: Fund,
) -> None:
    data = await fund.send("unreadable-log")
    (fund.log_dir / "checkpoint").unlink()
    with pytest.raises(LogUnavailable):
        verify_email(data, fund.trust(), Limits())


def _openssl_ts_verify(data: Path, token: Path, ca: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(data), "-in", str(token), "-CAfile", str(ca)],
        capture_output=True,
        timeout=30,
        check=False,
    )


def _log_key(fund: Fund) -> str:
    (log,) = load_archive(fund.public).logs
    return log.key


def _tsa_ca(fund: Fund) -> Path:
    path = fund.public.parent / "tsa-ca.pem"
    path.write_text(load_archive(fund.public).tsa_roots[0])
    return path


def _revoke_active(fund: Fund, compromised_at: dt.datetime) -> None:
    domain = key_store.load_domain(fund.store, DOMAIN)
    generation = domain.active
    assert generation is not None
    for ident in (generation.rsa.selector, generation.ed25519.selector):
        key_store.revoke(
            fund.store, fund.public, ident, compromised_at=compromised_at, reason="stolen"
        )
    key_store.revoke(
        fund.store,
        fund.public,
        generation.certificate.serial,
        compromised_at=compromised_at,
        reason="stolen",
    )


async def test_the_page_says_when_the_log_certified_the_statement(fund: Fund) -> None:
    """For the claims officer, one line under the documents; the proof itself with the
    technical details."""
    data = await fund.send("on-the-page")
    report = verify_email(data, fund.trust(), Limits())
    assert report.log is not None
    assert report.log.proof is not None
    logged_at = report.log.proof.logged_at
    assert logged_at is not None
    with serve(create_app(make_settings(fund.public))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            files = {"file": ("statement.eml", data, "message/rfc822")}
            page = (await client.post("/verify", files=files, params={"lang": "en"})).text
    summary = page.index('id="log-summary"')
    assert summary < page.index('<details id="technical">') < page.index('id="log-time"')
    assert f"Entered in the statement log on {i18n.when(logged_at, 'en')}" in page[summary:]


async def test_the_verifier_serves_the_logs_read_only(fund: Fund) -> None:
    await fund.send("served")
    prefix = "/log/" + key_store.log_directory(ORIGIN).removeprefix("log/")
    with serve(create_app(make_settings(fund.public))) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            checkpoint = await client.get(f"{prefix}/checkpoint")
            assert checkpoint.status_code == 200
            assert checkpoint.headers["content-type"].startswith("text/plain")
            assert checkpoint.content == (fund.log_dir / "checkpoint").read_bytes()
            tile = await client.get(f"{prefix}/tile/0/000.p/1")
            assert tile.status_code == 200
            assert tile.headers["content-type"] == "application/octet-stream"
            assert len(tile.content) == 32
            for path in ("/log/../archive.json", "/log/%2e%2e/archive.json", f"{prefix}/.lock"):
                assert (await client.get(path)).status_code == 404
            # A statement too fresh to be in this copy of the log: try again, no verdict.
            fresh = await fund.send("fresh", logged=False)
            answer = await client.post(
                "/api/v1/verify", content=fresh, headers={"Content-Type": "message/rfc822"}
            )
            assert answer.status_code == 503
            assert answer.headers["Retry-After"] == "60"
            assert answer.json()["error"] == "log_unavailable"


async def test_a_checkpoint_s_signatures_are_checked_once_per_version(fund: Fund) -> None:
    """Public files only: the same checkpoint bytes under the same keys are not verified
    again for every statement; another checkpoint (or a new cosignature) is."""
    first = await fund.send("once")
    second = await fund.send("twice")
    log_check._opened_note.cache_clear()
    checkpoints = set()
    for data in (first, second, first, second):
        report = verify_email(data, fund.trust(), Limits())
        assert report.verdict is Verdict.AUTHENTIC
        assert report.log is not None
        assert report.log.proof is not None
        checkpoints.add(report.log.proof.checkpoint)
    info = log_check._opened_note.cache_info()
    assert (info.misses, info.hits) == (len(checkpoints), 4 - len(checkpoints))


def _carrying(marker: str, genuine: bytes, own_pdf: bool = False) -> bytes:
    """A message of the thief's own, carrying a genuine statement's document and .p7s
    (taken from a statement the fund did send and log) beside its own words, and with
    `own_pdf` a PDF of the thief's for seal() to sign. The genuine PDF travels as
    application/octet-stream so that seal() leaves it be; the verifier sniffs it."""
    name, document, signature = document_and_signature(genuine)
    pdf = base64.encodebytes(document).replace(b"\n", b"\r\n").decode()
    p7s = base64.encodebytes(signature).replace(b"\n", b"\r\n").decode()
    own = (
        '--sep\r\nContent-Type: application/pdf; name="nouveau-rib.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="nouveau-rib.pdf"\r\n\r\n'
        + base64.encodebytes(b"%PDF-1.4\n% forged\n%%EOF\n").replace(b"\n", b"\r\n").decode()
        if own_pdf
        else ""
    )
    return (
        f"From: Caisses Sociales <decomptes@{DOMAIN}>\r\nTo: membre@example.org\r\n"
        f"Subject: {marker}\r\nMessage-ID: <{marker}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="sep"\r\n\r\n'
        "--sep\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Nouveau RIB : payez sur FR76 0000 0000 0000.\r\n"
        f"{own}"
        f'--sep\r\nContent-Type: application/octet-stream; name="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{pdf}'
        f'--sep\r\nContent-Type: application/pkcs7-signature; name="{name}.p7s"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}.p7s"\r\n\r\n{p7s}'
        "--sep--\r\n"
    ).encode()


async def test_a_logged_seal_carried_along_does_not_log_a_forgery_beside_it(
    fund: Fund,
) -> None:
    """Every seal of the upload must be in the log, not just one: a thief with a copy of
    the active keys signs a message of their own (DKIM, or a document's .p7s) and puts a
    genuine, logged statement's document and .p7s beside it. The genuine seal's entry
    proves nothing about the thief's."""
    genuine = await fund.send("genuine", now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20))
    backdated = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    material = fund.keys().material(DOMAIN)
    # DKIM by the stolen keys over the thief's words and the genuine pair.
    forged = seal(
        _carrying("forged-dkim", genuine), material, DocumentRules(content_types=()), backdated
    ).data
    report = verify_email(forged, fund.trust(), Limits())
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_not_logged"
    # A forged document and its .p7s beside the genuine pair, the whole also DKIM-signed.
    forged = seal(
        _carrying("forged-pdf", genuine, own_pdf=True), material, DocumentRules(), backdated
    ).data
    report = verify_email(forged, fund.trust(), Limits())
    assert report.verdict is Verdict.TAMPERED
    assert report.reason == "reason_not_logged"
    assert [d.status for d in report.documents] == [DocStatus.VALID, DocStatus.VALID]
    # Each seal alone: the genuine one is authentic, a logged one is never enough for two.
    assert verify_email(genuine, fund.trust(), Limits()).verdict is Verdict.AUTHENTIC

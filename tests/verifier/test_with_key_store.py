"""The whole chain with the real parts: a key store, its exported public archive, the
gateway's sealing code, and a running verifier that follows the archive as ops rotate,
withdraw and revoke keys, without a restart."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.seal import DocumentRules, seal
from keys import store
from keys.signing import SigningKeys
from tests.verifier.conftest import make_settings, reference_message, serve, tamper_document
from verifier.app import create_app

pytestmark = pytest.mark.usefixtures("no_network")

DOMAIN = "caisses.example"


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "verifier test passphrase")
    store_dir, public = tmp_path / "keys", tmp_path / "public"
    store.init_domain(store_dir, public, DOMAIN)
    return store_dir, public


@pytest.fixture
def verifier(keys: tuple[Path, Path]) -> Iterator[httpx.Client]:
    with (
        serve(create_app(make_settings(keys[1]))) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client


def check(client: httpx.Client, raw: bytes) -> dict[str, Any]:
    response = client.post(
        "/api/v1/verify", content=raw, headers={"Content-Type": "message/rfc822"}
    )
    assert response.status_code == 200
    report: dict[str, Any] = response.json()
    return report


def sealed_now(store_dir: Path) -> bytes:
    material = SigningKeys(store_dir).material(DOMAIN)
    return seal(reference_message(), material, DocumentRules()).data


def test_a_statement_sealed_with_the_store_s_keys_is_authentic(
    keys: tuple[Path, Path], verifier: httpx.Client
) -> None:
    raw = sealed_now(keys[0])
    assert check(verifier, raw)["verdict"] == "authentic"
    assert check(verifier, tamper_document(raw))["verdict"] == "tampered"
    root = verifier.get("/root.pem").content
    assert root == (keys[1] / "root.pem").read_bytes()


def test_rotation_withdrawal_and_revocation_reach_the_running_verifier(
    keys: tuple[Path, Path], verifier: httpx.Client
) -> None:
    store_dir, public = keys
    old = sealed_now(store_dir)
    first = store.load_domain(store_dir, DOMAIN).active
    assert first is not None

    store.rotate(store_dir, public, DOMAIN)
    store.activate(store_dir, public, DOMAIN, force=True)
    # Forced: the runbook's 7 days after retirement are not waited here.
    store.withdraw(store_dir, public, [first.rsa.selector, first.ed25519.selector], force=True)
    store.export_public(store_dir, public)
    new = sealed_now(store_dir)

    report = check(verifier, old)
    assert report["verdict"] == "authentic"  # a withdrawn key still proves old mail
    assert {d["key"]["state"] for d in report["dkim"]} == {"withdrawn"}
    assert check(verifier, new)["verdict"] == "authentic"

    store.revoke(
        store_dir,
        public,
        first.certificate.serial,
        compromised_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
        reason="key-compromise",
    )
    report = check(verifier, old)
    assert report["verdict"] == "tampered"
    assert report["reason"] == "reason_revoked"
    assert report["documents"][0]["status"] == "revoked"
    assert check(verifier, new)["verdict"] == "authentic"

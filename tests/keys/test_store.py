"""The key store on disk: layout and file modes, encryption at rest, the lock, crash
safety and the audit log."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from keys import pki, store
from keys.lifecycle import Refused, State

DOMAIN = "caisses.example"
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
PASSPHRASE = "correct horse battery staple"
KEYS_BIN = Path(sys.executable).parent / "sealpost-keys"


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", PASSPHRASE)
    return tmp_path / "keys", tmp_path / "public"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != store.AUDIT_FILE
    }


def test_init_lays_out_a_private_store(paths: tuple[Path, Path]) -> None:
    store_dir, public = paths
    result = store.init_domain(store_dir, public, DOMAIN, now=NOW)
    assert result.created
    assert result.created_root
    assert result.created_secret is None  # the passphrase came from the environment
    directories = [store_dir, *(p for p in store_dir.rglob("*") if p.is_dir())]
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert len(directories) == 5  # store, root, domains, domains/<d>, domains/<d>/<gen>
    assert all(mode(d) == 0o700 for d in directories), [(d, oct(mode(d))) for d in directories]
    assert all(mode(f) == 0o600 for f in files), [(f, oct(mode(f))) for f in files]
    assert {p.name for p in files} == {
        "state.json", "audit.log", "lock", "root-ca.key.pem",
        "dkim-rsa.key.pem", "dkim-ed25519.key.pem", "cms.key.pem",
    }  # fmt: skip
    assert not list(store_dir.rglob(".*.tmp"))
    generation = result.domain.generations[0]
    assert generation.id == "202611"
    assert generation.all_in(State.ACTIVE)
    assert [c.state for c in generation.rsa.history] == [State.PENDING, State.ACTIVE]


def test_the_root_key_is_always_encrypted_and_the_others_by_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", PASSPHRASE)
    plain, encrypted = tmp_path / "plain", tmp_path / "encrypted"
    store.init_domain(plain, tmp_path / "p1", DOMAIN, now=NOW)
    store.init_domain(encrypted, tmp_path / "p2", DOMAIN, encrypt_all=True, now=NOW)
    for directory, others_encrypted in [(plain, False), (encrypted, True)]:
        root = (directory / store.ROOT_KEY_FILE).read_bytes()
        assert root.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(root, password=None)
        serialization.load_pem_private_key(root, password=PASSPHRASE.encode())
        for path in (directory / "domains").rglob("*.pem"):
            assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED") == others_encrypted


def test_a_second_domain_reuses_the_root_ca(paths: tuple[Path, Path]) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    root_before = store.load_state(store_dir).root
    second = store.init_domain(store_dir, public, "mutuelle.example", org="Autre", now=NOW)
    assert second.created
    assert not second.created_root
    state = store.load_state(store_dir)
    assert state.root == root_before
    assert [d.name for d in state.domains] == [DOMAIN, "mutuelle.example"]
    cert = x509.load_pem_x509_certificate(second.domain.generations[0].certificate.pem.encode())
    assert root_before is not None
    root = x509.load_pem_x509_certificate(root_before.certificate_pem.encode())
    assert cert.issuer == root.subject
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Autre"


def test_init_refuses_an_existing_domain_unless_exist_ok(paths: tuple[Path, Path]) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    before = snapshot(store_dir)
    with pytest.raises(Refused, match="already initialised"):
        store.init_domain(store_dir, public, DOMAIN, now=NOW)
    again = store.init_domain(store_dir, public, DOMAIN, exist_ok=True, now=NOW)
    assert not again.created
    assert snapshot(store_dir) == before


def test_a_wrong_passphrase_is_a_clear_store_error(
    paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "not the passphrase")
    with pytest.raises(store.StoreError, match="wrong passphrase or damaged file"):
        store.rotate(store_dir, public, DOMAIN, now=NOW)


def test_operations_on_a_missing_store_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(store.StoreError, match="no key store"):
        store.rotate(missing, tmp_path / "public", DOMAIN, now=NOW)
    with pytest.raises(store.StoreError, match="no key store"):
        store.load_state(missing)
    assert not missing.exists()


def test_a_held_lock_refuses_a_second_change_at_once(paths: tuple[Path, Path]) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    before = snapshot(store_dir)
    busy = rf"\(pid {os.getpid()}\) is changing"
    with store.locked(store_dir), pytest.raises(store.StoreBusy, match=busy):
        store.rotate(store_dir, public, DOMAIN, now=NOW)
    assert snapshot(store_dir) == before
    store.rotate(store_dir, public, DOMAIN, now=NOW)  # the lock is released


def test_two_concurrent_rotations_one_wins_one_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "SEALPOST_KEYS_PASSPHRASE": PASSPHRASE}
    args = [str(KEYS_BIN), "--store", str(tmp_path / "keys"), "--public", str(tmp_path / "pub")]
    subprocess.run(
        [*args, "init", "--domain", DOMAIN], env=env, check=True, capture_output=True, timeout=30
    )
    runs = [
        subprocess.Popen(
            [*args, "rotate", "--domain", DOMAIN],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    results = [(run.wait(timeout=30), run.communicate(timeout=30)) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0
    assert codes[1] in (3, 6)  # busy if they overlapped, else "already has a pending"
    refused = next(err for code, (_out, err) in results if code != 0)
    assert (
        "is changing the store" in refused or "already has a pending generation 202611b" in refused
    ), refused
    domain = store.load_domain(tmp_path / "keys", DOMAIN)
    assert [g.id for g in domain.generations] == ["202611", "202611b"]


def test_a_rotation_waiting_on_the_lock_in_another_process_is_refused(
    paths: tuple[Path, Path],
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    with store.locked(store_dir):
        run = subprocess.run(
            [str(KEYS_BIN), "--store", str(store_dir), "--public", str(public),
             "rotate", "--domain", DOMAIN],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert run.returncode == 6
    assert f"another sealpost-keys command (pid {os.getpid()})" in run.stderr
    assert "nothing was done" in run.stderr


@pytest.mark.parametrize("failing_target", ["state.json", "dkim-rsa.key.pem", "archive.json"])
def test_a_crash_between_write_and_rename_leaves_the_old_store(
    paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, failing_target: str
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    state_before = (store_dir / "state.json").read_bytes()
    listing_before = store.load_state(store_dir)
    real_replace = os.replace
    failures: list[object] = []

    def replace_failing_once(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == failing_target and not failures:
            failures.append(dst)
            raise OSError(5, "Input/output error (injected)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_once)
    # A failed export comes after the commit: ops are told the change is saved.
    expected = store.StoreError if failing_target == "archive.json" else OSError
    with pytest.raises(expected, match="injected"):
        store.rotate(store_dir, public, DOMAIN, now=NOW)
    assert failures
    monkeypatch.setattr(os, "replace", real_replace)

    if failing_target == "archive.json":
        # The state was committed; only the export failed: the next command refreshes it.
        assert store.load_domain(store_dir, DOMAIN).pending is not None
    else:
        assert (store_dir / "state.json").read_bytes() == state_before
        assert store.load_state(store_dir) == listing_before
    assert not list(store_dir.rglob(".*.tmp"))
    assert not list(public.rglob(".*.tmp"))
    # The store keeps working after the crash.
    store.export_public(store_dir, public, now=NOW)
    if failing_target != "archive.json":
        store.rotate(store_dir, public, DOMAIN, now=NOW)
    domain = store.load_domain(store_dir, DOMAIN)
    assert [g.id for g in domain.generations] == ["202611", "202611b"]


def test_the_audit_log_records_operations_and_never_key_material(
    paths: tuple[Path, Path],
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    pending = store.rotate(store_dir, public, DOMAIN, now=NOW)
    with pytest.raises(Refused):
        store.activate(store_dir, public, DOMAIN, now=NOW)
    store.activate(store_dir, public, DOMAIN, force=True, now=NOW)
    store.revoke(
        store_dir,
        public,
        pending.certificate.serial,
        compromised_at=NOW,
        reason="lost laptop",
        now=NOW,
    )
    lines = [json.loads(line) for line in (store_dir / "audit.log").read_text().splitlines()]
    assert [(r["operation"], r["outcome"]) for r in lines] == [
        ("init", "ok"),
        ("rotate", "ok"),
        ("activate", "refused"),
        ("activate", "ok"),
        ("revoke", "ok"),
    ]
    assert lines[1]["keys"] == ["s202611br", "s202611be", pending.certificate.serial]
    assert "propagation time" in lines[2]["error"]
    assert lines[4]["reason"] == "lost laptop"
    assert all({"at", "user", "pid"} <= set(r) for r in lines)

    log = (store_dir / "audit.log").read_bytes()
    assert PASSPHRASE.encode() not in log
    state = store.load_state(store_dir)
    for domain in state.domains:
        for generation in domain.generations:
            assert generation.rsa.public_key.encode() not in log
            for item in generation.items:
                key = store.read_private_key(store_dir, item.key_file, None)
                for form in private_forms(key):
                    assert form not in log
    assert b"PRIVATE KEY" not in log


def private_forms(key: pki.PrivateKey) -> list[bytes]:
    """The encodings a leaked private key could take: PKCS#8 DER and PEM, the base64 body
    on one line and its first PEM line, and the raw (Ed25519) or traditional form."""
    none = serialization.NoEncryption()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, none)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)
    body = base64.b64encode(der)
    forms = [der, pem, body, body[:64]]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw
        forms.append(key.private_bytes(*raw, none))
    else:
        traditional = serialization.PrivateFormat.TraditionalOpenSSL
        forms.append(key.private_bytes(serialization.Encoding.DER, traditional, none))
        forms.append(key.private_bytes(serialization.Encoding.PEM, traditional, none))
    return forms

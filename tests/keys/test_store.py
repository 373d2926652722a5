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
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from keys import pki, store
from keys.lifecycle import Generation, Refused, State

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
    # Read now: activate and revoke destroy these files.
    keys = [read_all_private_keys(store_dir)]
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
        ("destroy", "ok"),  # the retired generation, before activate reports
        ("activate", "ok"),
        ("destroy", "ok"),  # the revoked certificate and its retired DKIM siblings
        ("revoke", "ok"),
    ]
    assert lines[1]["keys"] == ["s202611br", "s202611be", pending.certificate.serial]
    assert "propagation time" in lines[2]["error"]
    assert lines[6]["reason"] == "lost laptop"
    assert all({"at", "user", "pid"} <= set(r) for r in lines)

    log = (store_dir / "audit.log").read_bytes()
    assert PASSPHRASE.encode() not in log
    state = store.load_state(store_dir)
    assert len(keys[0]) == 6
    for domain in state.domains:
        for generation in domain.generations:
            assert generation.rsa.public_key.encode() not in log
    for key in keys[0].values():
        for form in private_forms(key):
            assert form not in log
    assert b"PRIVATE KEY" not in log


def read_all_private_keys(store_dir: Path) -> dict[str, pki.PrivateKey]:
    """Every DKIM and certificate private key the store still has, by relative path."""
    state = store.load_state(store_dir)
    items = [i for d in state.domains for g in d.generations for i in g.items]
    return {
        i.key_file: store.read_private_key(store_dir, i.key_file, None)
        for i in items
        if (store_dir / i.key_file).exists()
    }


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


# --- private keys out of service are destroyed ---------------------------------------

HOUR = dt.timedelta(hours=1)


def key_files(generation: Generation) -> list[str]:
    return [item.key_file for item in generation.items]


def audit_lines(store_dir: Path, operation: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (store_dir / "audit.log").read_text().splitlines()]
    return [r for r in lines if r["operation"] == operation]


def forget_destruction(store_dir: Path) -> None:
    """state.json as a store made before keys were destroyed wrote it: no such field."""
    document = json.loads((store_dir / "state.json").read_text())
    for domain in document["domains"]:
        for generation in domain["generations"]:
            for item in [*generation["dkim"], generation["certificate"]]:
                del item["key_destroyed_at"]
    (store_dir / "state.json").write_text(json.dumps(document))


def test_activation_destroys_the_retired_generation_s_private_keys(
    paths: tuple[Path, Path],
) -> None:
    store_dir, public = paths
    first = store.init_domain(store_dir, public, DOMAIN, now=NOW).domain.generations[0]
    second = store.rotate(store_dir, public, DOMAIN, now=NOW + HOUR)
    retired_keys = read_all_private_keys(store_dir)
    retired_keys = {f: k for f, k in retired_keys.items() if f in key_files(first)}
    assert len(retired_keys) == 3

    result = store.activate(store_dir, public, DOMAIN, force=True, now=NOW + 2 * HOUR)

    assert result.destroyed == _ids(first)
    assert not any((store_dir / f).exists() for f in key_files(first))
    for relative in key_files(second):
        assert mode(store_dir / relative) == 0o600
        store.read_private_key(store_dir, relative, None)
    store.read_private_key(store_dir, store.ROOT_KEY_FILE, PASSPHRASE.encode())
    domain = store.load_domain(store_dir, DOMAIN)
    retired, active = domain.generations
    assert {i.key_destroyed_at for i in retired.items} == {NOW + 2 * HOUR}
    assert {i.key_destroyed_at for i in active.items} == {None}

    [line] = audit_lines(store_dir, "destroy")
    assert line["outcome"] == "ok"
    assert line["after"] == "activate"
    assert line["keys"] == result.destroyed
    assert line["files"] == key_files(first)
    assert line["already_absent"] == []
    log = (store_dir / "audit.log").read_bytes()
    for key in retired_keys.values():
        assert not any(form in log for form in private_forms(key))


def test_destruction_overwrites_the_bytes_before_unlinking(paths: tuple[Path, Path]) -> None:
    """A second hard link keeps the inode alive: it must hold zeros, not the key."""
    store_dir, public = paths
    first = store.init_domain(store_dir, public, DOMAIN, now=NOW).domain.generations[0]
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    links = {}
    for relative in key_files(first):
        original = store_dir / relative
        links[relative] = (store_dir.parent / original.name, original.stat().st_size)
        os.link(original, links[relative][0])
    store.activate(store_dir, public, DOMAIN, force=True, now=NOW)
    for link, size in links.values():
        assert size > 100
        assert link.read_bytes() == bytes(size)


def test_revoking_destroys_the_revoked_key_and_the_siblings_it_retires(
    paths: tuple[Path, Path],
) -> None:
    store_dir, public = paths
    active = store.init_domain(store_dir, public, DOMAIN, now=NOW).domain.generations[0]
    pending = store.rotate(store_dir, public, DOMAIN, now=NOW)

    # A pending key: only its own file goes; its generation's others stay pending.
    result = store.revoke(store_dir, public, pending.ed25519.selector, compromised_at=NOW,
                          reason="copied", now=NOW + HOUR)  # fmt: skip
    assert result.destroyed == [pending.ed25519.selector]
    assert not (store_dir / pending.ed25519.key_file).exists()
    assert (store_dir / pending.rsa.key_file).exists()
    assert (store_dir / pending.certificate.key_file).exists()

    # An active key: its generation stops signing, so all three files go.
    result = store.revoke(store_dir, public, active.certificate.serial, compromised_at=NOW,
                          reason="copied", now=NOW + HOUR)  # fmt: skip
    assert result.was_active
    assert sorted(result.destroyed) == sorted(_ids(active))
    assert not any((store_dir / f).exists() for f in key_files(active))
    state_items = store.load_domain(store_dir, DOMAIN).generations[0].items
    assert [i.state for i in state_items] == [State.RETIRED, State.RETIRED, State.REVOKED]
    assert {i.key_destroyed_at for i in state_items} == {NOW + HOUR}
    assert [r["after"] for r in audit_lines(store_dir, "destroy")] == ["revoke", "revoke"]
    assert (store_dir / store.ROOT_KEY_FILE).exists()


def _ids(generation: Generation) -> list[str]:
    return [generation.rsa.selector, generation.ed25519.selector, generation.certificate.serial]


def test_any_store_change_sweeps_a_leftover_key_of_an_old_store(
    paths: tuple[Path, Path],
) -> None:
    """A store from before this rule, or a crash between the commit and the destruction:
    the key is retired in state.json but its file is still there."""
    store_dir, public = paths
    first = store.init_domain(store_dir, public, DOMAIN, now=NOW).domain.generations[0]
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    leftover = store_dir / first.ed25519.key_file
    saved = leftover.read_bytes()
    store.activate(store_dir, public, DOMAIN, force=True, now=NOW)
    leftover.write_bytes(saved)
    forget_destruction(store_dir)

    old = store.load_domain(store_dir, DOMAIN)  # the old format still loads
    assert {i.key_destroyed_at for g in old.generations for i in g.items} == {None}

    store.rotate(store_dir, public, DOMAIN, now=NOW + HOUR)

    assert not leftover.exists()
    retired = store.load_domain(store_dir, DOMAIN).generations[0]
    assert {i.key_destroyed_at for i in retired.items} == {NOW + HOUR}
    line = audit_lines(store_dir, "destroy")[-1]
    assert (line["after"], line["keys"]) == ("rotate", [first.ed25519.selector])
    assert line["already_absent"] == [first.rsa.selector, first.certificate.serial]
    # Nothing left: the next change records nothing more.
    store.withdraw(store_dir, public, [first.rsa.selector], force=True, now=NOW + 2 * HOUR)
    assert len(audit_lines(store_dir, "destroy")) == 2


def test_destroying_never_changes_the_public_archive(paths: tuple[Path, Path]) -> None:
    store_dir, public = paths
    first = store.init_domain(store_dir, public, DOMAIN, now=NOW).domain.generations[0]
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    saved = {f: (store_dir / f).read_bytes() for f in key_files(first)}
    store.activate(store_dir, public, DOMAIN, force=True, now=NOW)
    for relative, data in saved.items():
        (store_dir / relative).write_bytes(data)
    forget_destruction(store_dir)
    before = snapshot(Path(store.export_public(store_dir, public, now=NOW)[-1]).parent)

    result = store.destroy(store_dir, DOMAIN, first.id, now=NOW + HOUR)

    assert [d.ident for d in result.destroyed] == _ids(first)
    assert all(d.was_present for d in result.destroyed)
    assert snapshot(Path(store.export_public(store_dir, public, now=NOW)[-1]).parent) == before
    archive = json.loads((public / "archive.json").read_text())
    assert first.rsa.public_key in [k["public_key"] for k in archive["dkim_keys"]]
    assert first.certificate.pem in [c["pem"] for c in archive["certificates"]]
    assert "key_destroyed_at" not in (public / "archive.json").read_text()


def test_destroy_refuses_active_and_pending_generations(paths: tuple[Path, Path]) -> None:
    store_dir, public = paths
    active = store.init_domain(store_dir, public, DOMAIN, now=NOW).domain.generations[0]
    pending = store.rotate(store_dir, public, DOMAIN, now=NOW)
    before = snapshot(store_dir)
    with pytest.raises(Refused, match=r"generation 202611 of caisses\.example is active"):
        store.destroy(store_dir, DOMAIN, active.id, now=NOW)
    with pytest.raises(Refused, match=r"generation 202611b of caisses\.example is pending"):
        store.destroy(store_dir, DOMAIN, pending.id, now=NOW)
    with pytest.raises(store.NotFound, match="no generation '202612'"):
        store.destroy(store_dir, DOMAIN, "202612", now=NOW)
    assert snapshot(store_dir) == before
    assert [r["outcome"] for r in audit_lines(store_dir, "destroy")] == ["refused"] * 3


def test_a_key_file_that_resists_is_reported_and_the_others_are_recorded(
    paths: tuple[Path, Path],
) -> None:
    store_dir, public = paths
    first = store.init_domain(store_dir, public, DOMAIN, now=NOW).domain.generations[0]
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    resisting = store_dir / first.certificate.key_file
    resisting.unlink()
    resisting.mkdir()  # cannot be opened for writing, even by root

    with pytest.raises(store.StoreError, match="the activate is saved, but could not destroy"):
        store.activate(store_dir, public, DOMAIN, force=True, now=NOW)

    retired = store.load_domain(store_dir, DOMAIN).generations[0]
    assert retired.all_in(State.RETIRED)  # committed before the destruction
    assert [i.key_destroyed_at for i in retired.items] == [NOW, NOW, None]
    [line] = audit_lines(store_dir, "destroy")
    assert line["outcome"] == "failed"
    assert line["keys"] == [first.rsa.selector, first.ed25519.selector]
    resisting.rmdir()
    result = store.destroy(store_dir, DOMAIN, first.id, now=NOW + HOUR)
    assert [(d.ident, d.was_present) for d in result.destroyed] == [
        (first.certificate.serial, False)
    ]


def test_a_damaged_state_cannot_make_a_sweep_destroy_the_root_key(
    paths: tuple[Path, Path],
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    document = json.loads((store_dir / "state.json").read_text())
    document["domains"][0]["generations"][0]["certificate"]["key_file"] = store.ROOT_KEY_FILE
    (store_dir / "state.json").write_text(json.dumps(document))
    root_key = (store_dir / store.ROOT_KEY_FILE).read_bytes()
    with pytest.raises(store.StoreError, match=r"refusing to destroy 'root/root-ca\.key\.pem'"):
        store.activate(store_dir, public, DOMAIN, force=True, now=NOW)
    assert (store_dir / store.ROOT_KEY_FILE).read_bytes() == root_key

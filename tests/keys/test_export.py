"""The public archive: read back by keys.archive, complete, certificates that chain to
root.pem with the right key usages, and no private key bytes anywhere."""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from keys import store
from keys.archive import ARCHIVE_FILE, ROOT_FILE, load_archive
from keys.lifecycle import State
from tests.keys.test_store import private_forms

DOMAIN = "caisses.example"
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
PASSPHRASE = "export test passphrase"


@pytest.fixture
def store_with_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A store that went through every state: init, rotate, activate, rotate, withdraw,
    revoke, in two domains."""
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", PASSPHRASE)
    keys, public = tmp_path / "keys", tmp_path / "public"
    store.init_domain(keys, public, DOMAIN, now=NOW)
    store.rotate(keys, public, DOMAIN, now=NOW + HOUR)
    store.activate(keys, public, DOMAIN, now=NOW + 50 * HOUR)
    store.withdraw(keys, public, ["s202611r", "s202611e"], force=True, now=NOW + 60 * HOUR)
    store.rotate(keys, public, DOMAIN, now=NOW + 61 * HOUR)
    store.revoke(keys, public, "s202611cr", compromised_at=NOW + 61 * HOUR, reason="test leak",
                 now=NOW + 62 * HOUR)  # fmt: skip
    store.init_domain(keys, public, "mutuelle.example", now=NOW + 63 * HOUR)
    return keys, public


def test_the_archive_reads_back_with_every_key_and_its_history(
    store_with_history: tuple[Path, Path],
) -> None:
    keys, public = store_with_history
    archive = load_archive(public)
    assert archive.domains == {DOMAIN, "mutuelle.example"}
    assert archive.generated_at == NOW + 63 * HOUR
    assert len(archive.roots) == 1
    assert len(archive.dkim_keys) == 8
    assert len(archive.certificates) == 4

    first = archive.dkim_key(DOMAIN, "s202611r")
    assert first is not None
    assert [(c.state, c.at) for c in first.history] == [
        ("pending", NOW), ("active", NOW), ("retired", NOW + 50 * HOUR),
        ("withdrawn", NOW + 60 * HOUR),
    ]  # fmt: skip
    assert first.entered("active") == NOW
    revoked = archive.dkim_key(DOMAIN, "s202611cr")
    assert revoked is not None
    assert revoked.state == "revoked"
    assert revoked.revocation is not None
    assert revoked.revocation.reason == "test leak"
    assert revoked.revocation.compromised_at == NOW + 61 * HOUR

    state = store.load_state(keys)
    for domain in state.domains:
        for generation in domain.generations:
            for key in generation.dkim:
                entry = archive.dkim_key(domain.name, key.selector)
                assert entry is not None
                assert entry.public_key == key.public_key  # exactly what DNS has
                assert entry.dns_txt() == f"v=DKIM1; k={key.algorithm}; p={key.public_key}"
                assert entry.generation == generation.id
            cert = x509.load_pem_x509_certificate(generation.certificate.pem.encode())
            der = cert.public_bytes(serialization.Encoding.DER)
            published = archive.certificate(hashlib.sha256(der).hexdigest())
            assert published is not None
            assert published.serial == generation.certificate.serial
            assert published.state == generation.certificate.state
            assert published.not_before == cert.not_valid_before_utc
    assert (public / ROOT_FILE).read_text() == archive.roots[0].pem


def test_export_public_writes_world_readable_files_into_any_directory(
    store_with_history: tuple[Path, Path], tmp_path: Path
) -> None:
    keys, _ = store_with_history
    elsewhere = tmp_path / "for-the-verifier"
    written = store.export_public(keys, elsewhere, now=NOW + 70 * HOUR)
    assert sorted(p.name for p in written) == [ARCHIVE_FILE, ROOT_FILE]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load_archive(elsewhere).generated_at == NOW + 70 * HOUR
    assert sorted(p.name for p in elsewhere.iterdir()) == [ARCHIVE_FILE, ROOT_FILE]


def test_the_export_contains_no_private_key_bytes(store_with_history: tuple[Path, Path]) -> None:
    keys, public = store_with_history
    exported = [(p, p.read_bytes()) for p in public.iterdir()]
    assert len(exported) == 2
    state = store.load_state(keys)
    assert state.root is not None
    items = [i for d in state.domains for g in d.generations for i in g.items]
    assert len(items) == 3 * 4
    # Generation 202611 (retired) and s202611cr (revoked) have no private key left.
    destroyed = [i.key_file for i in items if i.key_destroyed_at is not None]
    assert len(destroyed) == 3 + 1
    assert not any((keys / relative).exists() for relative in destroyed)
    files = [state.root.key_file]
    files += [i.key_file for i in items if i.key_destroyed_at is None]
    checked = 0
    for relative in files:
        key = store.read_private_key(keys, relative, PASSPHRASE.encode())
        encrypted_file = (keys / relative).read_bytes()
        for form in [*private_forms(key), encrypted_file]:
            for path, content in exported:
                assert form not in content, f"{relative} leaked into {path.name}"
            checked += 1
    assert checked >= 9 * 5
    for path, content in exported:
        assert b"PRIVATE KEY" not in content, path


def test_certificates_verify_with_openssl_and_have_the_expected_usages(
    store_with_history: tuple[Path, Path], tmp_path: Path
) -> None:
    _, public = store_with_history
    archive = load_archive(public)
    # The store's clock is injected: check the chain at that time, not the machine's.
    at_time = str(int((NOW + 70 * HOUR).timestamp()))
    for published in archive.certificates:
        pem_file = tmp_path / f"{published.serial}.pem"
        pem_file.write_text(published.pem)
        run = subprocess.run(
            ["openssl", "verify", "-attime", at_time, "-CAfile", str(public / ROOT_FILE),
             str(pem_file)],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"{pem_file}: OK"
        text = subprocess.run(
            ["openssl", "x509", "-in", str(pem_file), "-noout", "-text"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        assert "Digital Signature, Non Repudiation" in text
        assert "E-mail Protection" in text
        assert "CA:FALSE" in text
        cert = x509.load_pem_x509_certificate(published.pem.encode())
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature
        assert usage.content_commitment
        assert not usage.key_cert_sign
        assert not usage.key_encipherment
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
        validity = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert dt.timedelta(days=360) < validity < dt.timedelta(days=400)
        assert "Caisses Sociales de Monaco" in cert.subject.rfc4514_string()
    # Revoking the DKIM key s202611cr left its generation's certificate pending.
    assert sorted(c.state for c in archive.certificates) == [
        State.ACTIVE, State.ACTIVE, State.PENDING, State.RETIRED
    ]  # fmt: skip

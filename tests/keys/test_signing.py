"""SigningKeys: the gateway's view of the store. It serves the active generation, notices
a rotation on disk (at most one stat a second), and its certificate makes CMS signatures
that `openssl cms -verify` accepts against the exported root."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from keys import store
from keys.archive import ROOT_FILE
from keys.signing import NoActiveKey, SigningKeys
from tests.support import Clock

DOMAIN = "caisses.example"
PASSPHRASE = "signing test passphrase"


def active_generation(keys: Path) -> str:
    active = store.load_domain(keys, DOMAIN).active
    assert active is not None
    return active.id


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", PASSPHRASE)
    keys, public = tmp_path / "keys", tmp_path / "public"
    store.init_domain(keys, public, DOMAIN)
    return keys, public


def test_material_is_the_active_generation(paths: tuple[Path, Path]) -> None:
    keys, _ = paths
    material = SigningKeys(keys).material("Caisses.Example.")
    generation = store.load_domain(keys, DOMAIN).active
    assert generation is not None
    assert material.domain == DOMAIN
    assert material.generation == generation.id
    assert material.rsa_selector == generation.rsa.selector
    assert material.ed25519_selector == generation.ed25519.selector
    assert format(material.certificate.serial_number, "x") == generation.certificate.serial
    assert material.certificate.public_key() == material.certificate_key.public_key()
    assert material.rsa_key.key_size == 2048
    (root,) = material.chain
    assert material.certificate.issuer == root.subject
    assert SigningKeys(keys).domains() == frozenset({DOMAIN})


def test_a_rotation_reaches_a_running_signing_keys_within_the_interval(
    paths: tuple[Path, Path],
) -> None:
    keys, public = paths
    clock = Clock()
    signing = SigningKeys(keys, clock=clock)
    first = signing.material(DOMAIN)
    assert signing.material(DOMAIN) is first  # cached, not re-parsed

    store.rotate(keys, public, DOMAIN)
    store.activate(keys, public, DOMAIN, force=True)
    store.init_domain(keys, public, "mutuelle.example")
    clock.now += 0.5
    assert signing.material(DOMAIN) is first  # not even a stat within the second
    assert signing.domains() == frozenset({DOMAIN})
    clock.now += 0.6
    second = signing.material(DOMAIN)
    assert second.generation == active_generation(keys)
    assert second.generation != first.generation
    assert second.rsa_selector != first.rsa_selector
    assert signing.domains() == frozenset({DOMAIN, "mutuelle.example"})


def test_no_active_key_after_the_active_key_is_revoked(paths: tuple[Path, Path]) -> None:
    keys, public = paths
    clock = Clock()
    signing = SigningKeys(keys, clock=clock)
    material = signing.material(DOMAIN)
    store.revoke(keys, public, material.ed25519_selector,
                 compromised_at=dt.datetime.now(dt.UTC), reason="test")  # fmt: skip
    clock.now += 2
    with pytest.raises(NoActiveKey, match=r"caisses\.example has no active signing key"):
        signing.material(DOMAIN)
    assert signing.domains() == frozenset({DOMAIN})  # still ours: the gateway answers 451
    with pytest.raises(NoActiveKey, match=r"no domain other\.example"):
        signing.material("other.example")


def test_no_store_means_no_active_key(tmp_path: Path) -> None:
    signing = SigningKeys(tmp_path / "missing")
    with pytest.raises(NoActiveKey, match="no key store"):
        signing.material(DOMAIN)
    assert signing.domains() == frozenset()


def test_an_encrypted_store_needs_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", PASSPHRASE)
    keys = tmp_path / "keys"
    store.init_domain(keys, tmp_path / "public", DOMAIN, encrypt_all=True)
    assert SigningKeys(keys).material(DOMAIN).domain == DOMAIN  # from the environment
    assert SigningKeys(keys, PASSPHRASE.encode()).material(DOMAIN).domain == DOMAIN
    with pytest.raises(NoActiveKey, match="wrong passphrase"):
        SigningKeys(keys, b"wrong").material(DOMAIN)
    monkeypatch.delenv("SEALPOST_KEYS_PASSPHRASE")
    with pytest.raises(NoActiveKey, match="no passphrase"):
        SigningKeys(keys).material(DOMAIN)


def test_readers_tolerate_concurrent_rotations(paths: tuple[Path, Path]) -> None:
    keys, public = paths
    signing = SigningKeys(keys, check_interval=0)
    errors: list[BaseException] = []
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.add(signing.material(DOMAIN).generation)
            except BaseException as exc:
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            store.rotate(keys, public, DOMAIN)
            store.activate(keys, public, DOMAIN, force=True)
    finally:
        done.set()
        reader.join(timeout=10)
    assert not errors
    assert seen
    assert signing.material(DOMAIN).generation == active_generation(keys)
    assert len({g.id for g in store.load_domain(keys, DOMAIN).generations}) == 4


def test_a_cms_signature_with_the_active_certificate_verifies_with_openssl(
    paths: tuple[Path, Path], tmp_path: Path
) -> None:
    keys, public = paths
    material = SigningKeys(keys).material(DOMAIN)
    document = b"%PDF-1.4\n" + bytes(range(256)) * 100  # binary, like a statement
    signature = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(document)
        .add_signer(material.certificate, material.certificate_key, hashes.SHA256())
        .add_certificate(material.chain[0])
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )
    doc, p7s = tmp_path / "decompte-123.pdf", tmp_path / "decompte-123.pdf.p7s"
    doc.write_bytes(document)
    p7s.write_bytes(signature)

    def openssl_verify(content: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(p7s),
             "-content", str(content), "-CAfile", str(public / ROOT_FILE), "-purpose", "any",
             "-out", "/dev/null"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip

    run = openssl_verify(doc)
    assert run.returncode == 0, run.stderr
    assert "Verification successful" in run.stderr
    altered = tmp_path / "altered.pdf"
    altered.write_bytes(document.replace(b"PDF-1.4", b"PDF-1.5"))
    assert openssl_verify(altered).returncode != 0


def test_a_state_read_just_before_an_activation_still_gives_signing_keys(
    paths: tuple[Path, Path],
) -> None:
    """The state it holds names the generation the activation then retires and destroys:
    the files are gone, so it must look at the new state rather than fail (451)."""
    keys, public = paths
    clock = Clock()
    signing = SigningKeys(keys, clock=clock)
    assert signing.domains() == frozenset({DOMAIN})  # the state is read, no key yet
    old = active_generation(keys)
    store.rotate(keys, public, DOMAIN)
    store.activate(keys, public, DOMAIN, force=True)
    assert not list((keys / "domains" / DOMAIN / old).glob("*.pem"))

    material = signing.material(DOMAIN)  # within the second: no stat would be due
    assert material.generation == active_generation(keys) != old

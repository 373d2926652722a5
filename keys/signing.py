"""What the gateway needs to seal: the active signing material of a domain.

`SigningMaterial` is the contract between keys/ and gateway/. `SigningKeys` loads it from
a key store and notices a change on disk (a rotation), so a running gateway picks up a
new active generation without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keys import secrets, store
from keys.lifecycle import StoreState


class NoActiveKey(Exception):
    """The store has no active generation for the domain (or no such domain)."""


@dataclass(frozen=True)
class SigningMaterial:
    domain: str
    generation: str
    rsa_selector: str
    rsa_key: rsa.RSAPrivateKey
    ed25519_selector: str
    ed25519_key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate
    certificate_key: ec.EllipticCurvePrivateKey
    # Issuer certificates up to and including the root, included in each CMS signature.
    chain: tuple[x509.Certificate, ...]


class SigningKeys:
    """The active signing material of every domain in a key store, for the gateway.

    It never takes the store's lock: operations replace ``state.json`` by rename after
    writing the key files it names, so any state read here is complete and its files
    exist. Parsed keys are cached; the state file's (inode, mtime) is checked at most once
    per `check_interval` seconds, and a change drops the cache, so a rotation reaches a
    running gateway within about a second and a steady state costs no I/O per message.
    Safe to share between threads.
    """

    def __init__(
        self,
        store_dir: Path,
        passphrase: bytes | None = None,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store_dir = store_dir
        self._passphrase = passphrase
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._stamp: tuple[int, int] | None = None
        self._state: StoreState | None = None
        self._materials: dict[str, SigningMaterial] = {}

    def material(self, domain: str) -> SigningMaterial:
        name = domain.strip().lower().rstrip(".")
        with self._lock:
            state = self._refresh()
            cached = self._materials.get(name)
            if cached is not None:
                return cached
            material = self._load_current(state, name)
            self._materials[name] = material
            return material

    def _load_current(self, state: StoreState, name: str) -> SigningMaterial:
        """An activation commits the new state, then destroys the retired keys: a state
        read just before it names files that may be gone by now. Such a state has been
        replaced on disk, so look again (a few times: rotations may follow each other)."""
        for _ in range(3):
            try:
                return self._load(state, name)
            except NoActiveKey:
                self._checked_at = None
                fresh = self._refresh()
                if fresh is state:
                    raise
                state = fresh
        return self._load(state, name)

    def domains(self) -> frozenset[str]:
        """Every domain of the store, including one that has no active key right now (the
        gateway answers 451 for it rather than treat it as a foreign domain)."""
        with self._lock:
            try:
                state = self._refresh()
            except NoActiveKey:
                return frozenset()
            return frozenset(d.name for d in state.domains)

    def _refresh(self) -> StoreState:
        now = self._clock()
        if (
            self._state is not None
            and self._checked_at is not None
            and now - self._checked_at < self._check_interval
        ):
            return self._state
        path = store.state_path(self.store_dir)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NoActiveKey(f"no key store at {self.store_dir}") from None
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._state is None or stamp != self._stamp:
            try:
                self._state = store.load_state(self.store_dir)
            except store.StoreError as exc:
                raise NoActiveKey(str(exc)) from exc
            self._stamp = stamp
            self._materials.clear()
        self._checked_at = now
        return self._state

    def _load(self, state: StoreState, name: str) -> SigningMaterial:
        domain = state.domain(name)
        if domain is None:
            raise NoActiveKey(f"the key store has no domain {name}")
        generation = domain.active
        if generation is None:
            raise NoActiveKey(
                f"{name} has no active signing key (revoked, or a pending generation is "
                "waiting for activation)"
            )
        if state.root is None:
            raise NoActiveKey("the key store has no root certificate")
        passphrase = self._passphrase
        if passphrase is None and state.encrypt_all:
            try:
                passphrase = secrets.require_passphrase(self.store_dir)
            except secrets.SecretError as exc:
                raise NoActiveKey(str(exc)) from exc
        try:
            rsa_key = store.read_private_key(self.store_dir, generation.rsa.key_file, passphrase)
            ed_key = store.read_private_key(self.store_dir, generation.ed25519.key_file, passphrase)
            cms_key = store.read_private_key(
                self.store_dir, generation.certificate.key_file, passphrase
            )
        except store.StoreError as exc:
            raise NoActiveKey(f"cannot load the signing keys of {name}: {exc}") from exc
        if not (
            isinstance(rsa_key, rsa.RSAPrivateKey)
            and isinstance(ed_key, ed25519.Ed25519PrivateKey)
            and isinstance(cms_key, ec.EllipticCurvePrivateKey)
        ):
            raise NoActiveKey(f"the key files of {name} {generation.id} hold unexpected key types")
        return SigningMaterial(
            domain=name,
            generation=generation.id,
            rsa_selector=generation.rsa.selector,
            rsa_key=rsa_key,
            ed25519_selector=generation.ed25519.selector,
            ed25519_key=ed_key,
            certificate=x509.load_pem_x509_certificate(generation.certificate.pem.encode("ascii")),
            certificate_key=cms_key,
            chain=(x509.load_pem_x509_certificate(state.root.certificate_pem.encode("ascii")),),
        )

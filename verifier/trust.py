"""The public archive, parsed once per version into what the checks need.

`TrustSource` wraps keys.archive.ArchiveWatcher: a new export on disk gives a new `Trust`
on the next request, without a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from keys import pki
from keys.archive import ArchiveWatcher, PublicArchive, PublicCertificate, PublicDkimKey

# What is derived from certificates is kept per certificate; a hostile stream of fresh
# certificates must not grow memory without bound.
_DERIVED_MAX = 1024

T = TypeVar("T")


class Trust:
    def __init__(self, archive: PublicArchive, directory: Path | None = None) -> None:
        self.archive = archive
        # Where the archive lies: its statement logs are read relative to it.
        self.directory = directory
        self.tsa_roots = [pem.encode("ascii") for pem in archive.tsa_roots]
        self.domains = archive.domains
        self.roots: tuple[x509.Certificate, ...] = tuple(
            x509.load_pem_x509_certificate(r.pem.encode("ascii")) for r in archive.roots
        )
        self._certs = {c.sha256.lower(): c for c in archive.certificates}
        self._published = tuple(
            x509.load_pem_x509_certificate(c.pem.encode("ascii")) for c in archive.certificates
        )
        # Facts about certificates (their chain to a root, usage, names), kept for this
        # version of the archive only: a new export (a revocation) makes a new Trust.
        self._derived: dict[tuple[str, Hashable], Any] = {}
        self._lock = threading.Lock()

    def dkim_key(self, domain: str, selector: str) -> PublicDkimKey | None:
        return self.archive.dkim_key(domain, selector)

    def certificate(self, sha256: str) -> PublicCertificate | None:
        return self._certs.get(sha256.lower())

    def archive_certificates(self) -> tuple[x509.Certificate, ...]:
        """The fund's signing certificates, for a .p7s that does not embed its signer."""
        return self._published

    def issuing_root(self, certificate: x509.Certificate) -> x509.Certificate | None:
        """The archive root that directly issued `certificate` (its signature verified)."""
        return self.derived("issuing_root", certificate, lambda: self._issuing_root(certificate))

    def _issuing_root(self, certificate: x509.Certificate) -> x509.Certificate | None:
        for root in self.roots:
            try:
                if root.subject != certificate.issuer:
                    continue
                certificate.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return root
        return None

    def certificate_from_der(self, der: bytes) -> x509.Certificate:
        """A certificate a .p7s embeds, loaded once (raises ValueError as the loader does)."""
        return self.derived("der", der, lambda: pki.load_der_certificate(der))

    def derived(self, kind: str, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, a fact derived from public material alone (a certificate), computed
        once per `kind` and `key` for this archive. An error is not kept: it is raised
        again next time, as it was the first."""
        with self._lock:
            if (kind, key) in self._derived:
                found: T = self._derived[(kind, key)]
                return found
        value = make()
        with self._lock:
            if len(self._derived) >= _DERIVED_MAX:
                self._derived.clear()
            self._derived[(kind, key)] = value
        return value

    def roots_pem(self) -> bytes:
        return b"".join(r.public_bytes(serialization.Encoding.PEM) for r in self.roots)


class TrustSource:
    """The current `Trust`, rebuilt only when the archive file changes."""

    def __init__(self, directory: Path) -> None:
        self._watcher = ArchiveWatcher(directory)
        self._trust: Trust | None = None
        self._lock = threading.Lock()

    def get(self) -> Trust:
        """Raises keys.archive.ArchiveError when no usable archive is there."""
        with self._lock:
            archive = self._watcher.get()
            if self._trust is None or self._trust.archive is not archive:
                self._trust = Trust(archive, self._watcher.directory)
            return self._trust

"""The public archive, parsed once per version into what the checks need.

`TrustSource` wraps keys.archive.ArchiveWatcher: a new export on disk gives a new `Trust`
on the next request, without a restart.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from keys.archive import ArchiveWatcher, PublicArchive, PublicCertificate, PublicDkimKey

# Chain results are cached per signer certificate; a hostile stream of fresh certificates
# must not grow memory without bound.
_CHAIN_CACHE_MAX = 1024


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
        self._chain: dict[str, x509.Certificate | None] = {}
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
        key = certificate.fingerprint(hashes.SHA256()).hex()
        with self._lock:
            if key in self._chain:
                return self._chain[key]
        found: x509.Certificate | None = None
        for root in self.roots:
            try:
                if root.subject != certificate.issuer:
                    continue
                certificate.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            found = root
            break
        with self._lock:
            if len(self._chain) >= _CHAIN_CACHE_MAX:
                self._chain.clear()
            self._chain[key] = found
        return found

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

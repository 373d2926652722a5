"""The public archive the verifier reads: ``archive.json`` and ``root.pem`` (format in
keys/archive.py), built from the store's state, which holds public material only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keys.archive import ARCHIVE_FILE, FORMAT, ROOT_FILE, format_time, log_json
from keys.dns import public_sha256
from keys.lifecycle import Certificate, DkimKey, StoreState, Tracked
from keys.safeio import atomic_write

PUBLIC_FILE_MODE = 0o644
PUBLIC_DIR_MODE = 0o755


def der_sha256(pem: str) -> str:
    certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _history(item: Tracked) -> list[dict[str, str]]:
    return [{"state": str(change.state), "at": format_time(change.at)} for change in item.history]


def _revocation(item: Tracked) -> dict[str, str] | None:
    if item.revocation is None:
        return None
    return {
        "compromised_at": format_time(item.revocation.compromised_at),
        "reason": item.revocation.reason,
        "revoked_at": format_time(item.revocation.revoked_at),
    }


def _dkim_entry(domain: str, generation: str, key: DkimKey) -> dict[str, Any]:
    return {
        "domain": domain,
        "selector": key.selector,
        "generation": generation,
        "algorithm": key.algorithm,
        "public_key": key.public_key,
        "sha256": public_sha256(key.public_key),
        "history": _history(key),
        "revocation": _revocation(key),
    }


def _certificate_entry(domain: str, generation: str, cert: Certificate) -> dict[str, Any]:
    parsed = x509.load_pem_x509_certificate(cert.pem.encode("ascii"))
    return {
        "domain": domain,
        "serial": cert.serial,
        "generation": generation,
        "pem": cert.pem,
        "sha256": der_sha256(cert.pem),
        "not_before": format_time(parsed.not_valid_before_utc),
        "not_after": format_time(parsed.not_valid_after_utc),
        "history": _history(cert),
        "revocation": _revocation(cert),
    }


def build_archive(state: StoreState, now: dt.datetime) -> dict[str, Any]:
    """The archive document: every key and certificate the store ever created."""
    roots = []
    if state.root is not None:
        roots.append(
            {"pem": state.root.certificate_pem, "sha256": der_sha256(state.root.certificate_pem)}
        )
    dkim_keys: list[dict[str, Any]] = []
    certificates: list[dict[str, Any]] = []
    for domain in state.domains:
        for generation in domain.generations:
            dkim_keys.extend(_dkim_entry(domain.name, generation.id, k) for k in generation.dkim)
            certificates.append(
                _certificate_entry(domain.name, generation.id, generation.certificate)
            )
    return {
        "format": FORMAT,
        "generated_at": format_time(now),
        "roots": roots,
        "dkim_keys": dkim_keys,
        "certificates": certificates,
        "logs": [log_json(log) for log in state.logs],
        "tsa_roots": list(state.tsa_roots),
        "witnesses": list(state.witnesses),
    }


def write_public(state: StoreState, public_dir: Path, now: dt.datetime) -> list[Path]:
    """Writes archive.json and root.pem into `public_dir` (created if needed); returns them.
    root.pem first, so a verifier never sees an archive naming a root it cannot find."""
    public_dir.mkdir(mode=PUBLIC_DIR_MODE, parents=True, exist_ok=True)
    written = []
    if state.root is not None:
        root = public_dir / ROOT_FILE
        atomic_write(root, state.root.certificate_pem.encode("ascii"), PUBLIC_FILE_MODE)
        written.append(root)
    document = json.dumps(build_archive(state, now), indent=2, sort_keys=False) + "\n"
    archive = public_dir / ARCHIVE_FILE
    atomic_write(archive, document.encode("utf-8"), PUBLIC_FILE_MODE)
    written.append(archive)
    return written

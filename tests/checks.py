"""Independent checks on what Sealpost emits, shared by the tests of every package:
dkimpy and Perl Mail::DKIM for DKIM, `openssl cms` for the detached CMS signatures.
Keys are fed offline: nothing here touches DNS."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization

from keys.signing import SigningMaterial

# A copy of the reference statement load (27 KB, LF line ends) that the Postfix + OpenDKIM
# baseline and the benchmarks use (../shared/bench/postfix-opendkim/message.eml), kept here
# so that the tests need nothing outside the repository.
REFERENCE = Path(__file__).with_name("data") / "statement.eml"
DKIM_VERIFY_PL = Path(__file__).with_name("dkim_verify.pl")


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def dns_records(material: SigningMaterial) -> dict[str, str]:
    rsa_public = material.rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_public = material.ed25519_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    domain = material.domain
    return {
        f"{material.rsa_selector}._domainkey.{domain}": "v=DKIM1; k=rsa; p="
        + base64.b64encode(rsa_public).decode(),
        f"{material.ed25519_selector}._domainkey.{domain}": "v=DKIM1; k=ed25519; p="
        + base64.b64encode(ed_public).decode(),
    }


def dkimpy_results(data: bytes, records: dict[str, str]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        record = records.get(name.decode().rstrip("."))
        return record.encode() if record else None

    verifier = dkim.DKIM(data)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return [_verifies(verifier, i, dnsfunc) for i in range(count)]


def _verifies(verifier: dkim.DKIM, index: int, dnsfunc: object) -> bool:
    try:
        return bool(verifier.verify(idx=index, dnsfunc=dnsfunc))
    except dkim.ValidationError:  # how dkimpy reports some failures, a body hash mismatch
        return False


def mail_dkim_results(data: bytes, records: dict[str, str], tmp_path: Path) -> list[str]:
    """Perl Mail::DKIM's verdict per signature: lines like 'pass a=rsa-sha256 ...'."""
    record_file = tmp_path / "records.txt"
    record_file.write_text("".join(f"{name} {value}\n" for name, value in records.items()))
    result = subprocess.run(
        ["perl", str(DKIM_VERIFY_PL), str(record_file)],
        input=data,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return result.stdout.decode().splitlines()


# The command the verifier's /openssl page gives insurers (verifier/templates/openssl.html),
# so that what the gateway emits is checked the way insurers check it: only the given root
# is trusted (-no-CApath -no-CAstore keep SSL_CERT_DIR and the system store out), and the
# signer must be a certificate made for signing (-purpose smimesign: keyUsage
# digitalSignature or nonRepudiation, extendedKeyUsage emailProtection when present).
OPENSSL_TRUST_AND_PURPOSE = ("-no-CApath", "-no-CAstore", "-purpose", "smimesign")


def openssl_verifies(signature: bytes, document: bytes, root_pem: bytes, tmp_path: Path) -> bool:
    (tmp_path / "doc").write_bytes(document)
    (tmp_path / "doc.p7s").write_bytes(signature)
    (tmp_path / "root.pem").write_bytes(root_pem)
    result = subprocess.run(
        [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER",
            "-in", str(tmp_path / "doc.p7s"), "-content", str(tmp_path / "doc"),
            "-CAfile", str(tmp_path / "root.pem"), *OPENSSL_TRUST_AND_PURPOSE,
            "-out", "/dev/null",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    return result.returncode == 0


def root_pem(material: SigningMaterial) -> bytes:
    return material.chain[-1].public_bytes(serialization.Encoding.PEM)

"""Micro-benchmark: time to seal one statement, against dkimpy's own signer, same run.

    .venv/bin/python bench/seal.py [--message FILE] [--rounds N]

Prints the mean per-message time of:
  - dkimpy `dkim.sign` RSA-2048 (pure-Python RSA): the baseline the brief measured at 19 ms;
  - dkimpy RSA-2048 + Ed25519, which is what dual signing with dkimpy alone would cost;
  - gateway.dkim_sign: both DKIM signatures through OpenSSL, one body hash;
  - gateway.seal.seal: the whole seal (CMS .p7s for each document, then both DKIM).
and the ratios. Figures on a shared 2-core machine swing by 20% or more: compare within
one run, never across runs.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization

from gateway import dkim_sign
from gateway.seal import DocumentRules, seal
from keys import pki
from keys.signing import SigningMaterial

REFERENCE = Path(__file__).resolve().parents[2] / "shared/bench/postfix-opendkim/message.eml"


def material() -> SigningMaterial:
    now = dt.datetime.now(dt.UTC)
    root_key = pki.new_root_key()
    root = pki.make_root(root_key, "Bench", now)
    cert_key = pki.new_signing_cert_key()
    certificate = pki.issue_signing_certificate(
        pki.Issuer(root, root_key), cert_key, "Bench", "caisses.example", "bench", now
    )
    return SigningMaterial(
        domain="caisses.example",
        generation="bench",
        rsa_selector="bench-r",
        rsa_key=pki.new_rsa_key(),
        ed25519_selector="bench-e",
        ed25519_key=pki.new_ed25519_key(),
        certificate=certificate,
        certificate_key=cert_key,
        chain=(root,),
    )


def mean_ms(run: Callable[[], object], rounds: int) -> float:
    run()  # warm caches and imports
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.fmean(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--message", type=Path, default=REFERENCE)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    raw = args.message.read_bytes()
    message = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as SMTP delivers it
    keys = material()
    rules = DocumentRules()
    include = [name.decode() for name in dkim_sign.oversigned(dkim.rfc822_parse(message)[0])]
    rsa_pem = keys.rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    ed_seed = base64.b64encode(
        keys.ed25519_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )
    domain = keys.domain.encode()
    signers = (
        dkim_sign.Signer(keys.rsa_selector, keys.rsa_key),
        dkim_sign.Signer(keys.ed25519_selector, keys.ed25519_key),
    )

    def dkimpy_rsa() -> object:
        return dkim.sign(
            message, b"bench-r", domain, rsa_pem,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
        )  # fmt: skip

    def dkimpy_dual() -> object:
        dkimpy_rsa()
        return dkim.sign(
            message, b"bench-e", domain, ed_seed, signature_algorithm=b"ed25519-sha256",
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
        )  # fmt: skip

    baseline_rounds = max(args.rounds // 10, 10)
    figures = {
        "dkimpy RSA-2048": mean_ms(dkimpy_rsa, baseline_rounds),
        "dkimpy RSA-2048 + Ed25519": mean_ms(dkimpy_dual, baseline_rounds),
        "gateway DKIM RSA + Ed25519 (OpenSSL)": mean_ms(
            lambda: dkim_sign.signature_headers(message, keys.domain, signers, 0), args.rounds
        ),
        "gateway full seal (CMS + 2x DKIM)": mean_ms(
            lambda: seal(message, keys, rules), args.rounds
        ),
    }
    print(f"message: {args.message} ({len(message)} bytes, CRLF)")
    for name, value in figures.items():
        print(f"  {name:<40} {value:8.3f} ms/message")
    seal_ms = figures["gateway full seal (CMS + 2x DKIM)"]
    print(f"  dkimpy RSA alone / full seal:           {figures['dkimpy RSA-2048'] / seal_ms:8.1f}x")
    dual_ratio = (
        figures["dkimpy RSA-2048 + Ed25519"] / figures["gateway DKIM RSA + Ed25519 (OpenSSL)"]
    )
    print(f"  dkimpy dual / gateway dual DKIM:        {dual_ratio:8.1f}x")
    print(f"  full seals per second, one core:        {1000 / seal_ms:8.0f}")


if __name__ == "__main__":
    main()

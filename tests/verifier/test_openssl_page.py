"""The /openssl page's commands, run as an insurer runs them: taken from the page rendered by
a real server in each language, with root.pem downloaded from it, against real signatures.

A command that prints "Verification successful" for a document the fund did not seal is
worse than none: insurers pay on it. So each command must refuse a signer chaining to any
root but the fund's, even one installed in openssl's default trust store (SSL_CERT_DIR,
SSL_CERT_FILE), and a certificate of the fund's root that was not made for signing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from keys import pki
from keys.signing import SigningMaterial
from tests.checks import OPENSSL_TRUST_AND_PURPOSE
from tests.conftest import DOMAIN, ORG
from tests.support import document_and_signature
from tests.verifier.conftest import (
    KeyHistory,
    cms_detached,
    make_settings,
    reference_message,
    seal,
    serve,
    write_archive,
)
from verifier import i18n
from verifier.app import create_app

LANGUAGES = ("fr", "en")

# What the page said before it trusted the fund's root only: openssl also trusted its
# default store, and `-purpose any` accepted any certificate the fund's root ever issued.
OLD_COMMAND = (
    "openssl cms -verify -binary -inform DER -in decompte-123.pdf.p7s "
    "-content decompte-123.pdf -CAfile root.pem -purpose any -out /dev/null"
)

# The fund's root is older than its oldest signing certificate still worth checking, so
# that the -attime command has an expired generation to check.
ROOT_AGE = dt.timedelta(days=500)


# --- the fund, and certificates that are not the fund's signing certificates ------------


@dataclass(frozen=True)
class Fund:
    """The fund's material, plus the root key the tests need to issue other certificates."""

    material: SigningMaterial
    root_key: ec.EllipticCurvePrivateKey

    @property
    def root(self) -> x509.Certificate:
        return self.material.chain[-1]

    @property
    def issuer(self) -> pki.Issuer:
        return pki.Issuer(self.root, self.root_key)


def make_fund(now: dt.datetime) -> Fund:
    """As tests/conftest.py make_material builds it, keeping the root key."""
    root_key = pki.new_root_key()
    root = pki.make_root(root_key, ORG, now - ROOT_AGE)
    cert_key = pki.new_signing_cert_key()
    certificate = pki.issue_signing_certificate(
        pki.Issuer(root, root_key), cert_key, ORG, DOMAIN, "202611", now
    )
    material = SigningMaterial(
        domain=DOMAIN,
        generation="202611",
        rsa_selector="s202611r",
        rsa_key=pki.new_rsa_key(),
        ed25519_selector="s202611e",
        ed25519_key=pki.new_ed25519_key(),
        certificate=certificate,
        certificate_key=cert_key,
        chain=(root,),
    )
    return Fund(material, root_key)


def _key_usage(*names: str) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(dict.fromkeys(names, True))
    return x509.KeyUsage(**flags)


def issue_other(
    issuer: pki.Issuer,
    common_name: str,
    key_usage: x509.KeyUsage,
    extended: list[ObjectIdentifier],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate of `issuer` with the given usages, valid now."""
    key = pki.new_signing_cert_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - pki.BACKDATE)
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(extended), critical=False)
        .sign(issuer.key, hashes.SHA384())
    )
    return certificate, key


def signed_by(
    fund: Fund,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    chain: tuple[x509.Certificate, ...],
    document: bytes,
) -> bytes:
    """A .p7s made exactly as the fund makes one, but by `certificate`, embedding `chain`."""
    other = dataclasses.replace(
        fund.material, certificate=certificate, certificate_key=key, chain=chain
    )
    return cms_detached(document, other)


# --- the page, and running its commands --------------------------------------------------


@dataclass(frozen=True)
class Page:
    text: str  # unescaped, as the reader sees it
    commands: list[list[str]]


def commands_of(page_html: str) -> list[list[str]]:
    found = re.findall(r"<pre><code>(openssl cms [^<]*)</code></pre>", page_html)
    return [shlex.split(html.unescape(command)) for command in found]


@dataclass(frozen=True)
class Site:
    pages: dict[str, Page]
    root_pem: bytes


@dataclass(frozen=True)
class Signed:
    """One document and its .p7s, and a time (epoch seconds) at which its certificate was
    valid: what an insurer puts after -attime."""

    document: bytes
    signature: bytes
    at: int


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str

    @property
    def verified(self) -> bool:
        return self.returncode == 0 and "Verification successful" in self.output


def run(
    command: list[str], signed: Signed, site: Site, tmp: Path, env: Mapping[str, str]
) -> Outcome:
    """Runs a command from the page with the page's file names replaced by real files."""
    tmp.mkdir(parents=True, exist_ok=True)
    argv = list(command)
    files = {
        "-in": ("statement.pdf.p7s", signed.signature),
        "-content": ("statement.pdf", signed.document),
        "-CAfile": ("root.pem", site.root_pem),
    }
    for option, (name, data) in files.items():
        assert argv.count(option) == 1, (option, command)
        (tmp / name).write_bytes(data)
        argv[argv.index(option) + 1] = str(tmp / name)
    if "-attime" in argv:
        argv[argv.index("-attime") + 1] = str(signed.at)
    result = subprocess.run(
        argv, cwd=tmp, env=dict(env), capture_output=True, text=True, timeout=30, check=False
    )
    return Outcome(result.returncode, result.stdout + result.stderr)


def all_commands(site: Site) -> Iterator[tuple[str, list[str]]]:
    for lang in LANGUAGES:
        for command in site.pages[lang].commands:
            yield lang, command


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def fund(now: dt.datetime) -> Fund:
    return make_fund(now)


@pytest.fixture(scope="module")
def site(fund: Fund, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    archive = write_archive(
        tmp_path_factory.mktemp("public"), [(fund.material, KeyHistory("active"))]
    )
    with (
        serve(create_app(make_settings(archive))) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        pages = {}
        for lang in LANGUAGES:
            response = client.get("/openssl", params={"lang": lang})
            assert response.status_code == 200
            pages[lang] = Page(html.unescape(response.text), commands_of(response.text))
        root = client.get("/root.pem")
        assert root.status_code == 200
        yield Site(pages, root.content)


@pytest.fixture(scope="module")
def genuine(fund: Fund, now: dt.datetime) -> Signed:
    """A statement document and its .p7s as the gateway seals them, taken from the email."""
    _, document, signature = document_and_signature(seal(reference_message(), fund.material))
    return Signed(document, signature, int(now.timestamp()))


@pytest.fixture(scope="module")
def foreign_root(now: dt.datetime) -> pki.Issuer:
    key = pki.new_root_key()
    return pki.Issuer(pki.make_root(key, "Autorité Étrangère", now), key)


@pytest.fixture(scope="module")
def foreign(fund: Fund, foreign_root: pki.Issuer, genuine: Signed, now: dt.datetime) -> Signed:
    """The genuine document re-signed through a foreign CA with exactly the fund's profile
    (digitalSignature, nonRepudiation, emailProtection): only trust can tell it apart."""
    key = pki.new_signing_cert_key()
    certificate = pki.issue_signing_certificate(foreign_root, key, ORG, DOMAIN, "202611", now)
    signature = signed_by(fund, certificate, key, (foreign_root.certificate,), genuine.document)
    return Signed(genuine.document, signature, genuine.at)


@pytest.fixture(scope="module")
def store_with_foreign_root(
    foreign_root: pki.Issuer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """An environment whose default openssl trust store holds the foreign root, as the
    system store of an insurer's computer holds many CAs the fund has nothing to do with."""
    directory = tmp_path_factory.mktemp("store")
    pem = directory / "foreign-root.pem"
    pem.write_bytes(pki.certificate_pem(foreign_root.certificate))
    # openssl looks a CA up in a directory by subject hash: rehash makes the link.
    subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True)
    assert any(re.fullmatch(r"[0-9a-f]{8}\.0", p.name) for p in directory.iterdir())
    return {**os.environ, "SSL_CERT_DIR": str(directory), "SSL_CERT_FILE": str(pem)}


# --- the page ----------------------------------------------------------------------------


def test_the_page_gives_the_same_strict_commands_in_both_languages(site: Site) -> None:
    french, english = (site.pages[lang].commands for lang in LANGUAGES)
    assert len(french) == 2
    assert french == english
    plain, attime = french
    assert "-attime" not in plain
    assert attime[: attime.index("-attime")] == plain[: plain.index("-out")]
    for command in french:
        assert command[:3] == ["openssl", "cms", "-verify"]
        assert "any" not in command
        # The flags the gateway tests check with (tests/checks.py), in the same order.
        flags = command.index("-no-CApath")
        assert tuple(command[flags : flags + 4]) == OPENSSL_TRUST_AND_PURPOSE


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_page_says_why_the_flags_are_there(site: Site, lang: str) -> None:
    explanation = i18n.translator(lang)("openssl_flags")
    assert explanation in site.pages[lang].text
    for flag in ("-no-CApath", "-no-CAstore", "-purpose smimesign"):
        assert flag in explanation


def test_the_root_downloaded_from_the_page_is_the_funds(site: Site, fund: Fund) -> None:
    assert site.root_pem == pki.certificate_pem(fund.root)


# --- (a) what the fund sealed passes ----------------------------------------------------


def test_a_statement_the_gateway_sealed_passes_every_command(
    site: Site, genuine: Signed, tmp_path: Path
) -> None:
    for index, (lang, command) in enumerate(all_commands(site)):
        outcome = run(command, genuine, site, tmp_path / str(index), os.environ)
        assert outcome.verified, (lang, command, outcome)


def test_an_expired_generation_passes_with_attime_only(
    site: Site, fund: Fund, genuine: Signed, now: dt.datetime, tmp_path: Path
) -> None:
    """A statement signed last year by a certificate that has since expired: the page's
    second command, at its signing time, is how an insurer still checks it."""
    issued = now - ROOT_AGE + dt.timedelta(days=1)
    key = pki.new_signing_cert_key()
    certificate = pki.issue_signing_certificate(fund.issuer, key, ORG, DOMAIN, "202507", issued)
    assert certificate.not_valid_after_utc < now
    signature = signed_by(fund, certificate, key, (fund.root,), genuine.document)
    old = Signed(genuine.document, signature, int((issued + dt.timedelta(days=30)).timestamp()))
    for index, (lang, command) in enumerate(all_commands(site)):
        outcome = run(command, old, site, tmp_path / str(index), os.environ)
        if "-attime" in command:
            assert outcome.verified, (lang, command, outcome)
        else:
            assert not outcome.verified, (lang, command, outcome)
            assert "certificate has expired" in outcome.output


def test_a_changed_byte_fails_every_command(site: Site, genuine: Signed, tmp_path: Path) -> None:
    changed = bytearray(genuine.document)
    changed[len(changed) // 2] ^= 0x01
    altered = Signed(bytes(changed), genuine.signature, genuine.at)
    for index, (lang, command) in enumerate(all_commands(site)):
        outcome = run(command, altered, site, tmp_path / str(index), os.environ)
        assert not outcome.verified, (lang, command, outcome)


def test_the_page_quotes_what_openssl_really_prints(
    site: Site, genuine: Signed, tmp_path: Path
) -> None:
    """An insurer compares what the terminal says with what the page says it will say."""
    plain = site.pages["fr"].commands[0]
    success = run(plain, genuine, site, tmp_path / "good", os.environ)
    assert success.returncode == 0
    changed = Signed(genuine.document + b"\n", genuine.signature, genuine.at)
    failure = run(plain, changed, site, tmp_path / "bad", os.environ)
    assert failure.returncode != 0
    printed = success.output.strip()
    refused = failure.output.splitlines()[0].strip()
    assert (printed, refused) == ("CMS Verification successful", "CMS Verification failure")
    for lang in LANGUAGES:
        text = site.pages[lang].text
        quoted = re.search(r'<samp id="openssl-output">([^<]*)</samp>', text)
        assert quoted is not None, lang
        assert quoted.group(1) == printed
        prose = i18n.translator(lang)("openssl_success")
        assert prose in text
        assert printed in prose
        assert refused in prose


# --- (b) a foreign CA in openssl's default store ----------------------------------------


def test_the_old_command_trusted_a_foreign_ca_in_the_default_store(
    site: Site, foreign: Signed, store_with_foreign_root: dict[str, str], tmp_path: Path
) -> None:
    """The attack is real: without the foreign root in the store the old command refuses
    the document, with it the old command says "Verification successful"."""
    old = shlex.split(OLD_COMMAND)
    assert not run(old, foreign, site, tmp_path / "clean", os.environ).verified
    assert run(old, foreign, site, tmp_path / "store", store_with_foreign_root).verified


def test_every_command_refuses_a_foreign_ca_in_the_default_store(
    site: Site, foreign: Signed, store_with_foreign_root: dict[str, str], tmp_path: Path
) -> None:
    for index, (lang, command) in enumerate(all_commands(site)):
        outcome = run(command, foreign, site, tmp_path / str(index), store_with_foreign_root)
        assert not outcome.verified, (lang, command, outcome)
        # Refused for trust, not for something else about the document.
        assert "self-signed certificate in certificate chain" in outcome.output, outcome


@pytest.mark.parametrize("dropped", ["-no-CApath", "-no-CAstore"])
def test_each_trust_flag_is_needed(
    site: Site,
    foreign: Signed,
    store_with_foreign_root: dict[str, str],
    tmp_path: Path,
    dropped: str,
) -> None:
    """OpenSSL 3 reads SSL_CERT_DIR both as the default CApath and as the default CAstore,
    so the page needs both flags: without either, the foreign root is trusted again."""
    plain = site.pages["fr"].commands[0]
    weakened = [arg for arg in plain if arg != dropped]
    assert len(weakened) == len(plain) - 1
    assert run(weakened, foreign, site, tmp_path, store_with_foreign_root).verified


# --- (c) a certificate of the fund's root not made for signing documents ----------------

NOT_FOR_SIGNING = {
    # A web server certificate: the EKU is serverAuth, not emailProtection.
    "tls_server": (
        _key_usage("digital_signature", "key_encipherment"),
        [ExtendedKeyUsageOID.SERVER_AUTH],
    ),
    # An encryption certificate: emailProtection, but the key may not sign.
    "encryption": (_key_usage("key_encipherment"), [ExtendedKeyUsageOID.EMAIL_PROTECTION]),
}


@pytest.mark.parametrize("kind", sorted(NOT_FOR_SIGNING))
def test_a_fund_certificate_not_made_for_signing_is_refused(
    site: Site, fund: Fund, genuine: Signed, now: dt.datetime, tmp_path: Path, kind: str
) -> None:
    key_usage, extended = NOT_FOR_SIGNING[kind]
    certificate, key = issue_other(fund.issuer, f"{kind}.{DOMAIN}", key_usage, extended, now)
    signature = signed_by(fund, certificate, key, (fund.root,), genuine.document)
    signed = Signed(genuine.document, signature, genuine.at)
    # The old command took it: the document and the chain are fine, only the purpose is not.
    assert run(shlex.split(OLD_COMMAND), signed, site, tmp_path / "old", os.environ).verified
    for index, (lang, command) in enumerate(all_commands(site)):
        outcome = run(command, signed, site, tmp_path / str(index), os.environ)
        assert not outcome.verified, (lang, command, outcome)
        assert "unsuitable certificate purpose" in outcome.output, outcome

"""DKIM checks against the archive: why a signature fails, in words a person can use."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from keys.signing import SigningMaterial
from tests.verifier.conftest import (
    KeyHistory,
    dkim_p_value,
    reference_message,
    replace_header,
    trust_with,
)
from verifier import dkim_check
from verifier.dkim_check import check_dkim, signature_domain
from verifier.report import DkimStatus
from verifier.trust import Trust

pytestmark = pytest.mark.usefixtures("no_network")


def signatures(raw: bytes) -> list[bytes]:
    from email import message_from_bytes

    return [v.encode() for v in message_from_bytes(raw).get_all("DKIM-Signature", [])]


def test_both_fund_signatures_pass_from_the_archive_without_dns(
    sealed: bytes, trust: Trust
) -> None:
    checks = check_dkim(sealed, signatures(sealed), trust)
    assert [(c.domain, c.status) for c in checks] == [
        ("caisses.example", DkimStatus.PASS),
        ("caisses.example", DkimStatus.PASS),
    ]
    assert all(c.key is not None and c.key.generation == "202611" for c in checks)


def test_an_appended_footer_is_a_body_change(sealed: bytes, trust: Trust) -> None:
    footer = sealed + b"\r\n-- \r\nSent from my relay\r\n"
    checks = check_dkim(footer, signatures(footer), trust)
    assert {(c.status, c.reason) for c in checks} == {(DkimStatus.FAIL, "body_changed")}


def test_a_changed_date_is_a_header_change(sealed: bytes, trust: Trust) -> None:
    raw = replace_header(sealed, b"Date", b"Mon, 02 Mar 2026 06:00:00 +0100")
    checks = check_dkim(raw, signatures(raw), trust)
    assert {(c.status, c.reason) for c in checks} == {(DkimStatus.FAIL, "header_changed")}


def test_an_added_oversigned_header_is_a_header_change(sealed: bytes, trust: Trust) -> None:
    """A second Subject cannot be slipped in: the gateway oversigns it."""
    raw = b"Subject: URGENT pay now\r\n" + sealed
    checks = check_dkim(raw, signatures(raw), trust)
    assert {c.status for c in checks} == {DkimStatus.FAIL}


def test_a_signature_naming_the_wrong_algorithm_is_invalid(trust: Trust, sealed: bytes) -> None:
    raw = sealed.replace(b"a=ed25519-sha256", b"a=rsa-sha256", 1)
    checks = check_dkim(raw, signatures(raw), trust)
    assert "algorithm_mismatch" in {c.reason for c in checks}


def test_rsa_sha1_is_refused(trust: Trust, sealed: bytes) -> None:
    raw = sealed.replace(b"a=rsa-sha256", b"a=rsa-sha1", 1)
    checks = check_dkim(raw, signatures(raw), trust)
    assert (checks[0].status, checks[0].reason) == (DkimStatus.INVALID, "weak_algorithm")


def test_an_expired_signature_says_so(sealed: bytes, trust: Trust) -> None:
    raw = sealed.replace(b"; t=", b"; x=1000000000; t=", 1)
    checks = check_dkim(raw, signatures(raw), trust)
    assert checks[0].status is DkimStatus.INVALID
    assert checks[0].reason in ("expired", "malformed")


def test_a_message_dkimpy_cannot_split_still_lists_its_signatures(
    sealed: bytes, trust: Trust
) -> None:
    raw = b"not a header line\r\n" + sealed
    checks = check_dkim(raw, signatures(sealed), trust)
    assert len(checks) == 2
    assert {c.reason for c in checks} == {"unparseable_message"}


def test_garbage_tag_lists_are_malformed_not_crashes(trust: Trust) -> None:
    raw = b"DKIM-Signature: ;;;===\r\nFrom: a@b.example\r\n\r\nbody\r\n"
    checks = check_dkim(raw, [b";;;==="], trust)
    assert checks[0].status is DkimStatus.INVALID


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        (b"v=1; d=Caisses.Example.; s=x", "caisses.example"),
        (b"garbage", ""),
        (b"d=\xff\xfe; s=1", "\ufffd\ufffd"),
    ],
)
def test_signature_domain(value: bytes, domain: str) -> None:
    assert signature_domain(value) == domain


def test_a_huge_folded_header_is_not_handed_to_dkimpy(sealed: bytes, trust: Trust) -> None:
    """dkimpy unfolds headers in quadratic time: 2.5 million folded lines would stall a
    worker for minutes. Past the limit the signatures are reported, not checked."""
    import time

    raw = b"Subject: x" + b"\r\n y" * 2_500_000 + b"\r\n" + sealed
    started = time.monotonic()
    checks = check_dkim(raw, signatures(sealed), trust)
    assert time.monotonic() - started < 2
    assert {c.reason for c in checks} == {"headers_too_large"}


def test_only_the_first_signatures_are_checked(sealed: bytes, trust: Trust) -> None:
    """Each check hashes the body again: a thousand bogus signatures must not multiply
    the work by a thousand."""
    bogus = b"DKIM-Signature: v=1; a=rsa-sha256; d=caisses.example; s=s202611r; b=y\r\n"
    raw = bogus * 1000 + sealed
    checks = check_dkim(raw, signatures(raw), trust)
    assert len(checks) == 1002
    assert sum(c.reason == "too_many_signatures" for c in checks) == 1002 - 8


def test_rsa_arithmetic_goes_to_openssl_and_agrees_with_dkimpy_s_own(sealed: bytes) -> None:
    """Only the modular arithmetic changes hands: dkimpy's pure-Python check and OpenSSL's
    agree on a genuine signature and on damaged ones."""
    assert dkim.RSASSA_PKCS1_v1_5_verify is dkim_check._openssl_rsa_verify
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.public_key().public_numbers()
    public = {"modulus": numbers.n, "publicExponent": numbers.e}
    signature = private.sign(sealed, padding.PKCS1v15(), hashes.SHA256())
    damaged = bytes([signature[0] ^ 1]) + signature[1:]
    for candidate, expected in ((signature, True), (damaged, False), (signature[:-1], False)):
        digest = hashlib.sha256(sealed)
        assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, candidate, public) is expected
        assert dkim.RSASSA_PKCS1_v1_5_verify(digest, candidate, public) is expected


def test_a_key_record_is_parsed_once_and_a_revocation_is_still_seen(
    sealed: bytes,
    trust: Trust,
    material: SigningMaterial,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parsed key is kept per record text; the key's state comes from the archive at
    each check, so an archive that revokes the key is obeyed at once."""
    dkim_check._parsed_record.cache_clear()
    parsed: list[bytes] = []
    evaluate = dkim_check._evaluate_pk

    def counting(name: bytes, record: bytes) -> object:
        parsed.append(record)
        return evaluate(name, record)

    monkeypatch.setattr(dkim_check, "_evaluate_pk", counting)
    for _ in range(3):
        checks = check_dkim(sealed, signatures(sealed), trust)
        assert [c.status for c in checks] == [DkimStatus.PASS, DkimStatus.PASS]
    assert len(parsed) == 2  # the RSA record and the Ed25519 record
    compromised = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    revoked = trust_with(tmp_path, [(material, KeyHistory("revoked", compromised))])
    checks = check_dkim(sealed, signatures(sealed), revoked)
    assert [c.status for c in checks] == [DkimStatus.REVOKED, DkimStatus.REVOKED]


def test_a_record_dkimpy_refuses_is_refused_each_time_in_dkimpy_s_words() -> None:
    name = b"s1._domainkey.caisses.example."
    for record, words in ((b"v=DKIM1; k=rsa; p=AAAA", "could not parse RSA"), (b"", "s1")):
        for _ in range(2):
            with pytest.raises(dkim.KeyFormatError, match=words):
                dkim.evaluate_pk(name, record)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b": ", b"\r", b"\n", b"\r\n", b"\n\n"]), max_size=30))
def test_the_header_block_size_is_the_first_blank_line_of_either_kind(parts: list[bytes]) -> None:
    raw = b"".join(parts)
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    assert dkim_check._header_block_size(raw) == (min(ends) if ends else len(raw))


def test_a_fund_key_signing_only_the_start_of_the_body_vouches_for_nothing(
    material: SigningMaterial, trust: Trust
) -> None:
    """l= (RFC 6376 8.2) leaves what follows the signed length to anyone: the gateway never
    writes it, so a signature of the fund's key with it is no seal, even though dkimpy
    passes it over a message with a forged part after the signed length."""
    raw = reference_message()
    header = dkim.sign(
        raw,
        material.rsa_selector.encode(),
        material.domain.encode(),
        _pem(material),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"content-type"],
        length=True,
    )
    extended = header + raw + b"--appended after the signed length--\r\n"
    assert dkim.verify(extended, dnsfunc=lambda name, timeout=5: _record(material))
    (check,) = check_dkim(extended, [header.split(b":", 1)[1]], trust)
    assert check.status is DkimStatus.FAIL
    assert check.reason == "body_length_limit"


def _record(material: SigningMaterial) -> bytes:
    return b"v=DKIM1; k=rsa; p=" + dkim_p_value(material, "rsa").encode()


@pytest.mark.parametrize("unsigned", [b"content-type", b"mime-version"])
def test_a_signature_leaving_the_mime_structure_unsigned_vouches_for_nothing(
    material: SigningMaterial, trust: Trust, unsigned: bytes
) -> None:
    """The gateway signs Content-Type and MIME-Version. A signature that leaves them out
    (made with the fund's key, but not by the gateway) lets anyone give the very same
    signed body another boundary, so other parts: it passes in dkimpy, it vouches for
    nothing here."""
    raw = reference_message()
    names = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
    header = dkim.sign(
        raw,
        material.rsa_selector.encode(),
        material.domain.encode(),
        _pem(material),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[n for n in names if n != unsigned],
    )
    swapped = replace_header(header + raw, b"Content-Type", b'multipart/mixed; boundary="other"')
    if unsigned == b"mime-version":
        swapped = replace_header(header + raw, b"MIME-Version", b"1.0 (a comment)")
    assert dkim.verify(swapped, dnsfunc=lambda name, timeout=5: _record(material))
    (check,) = check_dkim(swapped, [header.split(b":", 1)[1]], trust)
    assert check.status is DkimStatus.FAIL
    assert check.reason == "header_not_signed"
    assert check.detail == unsigned.decode()


def _pem(material: SigningMaterial) -> bytes:
    return material.rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )

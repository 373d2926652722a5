"""DKIM DNS records: what `dns` prints parses back, with dkimpy's own parser and with
dnspython's zone parser, into the store's public keys; mail signed with the active keys
verifies against it; `--check-dns` asks a real DNS server (on 127.0.0.1)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dkim
import dkim.util
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from keys import store
from keys.__main__ import EXIT_DNS, EXIT_OK, main
from keys.dns import (
    DnsCheckFailed,
    Resolver,
    check_published,
    parse_resolver,
    split_strings,
    zone_lines,
)
from keys.lifecycle import DkimKey, State
from keys.signing import SigningKeys

DOMAIN = "caisses.example"
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "test passphrase")
    return tmp_path / "keys", tmp_path / "public"


def records_from_zone(text: str) -> dict[str, str]:
    """TXT values by owner name, through dnspython's zone-file parser."""
    zone = dns.zone.from_text(text, origin=DOMAIN, relativize=False, check_origin=False)
    records = {}
    for name, node in zone.nodes.items():
        rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT)
        assert rdataset is not None
        (rdata,) = list(rdataset)
        assert all(len(s) <= 255 for s in rdata.strings)
        records[name.to_text(omit_final_dot=True)] = b"".join(rdata.strings).decode()
    return records


def dns_output(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["--store", str(store_dir), "dns", "--domain", DOMAIN]) == EXIT_OK
    return capsys.readouterr().out


def test_split_strings_respects_the_255_byte_limit() -> None:
    for length in [0, 1, 254, 255, 256, 410, 510, 511]:
        value = "x" * length
        parts = split_strings(value)
        assert "".join(parts) == value
        assert all(len(p.encode()) <= 255 for p in parts)
        assert len(parts) == max(1, -(-length // 255)) if length else parts == []


def test_records_parse_back_into_the_store_public_keys(
    paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    records = records_from_zone(dns_output(store_dir, capsys))
    state = store.load_state(store_dir)
    domain = state.domain(DOMAIN)
    assert domain is not None
    keys = [k for g in domain.generations for k in g.dkim]
    assert sorted(records) == sorted(f"{k.selector}._domainkey.{DOMAIN}" for k in keys)
    for generation in domain.generations:
        for key in generation.dkim:
            tags = dkim.util.parse_tag_value(
                records[f"{key.selector}._domainkey.{DOMAIN}"].encode()
            )
            private = store.read_private_key(store_dir, key.key_file, None)
            public_key, _size, ktag, _tlsrpt = dkim.evaluate_pk(
                key.selector, records[f"{key.selector}._domainkey.{DOMAIN}"].encode()
            )
            assert tags[b"v"] == b"DKIM1"
            if isinstance(private, rsa.RSAPrivateKey):
                assert ktag == b"rsa"
                numbers = private.public_key().public_numbers()
                assert public_key["modulus"] == numbers.n
                assert public_key["publicExponent"] == numbers.e
            else:
                assert isinstance(private, ed25519.Ed25519PrivateKey)
                assert ktag == b"ed25519"
                raw = private.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                assert base64.b64decode(tags[b"p"]) == raw


def test_mail_signed_with_each_active_key_verifies_against_the_records(
    paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    records = records_from_zone(dns_output(store_dir, capsys))

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        key = name.decode() if isinstance(name, bytes) else name
        value = records.get(key.rstrip("."))
        return value.encode() if value is not None else None

    material = SigningKeys(store_dir).material(DOMAIN)
    message = (
        b"From: Caisses Sociales <statements@caisses.example>\r\n"
        b"To: member@example.org\r\nSubject: Decompte\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@caisses.example>\r\n\r\n"
        b"Votre decompte.\r\n"
    )
    rsa_pem = material.rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    ed_seed = material.ed25519_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    signed_rsa = dkim.sign(
        message,
        material.rsa_selector.encode(),
        DOMAIN.encode(),
        rsa_pem,
        canonicalize=(b"relaxed", b"relaxed"),
    )
    signed_ed = dkim.sign(
        message,
        material.ed25519_selector.encode(),
        DOMAIN.encode(),
        base64.b64encode(ed_seed),
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=b"ed25519-sha256",
    )
    assert dkim.verify(signed_rsa + message, dnsfunc=dnsfunc)
    assert dkim.verify(signed_ed + message, dnsfunc=dnsfunc)
    assert not dkim.verify(signed_rsa + message.replace(b"Votre", b"Notre"), dnsfunc=dnsfunc)


def test_dns_lists_pending_active_retired_and_revoked_but_not_withdrawn(
    paths: tuple[Path, Path],
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    store.activate(store_dir, public, DOMAIN, force=True, now=NOW)
    store.rotate(store_dir, public, DOMAIN, now=NOW)
    store.withdraw(store_dir, public, ["s202611e"], force=True, now=NOW)
    store.revoke(store_dir, public, "s202611r", compromised_at=NOW, reason="leak", now=NOW)
    domain = store.load_domain(store_dir, DOMAIN)
    text = "\n".join(zone_lines(domain))
    records = records_from_zone(text)
    assert f"s202611e._domainkey.{DOMAIN}" not in records  # withdrawn
    assert records[f"s202611r._domainkey.{DOMAIN}"] == "v=DKIM1; k=rsa; p="  # revoked
    for selector in ["s202611br", "s202611be", "s202611cr", "s202611ce"]:
        assert re.search(r"p=[A-Za-z0-9+/]{40,}", records[f"{selector}._domainkey.{DOMAIN}"])
    assert "; s202611r: rsa, revoked since 2026-11-23T10:00:00Z" in text
    assert "; s202611cr: rsa, pending since" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", Resolver("127.0.0.1", 53)),
        ("127.0.0.1:5353", Resolver("127.0.0.1", 5353)),
        ("::1", Resolver("::1", 53)),
        ("[::1]:5353", Resolver("::1", 5353)),
    ],
)
def test_resolver_addresses(text: str, expected: Resolver) -> None:
    assert parse_resolver(text) == expected


@pytest.mark.parametrize(
    "bad", ["dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1", "1.2.3.4:99999"]
)
def test_bad_resolver_addresses_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"resolver|port"):
        parse_resolver(bad)


# --- a real, tiny DNS server -----------------------------------------------------------


@contextlib.contextmanager
def dns_server(records: dict[str, list[list[bytes]]]) -> Iterator[int]:
    """Answers TXT queries over UDP on 127.0.0.1 from `records` (name -> TXT rdatas, each a
    list of strings); NXDOMAIN for any other name. Yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if name in records:
                rrset = dns.rrset.from_text_list(
                    question.name,
                    300,
                    "IN",
                    "TXT",
                    [" ".join(f'"{s.decode()}"' for s in strings) for strings in records[name]],
                )
                response.answer.append(rrset)
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def published(keys: tuple[DkimKey, ...]) -> dict[str, list[list[bytes]]]:
    return {
        f"{k.selector}._domainkey.{DOMAIN}": [
            [s.encode() for s in split_strings(f"v=DKIM1; k={k.algorithm}; p={k.public_key}")]
        ]
        for k in keys
    }


def test_check_dns_accepts_matching_records_split_in_strings(paths: tuple[Path, Path]) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    pending = store.rotate(store_dir, public, DOMAIN, now=NOW)
    records = published(pending.dkim)
    # Another TXT record at the same name must not confuse the check.
    records[f"{pending.rsa.selector}._domainkey.{DOMAIN}"].insert(0, [b"unrelated"])
    with dns_server(records) as port:
        check_published(DOMAIN, pending.dkim, Resolver("127.0.0.1", port), timeout=2)
        code = main(
            [
                "--store",
                str(store_dir),
                "--public",
                str(public),
                "activate",
                "--domain",
                DOMAIN,
                "--check-dns",
                "--resolver",
                f"127.0.0.1:{port}",
                "--dns-timeout",
                "2",
            ],
            now=NOW + dt.timedelta(hours=48),
        )
    assert code == EXIT_OK
    domain = store.load_domain(store_dir, DOMAIN)
    assert domain.active is not None
    assert domain.active.id == pending.id


def test_check_dns_refuses_missing_or_different_records(
    paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir, public = paths
    store.init_domain(store_dir, public, DOMAIN, now=NOW)
    old = store.load_domain(store_dir, DOMAIN).generations[0]
    pending = store.rotate(store_dir, public, DOMAIN, now=NOW)
    # The RSA selector serves the *old* key; the Ed25519 one is not published at all.
    wrong = {
        f"{pending.rsa.selector}._domainkey.{DOMAIN}": published(old.dkim)[
            f"{old.rsa.selector}._domainkey.{DOMAIN}"
        ]
    }
    with dns_server(wrong) as port:
        with pytest.raises(DnsCheckFailed) as failed:
            check_published(DOMAIN, pending.dkim, Resolver("127.0.0.1", port), timeout=2)
        capsys.readouterr()
        code = main(
            [
                "--store",
                str(store_dir),
                "--public",
                str(public),
                "activate",
                "--domain",
                DOMAIN,
                "--force",
                "--check-dns",
                "--resolver",
                f"127.0.0.1:{port}",
                "--dns-timeout",
                "2",
            ],
            now=NOW,
        )
    assert len(failed.value.problems) == 2
    assert "none with k=rsa and the p= of s202611br" in failed.value.problems[0]
    assert "NXDOMAIN" in failed.value.problems[1]
    assert code == EXIT_DNS
    err = capsys.readouterr().err
    assert "DNS does not serve the pending records" in err
    assert "s202611be._domainkey.caisses.example does not exist (NXDOMAIN)" in err
    domain = store.load_domain(store_dir, DOMAIN)
    assert domain.pending is not None  # nothing changed
    assert domain.active is not None
    assert domain.active.id == old.id
    assert domain.pending.rsa.state == State.PENDING


def test_check_dns_reports_a_silent_server() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        key = DkimKey((), None, "s1r", "rsa", "", "")
        with pytest.raises(
            DnsCheckFailed, match=r"no answer for s1r\._domainkey\.caisses\.example"
        ):
            check_published(DOMAIN, [key], Resolver("127.0.0.1", sock.getsockname()[1]), 0.3)
    finally:
        sock.close()

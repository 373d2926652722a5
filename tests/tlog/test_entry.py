"""A statement-log entry names the seals of one message and nothing personal."""

from __future__ import annotations

import datetime as dt

import dkim
import pytest
from dkim.util import parse_tag_value

from gateway.seal import DocumentRules, seal
from keys.signing import SigningMaterial
from tests.checks import crlf
from tests.support import statement
from tlog.entry import Entry, EntryError, decode, dkim_seal_hash, p7s_seal_hash

NOW = dt.datetime(2026, 11, 30, 5, 20, 16, tzinfo=dt.UTC)


def test_an_entry_round_trips_as_text() -> None:
    entry = Entry(NOW, "caisses.example", "202611", "bh=", ("a" * 64,), ("b" * 64, "c" * 64))
    data = entry.encode()
    assert data.startswith(b"sealpost-seal/1\nsealed 2026-11-30T05:20:16Z\n")
    assert decode(data) == entry


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"sealpost-seal/2\nsealed 2026-11-30T05:20:16Z\ndomain d\ngeneration g\nbody-hash x\n",
        b"sealpost-seal/1\nsealed yesterday\ndomain d\ngeneration g\nbody-hash x\n",
        b"sealpost-seal/1\nsealed 2026-11-30T05:20:16Z\ndomain d\ngeneration g\nbody-hash x\n"
        b"p7s not-a-digest\n",
        b"sealpost-seal/1\nsealed 2026-11-30T05:20:16Z\ndomain d\ndomain e\ngeneration g\n"
        b"body-hash x\n",
        b"sealpost-seal/1\nsealed 2026-11-30T05:20:16Z\ndomain d\ngeneration g\nbody-hash x\n"
        b"to member@example.org\n",
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(EntryError):
        decode(data)


def test_the_gateway_s_entry_names_exactly_the_seals_it_made(
    signing_material: SigningMaterial,
) -> None:
    sealed = seal(crlf(statement("entry-test")), signing_material, DocumentRules(), NOW)
    entry = decode(sealed.entry)
    assert entry.sealed_at == NOW
    assert (entry.domain, entry.generation) == ("caisses.example", signing_material.generation)
    headers, _ = dkim.rfc822_parse(sealed.data)
    tags = [parse_tag_value(v) for k, v in headers if k.lower() == b"dkim-signature"]
    assert list(entry.dkim) == [dkim_seal_hash(t[b"b"]) for t in tags]
    assert {entry.body_hash.encode()} == {t[b"bh"] for t in tags}
    import email

    message = email.message_from_bytes(sealed.data)
    signatures = [
        p.get_payload(decode=True)
        for p in message.walk()
        if p.get_content_type() == "application/pkcs7-signature"
    ]
    assert list(entry.p7s) == [p7s_seal_hash(s) for s in signatures if isinstance(s, bytes)]
    # Nothing personal: no address, no subject, no file name.
    for private in (b"membre@example.org", b"entry-test", b"decompte-1"):
        assert private not in sealed.entry

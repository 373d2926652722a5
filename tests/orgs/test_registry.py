"""The registry of insurers: what it holds, what it refuses, what it keeps secret, and that
a long-running reader sees another process's change without a restart."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orgs import tokens
from orgs.address import AddressError, normalise_domain, parse_address
from orgs.registry import (
    ENDED,
    Mailbox,
    NotFound,
    Organisation,
    Refused,
    Registry,
    RegistryError,
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "orgs" / "registry.sqlite") as opened:
        yield opened


def audit_lines(registry: Registry) -> list[dict[str, object]]:
    return [json.loads(line) for line in registry.audit_path.read_text().splitlines()]


def other_process(path: Path, code: str) -> None:
    """Runs `code` with `registry` open on `path` in a separate Python process."""
    script = "from pathlib import Path\nfrom orgs.registry import Registry\n"
    script += f"registry = Registry(Path({str(path)!r}))\n" + textwrap.dedent(code)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_a_new_registry_is_private_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "var" / "orgs" / "registry.sqlite"
    with Registry(path) as registry:
        registry.add("MUT1", "Mutuelle Une")
        # SQLite gives its write-ahead log and shared-memory index the database's mode.
        for companion in ("registry.sqlite-wal", "registry.sqlite-shm"):
            assert stat.S_IMODE((path.parent / companion).stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var" / "orgs" / "registry.audit.log").stat().st_mode) == 0o600
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    with Registry(path) as reopened:
        assert [o.code for o in reopened.organisations()] == ["MUT1"]


def test_an_organisation_holds_up_to_five_labelled_mailboxes_in_the_avenants_order(
    registry: Registry,
) -> None:
    registry.add("mut1", "Mutuelle  Une")
    for n in (3, 1, 2, 5, 4):
        registry.add_mailbox("MUT1", f"decomptes{n}@Mutuelle-Une.MC", f"Ligne {n}")
    with pytest.raises(Refused, match="already has 5 mailboxes"):
        registry.add_mailbox("MUT1", "decomptes6@mutuelle-une.mc", "Ligne 6")
    organisation = registry.organisation("mut1")
    assert organisation is not None
    assert (organisation.code, organisation.name, organisation.state) == (
        "MUT1",
        "Mutuelle Une",
        "active",
    )
    assert [m.label for m in organisation.mailboxes] == [f"Ligne {n}" for n in (3, 1, 2, 5, 4)]
    assert organisation.mailboxes[0] == Mailbox("decomptes3@mutuelle-une.mc", "Ligne 3")
    assert organisation.domains == {"mutuelle-une.mc"}


def test_the_file_itself_refuses_a_sixth_mailbox(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    for n in range(5):
        registry.add_mailbox("MUT1", f"d{n}@mutuelle.mc", f"L{n}")
    db = sqlite3.connect(registry.path)
    with pytest.raises(sqlite3.IntegrityError, match="at most 5 mailboxes"):
        db.execute(
            "INSERT INTO mailboxes VALUES ('x@mutuelle.mc', 'x@mutuelle.mc', 'mutuelle.mc',"
            " 'L', 'MUT1', '2026-01-01T00:00:00Z')"
        )
    db.close()


def test_a_mailbox_belongs_to_one_organisation(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.add("ASS2", "Assurance Deux")
    registry.add_mailbox("MUT1", "decomptes@mutuelle.mc", "Décomptes")
    already = r"decomptes@mutuelle\.mc is already registered to organisation MUT1"
    with pytest.raises(Refused, match=already):
        registry.add_mailbox("ASS2", "DECOMPTES@MUTUELLE.MC.", "Vol")
    with pytest.raises(Refused, match="already registered to this organisation"):
        registry.add_mailbox("MUT1", '"decomptes"@mutuelle.mc', "Encore")
    owner = registry.mailbox_owner("Decomptes@Mutuelle.MC")
    assert owner is not None
    assert owner.code == "MUT1"
    assert registry.mailbox_owner("autre@mutuelle.mc") is None
    assert [o.code for o in registry.domain_owners("MUTUELLE.mc")] == ["MUT1"]
    assert registry.domain_owners("ailleurs.mc") == []


def test_two_organisations_may_share_a_domain(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.add("MUT2", "Mutuelle Deux")
    registry.add_mailbox("MUT1", "une@courtier.mc", "Une")
    registry.add_mailbox("MUT2", "deux@courtier.mc", "Deux")
    assert [o.code for o in registry.domain_owners("courtier.mc")] == ["MUT1", "MUT2"]
    assert registry.mailbox_domains() == {"courtier.mc"}


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("decomptes", "no @"),
        ("@mutuelle.mc", "empty local part"),
        ("a..b@mutuelle.mc", "invalid local part"),
        (".a@mutuelle.mc", "invalid local part"),
        ("a b@mutuelle.mc", "invalid local part"),
        ("a@b@mutuelle.mc", "invalid local part"),
        ("x" * 65 + "@mutuelle.mc", "longer than 64"),
        ("a@mutuelle", "no dot"),
        ("a@-mutuelle.mc", "invalid label"),
        ("a@mutuelle_une.mc", "invalid label"),
        ("a@[192.0.2.1]", "address literal"),
        ("a@192.0.2.1", "numeric label"),
        ("a@mutuelle..mc", "invalid label"),
        ("é@mutuelle.mc", "non-ASCII"),
        ("a@xn--zz.mc", "invalid A-label"),
        ("a@" + "a" * 64 + ".mc", "invalid label"),
    ],
)
def test_a_malformed_address_is_refused_with_the_reason(
    registry: Registry, address: str, reason: str
) -> None:
    registry.add("MUT1", "Mutuelle Une")
    with pytest.raises(AddressError, match=reason):
        registry.add_mailbox("MUT1", address, "Label")
    organisation = registry.organisation("MUT1")
    assert organisation is not None
    assert organisation.mailboxes == ()


def test_addresses_compare_by_ascii_domain_and_caseless_local_part() -> None:
    assert parse_address("Décomptes@Mutuelle.MC".replace("é", "e")).address == (
        "Decomptes@mutuelle.mc"
    )
    idn = parse_address("remboursements@Société-Générale.mc")
    # The A-label as Python's own (IDNA 2003) codec spells it: the two agree on this name.
    assert idn.domain == "société-générale.mc".encode("idna").decode()
    assert parse_address(f"Remboursements@{idn.domain.upper()}").key == idn.key
    assert parse_address('"jean.dupont"@m.mc').address == "jean.dupont@m.mc"
    assert parse_address('"jean dupont"@m.mc').address == '"jean dupont"@m.mc'
    assert parse_address("<a+b@m.mc>").address == "a+b@m.mc"


def test_names_labels_and_codes_are_checked(registry: Registry) -> None:
    with pytest.raises(Refused, match="not an organisation code"):
        registry.add("MUT 1", "Mutuelle")
    with pytest.raises(Refused, match="name is empty"):
        registry.add("MUT1", "  ")
    registry.add("MUT1", "Mutuelle Une")
    with pytest.raises(Refused, match="already registered"):
        registry.add("mut1", "Autre")
    with pytest.raises(Refused, match="label holds control"):
        registry.add_mailbox("MUT1", "a@m.mc", "Ligne\x1b[31m")
    with pytest.raises(NotFound, match="no organisation NOPE"):
        registry.add_mailbox("NOPE", "a@m.mc", "L")


def test_an_ended_organisation_can_no_longer_change(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.add_mailbox("MUT1", "decomptes@mutuelle.mc", "Décomptes")
    ended = registry.end("MUT1")
    assert ended.state == ENDED
    assert ended.ended
    for change in (
        lambda: registry.add_mailbox("MUT1", "autre@mutuelle.mc", "L"),
        lambda: registry.remove_mailbox("MUT1", "decomptes@mutuelle.mc"),
        lambda: registry.end("MUT1"),
        lambda: registry.create_token("MUT1"),
    ):
        with pytest.raises(Refused, match="MUT1 has ended"):
            change()
    # Its mailboxes stay registered to it, so mail to them can be refused by name.
    owner = registry.mailbox_owner("decomptes@mutuelle.mc")
    assert owner is not None
    assert owner.state == ENDED


def test_a_mailbox_can_be_removed_and_registered_elsewhere(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.add("MUT2", "Mutuelle Deux")
    registry.add_mailbox("MUT1", "decomptes@mutuelle.mc", "Décomptes")
    with pytest.raises(NotFound, match="not a mailbox of organisation MUT2"):
        registry.remove_mailbox("MUT2", "decomptes@mutuelle.mc")
    assert registry.remove_mailbox("MUT1", "DECOMPTES@mutuelle.mc").label == "Décomptes"
    registry.add_mailbox("MUT2", "decomptes@mutuelle.mc", "Repris")
    owner = registry.mailbox_owner("decomptes@mutuelle.mc")
    assert owner is not None
    assert owner.code == "MUT2"


def test_a_token_is_shown_once_and_only_its_hash_is_stored(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    listed, secret = registry.create_token("MUT1")
    assert tokens.looks_like_token(secret)
    assert len(secret) == 47
    assert listed.hint == secret[-4:]
    assert listed.state == "active"
    owner = registry.token_owner(secret)
    assert isinstance(owner, Organisation)
    assert owner.code == "MUT1"
    for name in ("registry.sqlite", "registry.sqlite-wal", "registry.audit.log"):
        path = registry.path.parent / name
        if path.exists():
            assert secret.encode() not in path.read_bytes()
            assert secret[4:].encode() not in path.read_bytes()
    assert registry.tokens("MUT1") == [listed]


@pytest.mark.parametrize(
    "presented", ["", "spt_", "Bearer x", "spt_" + "A" * 43, "spt_" + "A" * 44, "x" * 47]
)
def test_an_unknown_token_has_no_owner(registry: Registry, presented: str) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.create_token("MUT1")
    assert registry.token_owner(presented) is None


def test_a_revoked_token_or_an_ended_organisations_token_has_no_owner(
    registry: Registry,
) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.add("MUT2", "Mutuelle Deux")
    first, first_secret = registry.create_token("MUT1")
    _, second_secret = registry.create_token("MUT1")
    _, other_secret = registry.create_token("MUT2")
    with pytest.raises(NotFound, match="MUT2 has no token"):
        registry.revoke_token("MUT2", first.id)
    revoked = registry.revoke_token("MUT1", first.id)
    assert revoked.state == "revoked"
    with pytest.raises(Refused, match="already revoked"):
        registry.revoke_token("MUT1", first.id)
    assert registry.token_owner(first_secret) is None
    assert registry.token_owner(second_secret) is not None
    assert [t.state for t in registry.tokens("MUT1")] == ["revoked", "active"]
    registry.end("MUT1")
    assert registry.token_owner(second_secret) is None
    assert registry.token_owner(other_secret) is not None


def test_a_change_by_another_process_is_seen_without_reopening(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    _, secret = registry.create_token("MUT1")
    assert registry.mailbox_owner("decomptes@mutuelle.mc") is None  # cached from here on
    assert registry.token_owner(secret) is not None
    other_process(
        registry.path,
        """
        registry.add_mailbox("MUT1", "decomptes@mutuelle.mc", "Décomptes")
        registry.end("MUT1")
        """,
    )
    owner = registry.mailbox_owner("decomptes@mutuelle.mc")
    assert owner is not None
    assert owner.state == ENDED
    assert registry.token_owner(secret) is None


def test_every_change_and_refusal_is_audited_without_secrets(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.add_mailbox("MUT1", "decomptes@Mutuelle.mc", "Décomptes")
    token, secret = registry.create_token("MUT1")
    with pytest.raises(Refused):
        registry.add_mailbox("MUT1", "decomptes@mutuelle.mc", "Encore")
    registry.revoke_token("MUT1", token.id)
    lines = audit_lines(registry)
    assert [(line["operation"], line["outcome"]) for line in lines] == [
        ("add", "ok"),
        ("mailbox-add", "ok"),
        ("token-create", "ok"),
        ("mailbox-add", "refused"),
        ("token-revoke", "ok"),
    ]
    assert lines[1]["address"] == "decomptes@mutuelle.mc"
    assert lines[2]["token"] == token.id
    assert "already registered" in str(lines[3]["error"])
    assert {"at", "user", "pid", "code"} <= set(lines[0])
    assert secret not in registry.audit_path.read_text()


def test_a_refused_change_leaves_the_registry_as_it_was(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    before = registry.organisations()
    with pytest.raises(AddressError):
        registry.add_mailbox("MUT1", "pas une adresse", "L")
    assert registry.organisations() == before


def test_a_file_that_is_not_a_registry_is_an_error_not_a_new_registry(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"not a database, but somebody's file" * 100)
    with pytest.raises(RegistryError, match="is not a usable registry"):
        Registry(path)
    assert path.read_bytes().startswith(b"not a database")


# ---------------------------------------------------------------- exact shortcuts

_LOCALS = st.sampled_from(
    ["decomptes", "Decomptes", "DECOMPTES", '"decomptes"', '"de comptes"', "de..comptes", "",
     "flux", "x", "décomptes", '"a\\"b"', "a@b"]
)  # fmt: skip
_DOMAINS = st.sampled_from(
    ["mutuelle.example", "Mutuelle.Example", "mutuelle.example.", " mutuelle.example",
     "assureur.mc", "ASSUREUR.MC", "xn--assureur-9xa.mc", "assureuré.mc", "Assureuré.MC",
     "autre.example", "mutuelle", "[192.0.2.1]", "", "-bad.example", "a..example",
     "sub.mutuelle.example", "example.123"]
)  # fmt: skip


@st.composite
def _addresses(draw: st.DrawFn) -> str:
    address = f"{draw(_LOCALS)}@{draw(_DOMAINS)}"
    if draw(st.booleans()):
        address = f"<{address}>"
    return draw(st.sampled_from(["", " "])) + address + draw(st.sampled_from(["", " \t"]))


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("orgs") / "registry.sqlite") as opened:
        opened.add("MUT1", "Mutuelle Une")
        opened.add_mailbox("MUT1", "decomptes@mutuelle.example", "Décomptes")
        opened.add("IDN1", "Assureur accentué")
        opened.add_mailbox("IDN1", "Flux@assureuré.mc", "Flux")
        opened.end("IDN1")
        yield opened


@settings(max_examples=400, deadline=None)
@given(address=st.one_of(_addresses(), st.text(max_size=40)))
def test_a_mailbox_is_found_as_a_parse_of_its_address_finds_it(
    populated: Registry, address: str
) -> None:
    """mailbox_owner skips the parse of an address at a domain without mailboxes: the
    answer is the one the parsed key gives, for every address."""
    keys = {
        parse_address(m.address).key: org
        for org in populated.organisations()
        for m in org.mailboxes
    }
    try:
        expected = keys.get(parse_address(address).key)
    except AddressError:
        expected = None
    assert populated.mailbox_owner(address) == expected


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_DOMAINS, st.text(max_size=30)))
def test_a_domain_normalises_the_same_from_the_cache(text: str) -> None:
    def normalised(function: Callable[[str], str]) -> str | None:
        try:
            return function(text)
        except AddressError as exc:
            return str(exc)

    uncached = normalised(normalise_domain.__wrapped__)
    assert normalised(normalise_domain) == uncached
    assert normalised(normalise_domain) == uncached  # the second time, from the cache


def test_a_view_is_the_registry_as_of_one_moment(registry: Registry) -> None:
    registry.add("MUT1", "Mutuelle Une")
    registry.add_mailbox("MUT1", "decomptes@mutuelle.example", "Décomptes")
    before = registry.view()
    registry.end("MUT1")
    registry.add("MUT2", "Mutuelle Deux")
    registry.add_mailbox("MUT2", "soins@autre.example", "Soins")
    owner = before.mailbox_owner("Decomptes@MUTUELLE.example")
    assert owner is not None
    assert owner.active
    assert before.mailbox_owner("soins@autre.example") is None
    assert before.domain_owners("autre.example") == []
    after = registry.view()
    owner = after.mailbox_owner("decomptes@mutuelle.example")
    assert owner is not None
    assert not owner.active
    assert [o.code for o in after.domain_owners("AUTRE.example")] == ["MUT2"]

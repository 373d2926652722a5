"""The `sealpost-orgs` command line: every change and every refusal, with the message ops
read and the exit code scripts test. Run in-process through main(argv), and as the
installed program (a token printed by one process, the registry read by another)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orgs.__main__ import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_REGISTRY,
    EXIT_USAGE,
    main,
)
from orgs.registry import Registry

ORGS_BIN = Path(sys.executable).parent / "sealpost-orgs"


class Cli:
    """Runs main() against one registry and returns (exit code, stdout, stderr)."""

    def __init__(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.path = path
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--registry", str(self.path), *args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path / "registry.sqlite", capsys)


@pytest.fixture
def insurer(cli: Cli) -> Cli:
    """A registry with MUT1 and one mailbox."""
    assert cli("add", "MUT1", "--name", "Mutuelle Une")[0] == EXIT_OK
    assert cli("mailbox", "add", "MUT1", "decomptes@mutuelle.mc", "--label", "Décomptes")[0] == 0
    return cli


def test_ops_registers_an_insurer_as_its_avenant_lists_it(insurer: Cli) -> None:
    code, out, _ = insurer("mailbox", "add", "mut1", "Soins@Mutuelle.MC", "--label", "Soins")
    assert code == EXIT_OK
    assert "Soins@mutuelle.mc (Soins) to MUT1: 2 of 5 mailboxes" in out
    code, out, _ = insurer("show", "MUT1", "--json")
    assert code == EXIT_OK
    shown = json.loads(out)
    assert shown["state"] == "active"
    assert shown["mailboxes"] == [
        {"address": "decomptes@mutuelle.mc", "label": "Décomptes"},
        {"address": "Soins@mutuelle.mc", "label": "Soins"},
    ]
    code, out, _ = insurer("list")
    assert code == EXIT_OK
    assert out.splitlines()[1].split() == ["MUT1", "active", "2", "Mutuelle", "Une"]
    code, out, _ = insurer("list", "--json")
    assert [o["code"] for o in json.loads(out)] == ["MUT1"]


def test_a_sixth_mailbox_is_refused(insurer: Cli) -> None:
    for n in range(2, 6):
        assert insurer("mailbox", "add", "MUT1", f"d{n}@mutuelle.mc", "--label", f"L{n}")[0] == 0
    code, out, err = insurer("mailbox", "add", "MUT1", "d6@mutuelle.mc", "--label", "L6")
    assert code == EXIT_REFUSED
    assert out == ""
    assert "refused: organisation MUT1 already has 5 mailboxes" in err


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("decomptes.mutuelle.mc", "it has no @"),
        ("jean..dupont@mutuelle.mc", "invalid local part"),
        ("decomptes@mutuelle", "has no dot"),
        ("decomptes@[10.0.0.1]", "address literal"),
    ],
)
def test_a_malformed_address_is_refused(insurer: Cli, address: str, message: str) -> None:
    code, _, err = insurer("mailbox", "add", "MUT1", address, "--label", "L")
    assert code == EXIT_REFUSED
    assert message in err
    assert err.startswith("sealpost-orgs: error: refused:")


def test_a_mailbox_of_another_insurer_is_refused(insurer: Cli) -> None:
    assert insurer("add", "ASS2", "--name", "Assurance Deux")[0] == EXIT_OK
    code, _, err = insurer("mailbox", "add", "ASS2", "DECOMPTES@mutuelle.mc", "--label", "L")
    assert code == EXIT_REFUSED
    assert "decomptes@mutuelle.mc is already registered to organisation MUT1" in err


def test_an_unknown_insurer_is_not_found(cli: Cli) -> None:
    assert cli("add", "MUT1", "--name", "Mutuelle Une")[0] == EXIT_OK
    for args in (
        ("show", "NOPE"),
        ("mailbox", "add", "NOPE", "a@b.mc", "--label", "L"),
        ("end", "NOPE"),
        ("token", "create", "NOPE"),
        ("token", "list", "NOPE"),
        ("token", "revoke", "MUT1", "tok_000000000000"),
    ):
        code, _, err = cli(*args)
        assert code == EXIT_NOT_FOUND, args
        assert "NOPE" in err or "tok_000000000000" in err


def test_an_ended_insurer_cannot_change(insurer: Cli) -> None:
    code, out, _ = insurer("end", "MUT1")
    assert code == EXIT_OK
    assert "Ended MUT1" in out
    for args in (
        ("mailbox", "add", "MUT1", "autre@mutuelle.mc", "--label", "L"),
        ("mailbox", "remove", "MUT1", "decomptes@mutuelle.mc"),
        ("end", "MUT1"),
        ("token", "create", "MUT1"),
    ):
        code, _, err = insurer(*args)
        assert code == EXIT_REFUSED, args
        assert "MUT1 has ended" in err
    assert json.loads(insurer("show", "MUT1", "--json")[1])["state"] == "ended"


def test_reading_a_registry_that_does_not_exist_is_an_error_not_an_empty_list(cli: Cli) -> None:
    code, _, err = cli("list")
    assert code == EXIT_REGISTRY
    assert "no registry at" in err
    assert not cli.path.exists()


def test_a_damaged_registry_is_a_registry_error(cli: Cli) -> None:
    cli.path.write_bytes(b"\0" * 4096)
    code, _, err = cli("add", "MUT1", "--name", "Mutuelle Une")
    assert code == EXIT_REGISTRY
    assert "is not a usable registry" in err


def test_usage_errors(cli: Cli) -> None:
    assert cli("add", "MUT1")[0] == EXIT_USAGE  # --name is required
    assert cli("mailbox", "add", "MUT1", "a@b.mc")[0] == EXIT_USAGE  # --label too
    assert cli("frobnicate")[0] == EXIT_USAGE


def run(registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEALPOST_ORGS_REGISTRY": str(registry)}
    return subprocess.run(
        [str(ORGS_BIN), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_a_token_is_printed_once_listed_by_hint_and_revoked_by_id(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    assert run(path, "add", "MUT1", "--name", "Mutuelle Une").returncode == EXIT_OK
    created = run(path, "token", "create", "MUT1")
    assert created.returncode == EXIT_OK
    token = created.stdout.strip()
    assert token.startswith("spt_")
    assert "shown this once" in created.stderr
    with Registry(path) as registry:
        owner = registry.token_owner(token)
        assert owner is not None
        assert owner.code == "MUT1"
        listing = run(path, "token", "list", "MUT1", "--json")
        (listed,) = json.loads(listing.stdout)
        assert listed["hint"] == token[-4:]
        assert listed["state"] == "active"
        assert token not in listing.stdout
        assert token not in run(path, "show", "MUT1").stdout
        revoked = run(path, "token", "revoke", "MUT1", listed["id"])
        assert revoked.returncode == EXIT_OK
        # The same long-lived Registry sees the other process's revocation.
        assert registry.token_owner(token) is None
    assert "revoked" in run(path, "token", "list", "MUT1").stdout
    for name in (path, path.with_suffix(".audit.log")):
        assert token[4:] not in name.read_bytes().decode("utf-8", "replace")

"""The `sealpost-keys` command line: every transition and every refusal, with the message
ops read and the exit code scripts test. Run in-process through main(argv), and as the
installed program for the `make run` path."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from keys.__main__ import (
    EXIT_BUSY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STORE,
    EXIT_USAGE,
    build_parser,
    main,
)

DOMAIN = "caisses.example"
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
KEYS_BIN = Path(sys.executable).parent / "sealpost-keys"
COMMANDS = [
    "init", "rotate", "activate", "withdraw", "revoke", "destroy", "log-key", "witness", "list",
    "dns", "export-public",
]  # fmt: skip


class Cli:
    """Runs main() against one store and returns (exit code, stdout, stderr)."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = tmp_path / "keys"
        self.public = tmp_path / "public"
        self.capsys = capsys

    def __call__(self, *args: str, now: dt.datetime = NOW) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--store", str(self.store), "--public", str(self.public), *args], now=now)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "cli test passphrase")
    monkeypatch.delenv("SEALPOST_KEYS_PROPAGATION_HOURS", raising=False)
    return Cli(tmp_path, capsys)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help_with_the_exit_codes(
    command: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "3  refused: the key lifecycle forbids it" in out
    assert "6  busy: another sealpost-keys command is changing the store" in out
    assert "SEALPOST_KEYS_PASSPHRASE" in out
    if command is None:
        assert all(c in out for c in COMMANDS)


def test_the_passphrase_cannot_be_given_on_the_command_line() -> None:
    options = {o for a in build_parser()._actions for o in a.option_strings}
    assert not any("pass" in o for o in options)


def test_the_whole_lifecycle_and_its_refusals(cli: Cli) -> None:
    code, out, err = cli("init", "--domain", DOMAIN)
    assert code == EXIT_OK, err
    assert "Initialised caisses.example: generation 202611 is active" in out
    assert "s202611r._domainkey.caisses.example. 3600 IN TXT" in out

    code, _, err = cli("init", "--domain", DOMAIN)
    assert code == EXIT_REFUSED
    assert "refused: caisses.example is already initialised" in err
    assert "--exist-ok" in err

    code, out, _ = cli("init", "--domain", DOMAIN, "--exist-ok")
    assert code == EXIT_OK
    assert "already initialised" in out
    assert "nothing changed" in out
    assert "s202611e._domainkey.caisses.example." in out

    code, _, err = cli("activate", "--domain", DOMAIN)
    assert code == EXIT_REFUSED
    assert "has no pending generation to activate" in err

    code, out, _ = cli("rotate", "--domain", DOMAIN, now=NOW + HOUR)
    assert code == EXIT_OK
    assert "Created generation 202611b of caisses.example, pending" in out
    assert out.count("IN TXT") == 2
    assert "sealpost-keys activate --domain caisses.example" in out

    code, _, err = cli("rotate", "--domain", DOMAIN, now=NOW + 2 * HOUR)
    assert code == EXIT_REFUSED
    assert "already has a pending generation 202611b" in err

    code, _, err = cli("activate", "--domain", DOMAIN, now=NOW + 3 * HOUR)
    assert code == EXIT_REFUSED
    assert "created 2.0 h ago, less than the propagation time of 48 h" in err
    assert "activate from 2026-11-25T11:00:00Z on, or use --force" in err

    code, _, err = cli("withdraw", "s202611r", now=NOW + 3 * HOUR)
    assert code == EXIT_REFUSED
    assert "DKIM key s202611r is active; it cannot become withdrawn" in err
    assert "activate another generation first" in err

    code, _, err = cli("withdraw", "s202611be", now=NOW + 3 * HOUR)
    assert code == EXIT_REFUSED
    assert "s202611be is pending" in err

    code, out, _ = cli("activate", "--domain", DOMAIN, now=NOW + 49 * HOUR)
    assert code == EXIT_OK
    assert "caisses.example now signs with generation 202611b" in out
    assert "Generation 202611 is retired" in out
    assert "sealpost-keys withdraw s202611r s202611e" in out

    serial = str(listing(cli)[("202611", "ecdsa-p256")]["id"])
    code, _, err = cli("withdraw", serial, now=NOW + 50 * HOUR)
    assert code == EXIT_REFUSED
    assert "certificates are not published in DNS" in err

    code, _, err = cli("withdraw", "s202611x", now=NOW + 50 * HOUR)
    assert code == EXIT_NOT_FOUND
    assert "no DKIM selector or certificate serial 's202611x'" in err

    # The runbook's wait: 7 days after the retirement at NOW + 49 h, or as --wait says.
    code, _, err = cli("withdraw", "s202611r", "s202611e", now=NOW + 50 * HOUR)
    assert code == EXIT_REFUSED
    assert "DKIM key s202611r was retired 0.0 days ago, less than the wait of 7 days" in err
    assert "Withdraw it from 2026-12-02T11:00:00Z on, or use --force" in err
    code, _, err = cli("withdraw", "--wait", "1", "s202611r", now=NOW + 50 * HOUR)
    assert code == EXIT_REFUSED
    assert "Withdraw it from 2026-11-26T11:00:00Z on" in err
    assert listing(cli)[("202611", "rsa-2048")]["state"] == "retired"  # nothing moved

    code, out, _ = cli("withdraw", "--force", "s202611r", "s202611e", now=NOW + 50 * HOUR)
    assert code == EXIT_OK
    assert "Withdrawn s202611r" in out
    assert "Withdrawn s202611e" in out

    code, _, err = cli("withdraw", "s202611r", now=NOW + 51 * HOUR)
    assert code == EXIT_REFUSED
    assert "DKIM key s202611r is withdrawn; it cannot become withdrawn" in err

    rows = listing(cli)
    assert rows[("202611", "rsa-2048")]["state"] == "withdrawn"
    assert rows[("202611", "ed25519")]["state"] == "withdrawn"
    assert rows[("202611", "ecdsa-p256")]["state"] == "retired"
    assert rows[("202611b", "rsa-2048")]["state"] == "active"

    # A withdrawn key can still be revoked: old signatures made with it get flagged.
    code, out, err = cli(
        "revoke", "s202611e", "--compromised-at", "2026-11-23T09:00:00Z",
        "--reason", "old backup stolen", now=NOW + 52 * HOUR,
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "Revoked DKIM key s202611e of caisses.example (generation 202611)" in out
    assert "NO active signing key" not in err


def listing(cli: Cli) -> dict[tuple[str, str], dict[str, object]]:
    """`list --json` rows by (generation, algorithm)."""
    code, out, err = cli("list", "--json")
    assert code == EXIT_OK, err
    return {(row["generation"], row["algorithm"]): row for row in json.loads(out)}


def test_revoking_the_active_key_says_the_domain_cannot_sign(cli: Cli) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    code, out, err = cli(
        "revoke", "s202611r", "--compromised-at", "2026-11-23T08:30:00+01:00",
        "--reason", "key file copied", now=NOW + HOUR,
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "Revoked DKIM key s202611r of caisses.example (generation 202611), " in out
    assert "compromised at 2026-11-23T07:30:00Z: key file copied" in out
    assert 's202611r._domainkey.caisses.example. 3600 IN TXT "v=DKIM1; k=rsa; p="' in out
    assert "caisses.example now has NO active signing key" in err
    assert "the gateway answers 451" in err
    assert "sealpost-keys rotate --domain caisses.example" in err  # no pending one to activate

    code, out, _ = cli("dns", "--domain", DOMAIN)
    assert code == EXIT_OK
    assert '"v=DKIM1; k=rsa; p="' in out
    rows = listing(cli)
    assert rows[("202611", "rsa-2048")]["state"] == "revoked"
    assert rows[("202611", "ed25519")]["state"] == "retired"
    assert rows[("202611", "ecdsa-p256")]["state"] == "retired"

    code, _, err = cli(
        "revoke", "s202611r", "--compromised-at", "2026-11-23T09:00:00Z", "--reason", "again",
        now=NOW + 2 * HOUR,
    )  # fmt: skip
    assert code == EXIT_REFUSED
    assert "revoked is final" in err

    # The way back: rotate, then activate the new generation at once.
    assert cli("rotate", "--domain", DOMAIN, now=NOW + 2 * HOUR)[0] == EXIT_OK
    code, out, _ = cli("activate", "--domain", DOMAIN, "--force", now=NOW + 2 * HOUR)
    assert code == EXIT_OK
    assert "now signs with generation 202611b" in out


def test_revoking_a_certificate_by_serial_with_a_pending_generation(cli: Cli) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    assert cli("rotate", "--domain", DOMAIN)[0] == EXIT_OK
    serial = str(listing(cli)[("202611", "ecdsa-p256")]["id"])
    code, out, err = cli(
        "revoke", serial.upper(), "--compromised-at", "2026-11-23T10:00:00Z", "--reason", "x",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert f"Revoked certificate {serial} of caisses.example" in out
    assert "IN TXT" not in out  # certificates are not in DNS
    assert "activate the pending generation 202611b" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--compromised-at", "2026-11-24T10:00:00Z"], EXIT_REFUSED, "is in the future"),
        (["--compromised-at", "yesterday"], EXIT_USAGE, "is not an ISO 8601 time"),
        (["--compromised-at", "2026-11-23T09:00:00"], EXIT_USAGE, "has no time zone"),
    ],
)
def test_revocation_times_are_checked(cli: Cli, args: list[str], code: int, message: str) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    result, _, err = cli("revoke", "s202611r", *args, "--reason", "r")
    assert result == code
    assert message in err


def test_revoking_an_unknown_key_is_not_found(cli: Cli) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    code, _, err = cli("revoke", "deadbeef", "--compromised-at", "2026-11-23T09:00:00Z",
                       "--reason", "r")  # fmt: skip
    assert code == EXIT_NOT_FOUND
    assert "no DKIM selector or certificate serial 'deadbeef'" in err


def test_the_propagation_time_is_configurable(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    assert cli("rotate", "--domain", DOMAIN)[0] == EXIT_OK
    monkeypatch.setenv("SEALPOST_KEYS_PROPAGATION_HOURS", "2")
    code, _, err = cli("activate", "--domain", DOMAIN, now=NOW + HOUR)
    assert code == EXIT_REFUSED
    assert "propagation time of 2 h" in err
    code, _, err = cli("activate", "--domain", DOMAIN, "--propagation", "0.5", now=NOW + HOUR)
    assert code == EXIT_OK, err
    monkeypatch.setenv("SEALPOST_KEYS_PROPAGATION_HOURS", "two")
    code, _, err = cli("activate", "--domain", DOMAIN)
    assert code == EXIT_USAGE
    assert "SEALPOST_KEYS_PROPAGATION_HOURS: 'two' is not a number of hours" in err


def test_store_problems_are_exit_7_and_unknown_domains_exit_4(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    for command in (["rotate", "--domain", DOMAIN], ["list"], ["dns", "--domain", DOMAIN]):
        code, _, err = cli(*command)
        assert code == EXIT_STORE
        assert "no key store at" in err
        assert "sealpost-keys init --domain DOMAIN" in err
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    code, _, err = cli("dns", "--domain", "other.example")
    assert code == EXIT_NOT_FOUND
    assert "the store has no domain 'other.example' (domains: caisses.example)" in err
    code, _, err = cli("rotate", "--domain", "bad/domain")
    assert code == EXIT_USAGE
    assert "is not a valid domain name" in err
    monkeypatch.setenv("SEALPOST_KEYS_PASSPHRASE", "wrong")
    code, _, err = cli("rotate", "--domain", DOMAIN)
    assert code == EXIT_STORE
    assert "wrong passphrase" in err


def test_a_busy_store_is_exit_6(cli: Cli) -> None:
    from keys import store

    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    with store.locked(cli.store):
        code, _, err = cli("rotate", "--domain", DOMAIN)
    assert code == EXIT_BUSY
    assert "is changing the store" in err


def test_list_shows_every_key_and_certificate(cli: Cli) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    assert cli("rotate", "--domain", DOMAIN)[0] == EXIT_OK
    code, out, _ = cli("list")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == [
        "DOMAIN", "GENERATION", "KIND", "ID", "ALGORITHM", "STATE", "SINCE", "CREATED",
        "PRIVATE", "SHA256",
    ]  # fmt: skip
    assert len(lines) == 1 + 1 + 6
    assert lines[1].split()[2:3] == ["root"]
    assert any(line.split()[3:6] == ["s202611br", "rsa-2048", "pending"] for line in lines)
    assert any(line.split()[3:6] == ["s202611e", "ed25519", "active"] for line in lines)
    rows = json.loads(cli("list", "--json")[1])
    assert {len(r["fingerprint"]) for r in rows} == {64}
    assert [r["kind"] for r in rows] == ["root", "dkim", "dkim", "cert", "dkim", "dkim", "cert"]
    assert rows[1]["history"] == [
        {"state": "pending", "at": "2026-11-23T10:00:00Z"},
        {"state": "active", "at": "2026-11-23T10:00:00Z"},
    ]


def test_make_run_path_with_nothing_configured(tmp_path: Path) -> None:
    """`make run` calls init --exist-ok then dns, in the project directory, with no
    passphrase configured: the first init creates var/keys.passphrase and says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALPOST_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KEYS_BIN), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip

    first = run("init", "--domain", DOMAIN, "--exist-ok")
    assert first.returncode == 0, first.stderr
    secret = tmp_path / "var" / "keys.passphrase"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "warning: created" in first.stderr
    assert "in production keep the passphrase elsewhere" in first.stderr
    assert (tmp_path / "var" / "public" / "archive.json").exists()

    second = run("init", "--domain", DOMAIN, "--exist-ok")
    assert second.returncode == 0
    assert second.stderr == ""
    assert "nothing changed" in second.stdout

    records = run("dns", "--domain", DOMAIN)
    assert records.returncode == 0
    assert records.stdout.count(" IN TXT ") == 2
    assert records.stdout in second.stdout  # init --exist-ok prints the same records

    refused = run("rotate", "--domain", "unknown.example")
    assert refused.returncode == EXIT_NOT_FOUND
    assert refused.stderr.startswith("sealpost-keys: error: the store has no domain")


def test_export_public_writes_the_archive_where_asked(cli: Cli, tmp_path: Path) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    target = tmp_path / "verifier-public"
    code, out, _ = cli("export-public", str(target))
    assert code == EXIT_OK
    assert out.splitlines() == [f"Wrote {target / 'root.pem'}", f"Wrote {target / 'archive.json'}"]
    archive = json.loads((target / "archive.json").read_text())
    assert [k["selector"] for k in archive["dkim_keys"]] == ["s202611r", "s202611e"]


def test_encrypt_all_is_chosen_when_the_store_is_created(cli: Cli) -> None:
    code, _, err = cli("init", "--domain", DOMAIN, "--encrypt-all")
    assert code == EXIT_OK, err
    assert cli("init", "--domain", "second.example", "--encrypt-all")[0] == EXIT_OK
    plain = cli.store.parent / "plain"
    assert (
        main(["--store", str(plain), "--public", str(cli.public), "init", "--domain", DOMAIN]) == 0
    )
    code = main(
        ["--store", str(plain), "--public", str(cli.public), "init", "--domain", "x.example",
         "--encrypt-all"],
    )  # fmt: skip
    assert code == EXIT_REFUSED
    assert "--encrypt-all applies to a new store only" in cli.capsys.readouterr().err


def key_paths(cli: Cli, generation: str) -> list[Path]:
    directory = cli.store / "domains" / DOMAIN / generation
    return [
        directory / name for name in ("dkim-rsa.key.pem", "dkim-ed25519.key.pem", "cms.key.pem")
    ]


def test_destroy_is_refused_for_an_active_or_a_pending_generation(cli: Cli) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    assert cli("rotate", "--domain", DOMAIN)[0] == EXIT_OK

    code, out, err = cli("destroy", "--domain", DOMAIN, "202611")
    assert code == EXIT_REFUSED
    assert "refused: generation 202611 of caisses.example is active" in err
    assert "destroyed when it is retired by the next activation" in err
    code, out, err = cli("destroy", "--domain", DOMAIN, "202611b")
    assert code == EXIT_REFUSED
    assert "refused: generation 202611b of caisses.example is pending" in err
    assert out == ""
    assert all(path.exists() for g in ("202611", "202611b") for path in key_paths(cli, g))

    code, _, err = cli("destroy", "--domain", DOMAIN, "202511")
    assert code == EXIT_NOT_FOUND
    assert "caisses.example has no generation '202511' (generations: 202611, 202611b)" in err


def test_activate_destroys_and_destroy_finishes_the_job(cli: Cli) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    assert cli("rotate", "--domain", DOMAIN)[0] == EXIT_OK
    rsa_file = key_paths(cli, "202611")[0]
    saved = rsa_file.read_bytes()
    serial = str(listing(cli)[("202611", "ecdsa-p256")]["id"])

    code, out, err = cli("activate", "--domain", DOMAIN, "--force", now=NOW + HOUR)
    assert code == EXIT_OK, err
    assert f"Destroyed the private keys of s202611r, s202611e, {serial}" in out
    assert not any(path.exists() for path in key_paths(cli, "202611"))
    assert all(path.exists() for path in key_paths(cli, "202611b"))
    rows = listing(cli)
    assert rows[("202611", "rsa-2048")]["private_key"] == "destroyed"
    assert rows[("202611", "rsa-2048")]["key_destroyed_at"] == "2026-11-23T11:00:00Z"
    assert rows[("202611b", "rsa-2048")]["private_key"] == "kept"
    assert rows[("202611b", "rsa-2048")]["key_destroyed_at"] is None
    table = cli("list")[1].splitlines()
    wanted = ["s202611r", "rsa-2048", "retired", "destroyed"]
    assert any(line.split()[3:6] + line.split()[8:9] == wanted for line in table)

    # A key file comes back (a backup restored into the store): destroy removes it again.
    rsa_file.write_bytes(saved)
    code, out, err = cli("destroy", "--domain", DOMAIN, "202611", now=NOW + 2 * HOUR)
    assert code == EXIT_OK, err
    assert "Destroyed the private keys of generation 202611 of caisses.example: s202611r" in out
    assert not rsa_file.exists()

    code, out, err = cli("destroy", "--domain", DOMAIN, "202611", now=NOW + 3 * HOUR)
    assert code == EXIT_OK, err
    assert out == (
        "No private key of generation 202611 of caisses.example is left in the store: "
        "nothing to destroy.\n"
    )
    outcomes = [
        (r["operation"], r["outcome"], r.get("keys"))
        for r in map(json.loads, (cli.store / "audit.log").read_text().splitlines())
        if r["operation"] == "destroy"
    ]
    assert outcomes == [
        ("destroy", "ok", ["s202611r", "s202611e", serial]),
        ("destroy", "ok", ["s202611r"]),
        ("destroy", "ok", []),
    ]


def test_destroy_also_sweeps_other_generations(cli: Cli) -> None:
    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    assert cli("rotate", "--domain", DOMAIN)[0] == EXIT_OK
    first_cms = key_paths(cli, "202611")[2]
    saved = first_cms.read_bytes()
    assert cli("activate", "--domain", DOMAIN, "--force")[0] == EXIT_OK
    assert cli("rotate", "--domain", DOMAIN)[0] == EXIT_OK
    assert cli("activate", "--domain", DOMAIN, "--force")[0] == EXIT_OK
    first_cms.write_bytes(saved)

    code, out, err = cli("destroy", "--domain", DOMAIN, "202611b")
    assert code == EXIT_OK, err
    assert "No private key of generation 202611b of caisses.example is left" in out
    serial = str(listing(cli)[("202611", "ecdsa-p256")]["id"])
    assert f"Also destroyed leftover private keys of keys out of service: {serial} " in out
    assert not first_cms.exists()


def test_log_key_writes_a_private_key_apart_and_registers_the_log(cli: Cli, tmp_path: Path) -> None:
    from keys.archive import load_archive
    from tlog import note

    assert cli("init", "--domain", DOMAIN)[0] == EXIT_OK
    key_file = tmp_path / "node" / "log.key"
    origin = "caisses.example/statements/gw1"
    code, out, _ = cli("log-key", "--origin", origin, "--out", str(key_file))
    assert code == EXIT_OK, out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    signer = note.Signer.from_text(key_file.read_text().strip())
    (log,) = load_archive(cli.public).logs
    assert (log.origin, log.key, log.path) == (
        origin,
        signer.verifier().text(),
        "log/caisses.example-statements-gw1",
    )
    assert log.started_at == NOW
    assert "PRIVATE" not in (cli.public / "archive.json").read_text()
    assert "PRIVATE" not in (cli.store / "state.json").read_text()
    # Never twice the same origin, never over an existing key file.
    assert cli("log-key", "--origin", origin, "--out", str(tmp_path / "other.key"))[0] == (
        EXIT_REFUSED
    )
    assert not (tmp_path / "other.key").exists()
    again = cli("log-key", "--origin", "caisses.example/statements/gw2", "--out", str(key_file))
    assert again[0] == EXIT_REFUSED
    assert key_file.read_text().strip() == signer.text()
    # What a container's one-shot init runs at every start: the same key, nothing changes.
    assert cli("log-key", "--origin", origin, "--out", str(key_file), "--exist-ok")[0] == EXIT_OK
    other = cli(
        "log-key", "--origin", "caisses.example/statements/gw2", "--out", str(key_file),
        "--exist-ok",
    )  # fmt: skip
    assert other[0] == EXIT_REFUSED

"""Settings: defaults, the TOML file, environment overrides, and readable errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway import settings
from gateway.settings import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), environ or {})
    return caught.value.errors


def test_no_file_gives_the_embedded_default() -> None:
    s = load(None, {})
    assert s.relay.listen == "127.0.0.1:2525"
    assert s.submission.listen == "127.0.0.1:2587"
    assert s.smtps.listen == ""
    assert s.metrics.listen == "127.0.0.1:9125"
    assert (s.keys.store, s.keys.public_archive, s.keys.init_domain) == (
        "var/keys",
        "var/public",
        "caisses.example",
    )
    assert (s.spool.path, s.delivery.route, s.delivery.maildir) == (
        "var/spool",
        "maildir",
        "var/outbox",
    )
    [client] = s.clients
    assert client.networks == ("127.0.0.0/8", "::1/128")
    assert client.sender_domains == ("caisses.example",)
    assert s.limits.max_line_length == 998


def test_file_values_replace_defaults(tmp_path: Path) -> None:
    s = load(
        write(
            tmp_path,
            """
            [limits]
            max_recipients = 7
            command_timeout = 60
            [sealing]
            content_types = ["application/pdf", "application/xml"]
            [[clients]]
            name = "batch"
            password_hash = "{}"
            sender_domains = ["caisses.example"]
            """.format(settings.hash_password("pw")),
        ),
        {},
    )
    assert s.limits.max_recipients == 7
    assert s.limits.command_timeout == 60.0  # an integer is a fine number of seconds
    assert s.sealing.content_types == ("application/pdf", "application/xml")
    assert [c.name for c in s.clients] == ["batch"]
    assert s.limits.max_connections == settings.LimitsSettings().max_connections


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_recipients = 7\n")
    s = load(
        path,
        {
            "SEALPOST_GATEWAY_LIMITS_MAX_RECIPIENTS": "9",
            "SEALPOST_GATEWAY_RELAY_LISTEN": "0.0.0.0:25",
            "SEALPOST_GATEWAY_TLS_SELF_SIGNED": "no",
            "SEALPOST_GATEWAY_SUBMISSION_LISTEN": "",
            "SEALPOST_GATEWAY_DELIVERY_TLS_REQUIRED_DOMAINS": "a.example, b.example",
            "SEALPOST_GATEWAY_GATEWAY_SHUTDOWN_GRACE": "2.5",
            "OTHER_VARIABLE": "ignored",
        },
    )
    assert s.limits.max_recipients == 9
    assert s.relay.listen == "0.0.0.0:25"
    assert s.tls.self_signed is False
    assert s.submission.listen == ""
    assert s.delivery.tls_required_domains == ("a.example", "b.example")
    assert s.gateway.shutdown_grace == 2.5


def test_a_table_keeps_the_defaults_of_the_keys_it_leaves_out(tmp_path: Path) -> None:
    # Behind HAProxy only the PROXY timeout is set; the relay must keep listening.
    from_file = load(write(tmp_path, "[relay]\nproxy_protocol_timeout = 3\n"), {})
    from_env = load(None, {"SEALPOST_GATEWAY_SUBMISSION_PROXY_PROTOCOL_TIMEOUT": "3"})
    assert (from_file.relay.listen, from_file.relay.proxy_protocol_timeout) == (
        "127.0.0.1:2525",
        3.0,
    )
    assert (from_env.submission.listen, from_env.submission.proxy_protocol_timeout) == (
        "127.0.0.1:2587",
        3.0,
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        [limits]
        max_recipients = "many"
        max_line_length = 2000
        typo_setting = 1
        [relay]
        listen = "localhost"
        [delivery]
        route = "carrier-pigeon"
        [[clients]]
        name = "batch"
        password_hash = "plain-text-password"
        networks = ["10.0.0.1/8"]
        """,
        {"SEALPOST_GATEWAY_LIMITS_MAX_CONECTIONS": "5", "SEALPOST_GATEWAY_NOPE_X": "1"},
    )
    text = "\n".join(errors)
    assert "limits.max_recipients: expected an integer, got 'many'" in text
    assert "limits.typo_setting: unknown setting" in text
    assert "SEALPOST_GATEWAY_LIMITS_MAX_CONECTIONS: [limits] has no setting 'max_conections'" in (
        text
    )
    assert "SEALPOST_GATEWAY_NOPE_X: no section [nope]" in text
    # Type errors stop before the checks across values; fix them and those show up.
    errors = errors_of(
        tmp_path,
        """
        [limits]
        max_line_length = 2000
        [relay]
        listen = "localhost"
        [delivery]
        route = "carrier-pigeon"
        [[clients]]
        name = "batch"
        password_hash = "plain-text-password"
        networks = ["10.0.0.1/8"]
        """,
    )
    text = "\n".join(errors)
    assert "limits.max_line_length: must be from 78 to 998" in text
    assert "relay.listen: expected host:port, got 'localhost'" in text
    assert "delivery.route: one of maildir, smarthost, mx" in text
    assert "clients[0] (batch).password_hash: expected scrypt$N$r$p$salt$key" in text
    assert "clients[0] (batch).networks: not a network in CIDR form" in text
    assert "clients[0] (batch).sender_domains: at least one domain" in text


def test_max_errors_0_means_no_limit_and_below_is_refused(tmp_path: Path) -> None:
    assert load(write(tmp_path, "[limits]\nmax_errors = 0\n"), {}).limits.max_errors == 0
    assert errors_of(tmp_path, "[limits]\nmax_errors = -1\n") == [
        "limits.max_errors: must be 0 (no limit) or more"
    ]
    loaded = load(None, {"SEALPOST_GATEWAY_LIMITS_MAX_ERRORS": "5"})
    assert loaded.limits.max_errors == 5
    assert settings.LimitsSettings().max_errors == 20


def test_tls_policy_settings_are_checked(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        [delivery]
        route = "mx"
        resolver = "dns.example"
        tls_ca_file = "/nonexistent/ca.pem"
        mta_sts_fetch_timeout = 0
        """,
    )
    assert errors == [
        "delivery.mta_sts_fetch_timeout: must be more than 0 seconds",
        "delivery.resolver: resolver 'dns.example' is not an IP address[:port]",
        "delivery.tls_ca_file: no file '/nonexistent/ca.pem'",
    ]
    loaded = load(None, {"SEALPOST_GATEWAY_DELIVERY_RESOLVER": "[::1]:5353"})
    assert loaded.delivery.resolver == "[::1]:5353"
    assert (loaded.delivery.mta_sts, loaded.delivery.dane) == (True, True)


def test_bad_toml_is_one_readable_error(tmp_path: Path) -> None:
    [error] = errors_of(tmp_path, "[limits\nmax = 1\n")
    assert error.startswith(f"{tmp_path / 'gateway.toml'}: not valid TOML")


def test_password_hash_round_trip() -> None:
    stored = settings.parse_password_hash(settings.hash_password("s3cret"))
    assert settings.verify_password(stored, b"s3cret")
    assert not settings.verify_password(stored, b"s3cret ")
    # Two hashes of one password differ (random salt).
    assert settings.hash_password("s3cret") != settings.hash_password("s3cret")


def test_render_masks_secrets() -> None:
    hashed = settings.hash_password("pw")
    s = load(
        None,
        {
            "SEALPOST_GATEWAY_DELIVERY_SMARTHOST_USERNAME": "relay",
            "SEALPOST_GATEWAY_DELIVERY_SMARTHOST_PASSWORD": "hunter2",
        },
    )
    s = settings.Settings(
        delivery=s.delivery,
        clients=(settings.ClientSettings("batch", hashed, (), ("caisses.example",)),),
    )
    text = settings.render(s)
    assert "hunter2" not in text
    assert hashed not in text
    assert 'smarthost_password = "********"' in text
    assert 'password_hash = "********"' in text
    # What is printed is itself a valid config with the same (non-secret) values.
    assert tomllib.loads(text)["limits"]["max_line_length"] == 998


def run_cli(
    *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])},
    )


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_recipients = 12\n")
    done = run_cli("check-config", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "max_recipients = 12" in done.stdout


def test_check_config_prints_errors_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_recipients = 0\n")
    done = run_cli("check-config", "--config", str(path))
    assert done.returncode == 2
    assert "limits.max_recipients: must be 1 or more" in done.stderr
    assert done.stdout == ""


def test_hash_password_reads_stdin() -> None:
    done = run_cli("hash-password", stdin="pa ss\n")
    assert done.returncode == 0
    stored = settings.parse_password_hash(done.stdout.strip())
    assert settings.verify_password(stored, b"pa ss")


def test_a_client_needs_a_name_and_a_way_in(tmp_path: Path) -> None:
    assert errors_of(tmp_path, '[[clients]]\nnetworks = ["10.0.0.0/8"]\n') == [
        "clients[0].name: required"
    ]
    errors = errors_of(tmp_path, '[[clients]]\nname = "x"\nsender_domains = ["a.example"]\n')
    assert errors == ["clients[0] (x): needs a password_hash, networks, or both"]

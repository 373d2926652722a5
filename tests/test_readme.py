"""The README's configuration reference is the settings code, in words: every setting of
the gateway and the verifier has exactly one row, with the default the code really has and
the environment variable (and option) that really sets it. A setting added, renamed or
given another default without its row changed fails here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from gateway import settings as gateway_settings
from keys import secrets as key_secrets
from verifier import __main__ as verifier_cli
from verifier import settings as verifier_settings

README = Path(__file__).parents[1] / "README.md"


def section(text: str, heading: str) -> str:
    """The body under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}")
    rest = text[start + len(heading) + 1 :]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{level}}} ", rest, re.M)]
    return rest[: min(ends, default=len(rest))]


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row (header and separator rows left out), without
    the backticks around code."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or re.fullmatch(r"\|(\s*-+\s*\|)+", line):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "setting":
            continue
        rows.append([re.sub(r"^`(.*)`$", r"\1", cell) for cell in cells])
    return rows


CONFIGURATION = section(README.read_text(encoding="utf-8"), "## Configuration")
GATEWAY = section(CONFIGURATION, "### Gateway (`sealpost-gateway --config FILE`)")
VERIFIER = section(CONFIGURATION, "### Verifier (`sealpost-verifier`)")


# ---------------------------------------------------------------------------- gateway


def rendered(settings: gateway_settings.Settings) -> dict[str, str]:
    """``section.key`` -> value as TOML, from what ``check-config`` prints."""
    values, table = {}, ""
    for line in gateway_settings.render(settings).splitlines():
        if header := re.fullmatch(r"\[\[?(\w+)\]\]?", line):
            table = header[1]
        elif line:
            key, _, value = line.partition(" = ")
            values[f"{table}.{key}"] = value
    return values


def gateway_rows() -> dict[str, list[str]]:
    rows = {row[0]: row[1:] for row in table_rows(GATEWAY)}
    assert len(rows) == len(table_rows(GATEWAY)), "a setting has two rows"
    return rows


# Values the validation would refuse if picked generically.
OTHER_VALUES = {
    "gateway.log_level": "debug",
    "delivery.route": "mx",
    "delivery.smarthost_tls": "opportunistic",
    "log.tsa_url": "http://127.0.0.1:1/tsa",
    "orgs.unregistered": "warn",
    "delivery.resolver": "127.0.0.1:5353",
    "delivery.tls_ca_file": str(README),  # validated as an existing file only
}


def other_gateway_value(name: str, default: object) -> tuple[str, object]:
    """A valid value different from ``default``: (as an environment value, as loaded)."""
    if name in OTHER_VALUES:
        return OTHER_VALUES[name], OTHER_VALUES[name]
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        # One less stays within every limit (max_line_length is at its ceiling).
        value = default - 1 if default > 1 else default + 1
        return str(value), value
    if isinstance(default, float):
        return str(default + 1), default + 1
    if isinstance(default, tuple):
        return "one.example,two.example", ("one.example", "two.example")
    if name.endswith("listen") or name == "delivery.smarthost":
        return "127.0.0.1:1", "127.0.0.1:1"
    return "other-value", "other-value"


def test_every_gateway_setting_has_its_row_and_no_row_is_stale() -> None:
    documented = {name for name in gateway_rows() if not name.startswith("clients.")}
    code = {name for name in rendered(gateway_settings.Settings()) if "clients." not in name}
    assert documented == code, (
        f"undocumented: {sorted(code - documented)}; not settings: {sorted(documented - code)}"
    )


def test_gateway_defaults_and_environment_variables_are_the_codes() -> None:
    defaults = rendered(gateway_settings.Settings())
    for name, cells in gateway_rows().items():
        if name.startswith("clients."):
            continue
        variable, default, meaning = cells
        table, key = name.split(".")
        assert variable == f"{gateway_settings.ENV_PREFIX}{table}_{key}".upper(), name
        assert default == defaults[name], name
        assert meaning, name


@pytest.mark.parametrize("name", sorted(n for n in gateway_rows() if not n.startswith("clients.")))
def test_each_documented_variable_sets_its_setting(name: str) -> None:
    variable = gateway_rows()[name][0]
    table, key = name.split(".")
    default = getattr(getattr(gateway_settings.Settings(), table), key)
    text, value = other_gateway_value(name, default)
    environ = {variable: text}
    if key == "smarthost_password":  # a password needs its user name
        environ["SEALPOST_GATEWAY_DELIVERY_SMARTHOST_USERNAME"] = "gateway"
    if key == "self_signed":  # without it, a TLS listener needs real files
        environ["SEALPOST_GATEWAY_SUBMISSION_LISTEN"] = ""
    loaded = gateway_settings.load(None, environ)
    assert getattr(getattr(loaded, table), key) == value


def test_every_client_setting_has_its_row() -> None:
    rows = {n.removeprefix("clients."): r for n, r in gateway_rows().items() if "clients." in n}
    fields = {f.name: f for f in dataclasses.fields(gateway_settings.ClientSettings)}
    assert set(rows) == set(fields)
    defaults = rendered(
        dataclasses.replace(
            gateway_settings.Settings(), clients=(gateway_settings.ClientSettings(name="x"),)
        )
    )
    for name, (default, meaning) in rows.items():
        if fields[name].default is dataclasses.MISSING:
            assert default == "required", name
        else:
            assert default == defaults[f"clients.{name}"], name
        assert meaning, name


def test_the_rules_around_the_tables_are_stated() -> None:
    # The environment rule, the credential format and where the passphrase comes from.
    assert f"{gateway_settings.ENV_PREFIX}<SECTION>_<KEY>" in GATEWAY
    assert "sealpost-gateway hash-password" in GATEWAY
    assert "scrypt$N$r$p$" in GATEWAY
    assert key_secrets.ENV_PASSPHRASE in GATEWAY
    assert key_secrets.ENV_PASSPHRASE_FILE in GATEWAY
    hashed = gateway_settings.hash_password("demo")
    assert re.fullmatch(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", hashed)


# ---------------------------------------------------------------------------- verifier


def verifier_defaults(instance: Any, prefix: str = "") -> dict[str, Any]:
    """``name`` or ``limits.name`` -> default, walking nested settings dataclasses."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value):
            values.update(verifier_defaults(value, f"{prefix}{field.name}."))
        else:
            values[prefix + field.name] = value
    return values


def shown(value: Any) -> str:
    """A default as the README writes it: lists comma-separated, nothing as `""`."""
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    return text or '""'


def verifier_rows() -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in table_rows(VERIFIER)}


def setting_of(settings: verifier_settings.Settings, name: str) -> Any:
    value: Any = settings
    for part in name.split("."):
        value = getattr(value, part)
    return value


OTHER_VERIFIER_VALUES = {
    "trusted_proxies": ("192.0.2.0/24,10.1.2.3", ("192.0.2.0/24", "10.1.2.3/32")),
    "proxy_header": ("forwarded", "forwarded"),
    "metrics_listen": ("127.0.0.1:1", "127.0.0.1:1"),
}


def other_value(name: str, default: Any) -> tuple[str, Any]:
    """A valid value different from ``default``: (as text, as the setting holds it)."""
    if name in OTHER_VERIFIER_VALUES:
        return OTHER_VERIFIER_VALUES[name]
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, Path):
        return "/srv/elsewhere", Path("/srv/elsewhere")
    return "192.0.2.7", "192.0.2.7"


def test_every_verifier_setting_has_its_row_with_the_codes_default() -> None:
    defaults = verifier_defaults(verifier_settings.Settings())
    rows = verifier_rows()
    assert set(rows) == set(defaults)
    environment = verifier_settings.to_env(verifier_settings.Settings())
    assert {row[1] for row in rows.values()} == set(environment)
    for name, (_, variable, default, meaning) in rows.items():
        assert default == shown(defaults[name]), name
        assert default == shown(environment[variable]), name
        assert meaning, name


@pytest.mark.parametrize("name", sorted(verifier_rows()))
def test_each_verifier_variable_and_option_sets_its_setting(name: str) -> None:
    option, variable, _, _ = verifier_rows()[name]
    text, value = other_value(name, setting_of(verifier_settings.Settings(), name))
    from_env = verifier_settings.from_env({variable: text})
    assert setting_of(from_env, name) == value
    if option:
        from_cli = verifier_cli.parse_args([option, text], verifier_settings.Settings())
        assert setting_of(from_cli, name) == value


def test_every_verifier_option_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        verifier_cli.parse_args(["--help"], verifier_settings.Settings())
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", capsys.readouterr().out))
    documented = {row[0] for row in verifier_rows().values() if row[0]}
    assert documented == options - {"--help"}


# ---------------------------------------------------------------------------- scaling


def test_scaling_out_is_described() -> None:
    scaling = section(CONFIGURATION, "### Scaling out")
    for words in ("own spool", "read-only", "send-proxy", "proxy_protocol_timeout"):
        assert words in scaling

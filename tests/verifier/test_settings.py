"""Settings from the environment, and back."""

from __future__ import annotations

from pathlib import Path

import pytest

from verifier.settings import Limits, Settings, SettingsError, from_env, to_env


def test_defaults_are_the_embedded_ones() -> None:
    settings = from_env({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.archive_dir == Path("var/public")
    assert settings.rate_limit_per_minute == 30
    assert settings.org_rate_limit_per_minute == 600
    assert settings.trusted_proxies == ()
    assert settings.metrics_listen == "127.0.0.1:9190"
    assert settings.limits.max_upload_bytes == 10 * 1024 * 1024


def test_round_trip_through_the_environment() -> None:
    settings = Settings(
        archive_dir=Path("/srv/public"),
        port=9000,
        workers=3,
        rate_limit_per_minute=0,
        org_rate_limit_per_minute=60,
        orgs_registry=Path("/srv/orgs.sqlite"),
        trusted_proxies=("10.0.0.0/8", "2001:db8::/64"),
        proxy_header="forwarded",
        runtime_dir="/run/sealpost-verifier",
        metrics_listen="[::1]:9190",
        limits=Limits(max_upload_bytes=2048, max_mime_depth=4),
    )
    assert from_env(to_env(settings)) == settings


@pytest.mark.parametrize("value", ["ten", "-1"])
def test_bad_values_are_named(value: str) -> None:
    with pytest.raises(SettingsError, match="SEALPOST_VERIFIER_RATE_LIMIT"):
        from_env({"SEALPOST_VERIFIER_RATE_LIMIT": value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.example"),
        ("PROXY_HEADER", "x-real-ip"),
        ("METRICS_LISTEN", "9190"),
        ("ORG_RATE_LIMIT", "-5"),
    ],
)
def test_bad_proxy_and_metrics_values_are_named(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"SEALPOST_VERIFIER_{variable}"):
        from_env({f"SEALPOST_VERIFIER_{variable}": value})


def test_trusted_proxies_are_networks() -> None:
    env = {"SEALPOST_VERIFIER_TRUSTED_PROXIES": " 10.1.2.3 , 192.0.2.0/24,2001:db8::1"}
    assert from_env(env).trusted_proxies == ("10.1.2.3/32", "192.0.2.0/24", "2001:db8::1/128")

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
    assert settings.limits.max_upload_bytes == 10 * 1024 * 1024


def test_round_trip_through_the_environment() -> None:
    settings = Settings(
        archive_dir=Path("/srv/public"),
        port=9000,
        workers=3,
        rate_limit_per_minute=0,
        limits=Limits(max_upload_bytes=2048, max_mime_depth=4),
    )
    assert from_env(to_env(settings)) == settings


@pytest.mark.parametrize("value", ["ten", "-1"])
def test_bad_values_are_named(value: str) -> None:
    with pytest.raises(SettingsError, match="SEALPOST_VERIFIER_RATE_LIMIT"):
        from_env({"SEALPOST_VERIFIER_RATE_LIMIT": value})

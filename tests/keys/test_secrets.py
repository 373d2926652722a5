"""Where the passphrase comes from: environment, secret file, or the embedded default file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from keys.secrets import (
    ENV_PASSPHRASE,
    ENV_PASSPHRASE_FILE,
    SecretError,
    configured,
    create_default_secret,
    default_secret_file,
    find_passphrase,
    require_passphrase,
)


def test_the_default_file_sits_next_to_the_store(tmp_path: Path) -> None:
    assert default_secret_file(tmp_path / "var" / "keys") == tmp_path / "var" / "keys.passphrase"


def test_the_environment_variable_comes_first(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from file\n")
    env = {ENV_PASSPHRASE: "from env", ENV_PASSPHRASE_FILE: str(secret)}
    assert find_passphrase(tmp_path / "keys", env) == b"from env"
    assert configured(env)


def test_a_secret_file_loses_its_final_newline_only(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b" spaces kept \n")
    assert (
        find_passphrase(tmp_path / "keys", {ENV_PASSPHRASE_FILE: str(secret)}) == b" spaces kept "
    )


def test_the_default_file_is_used_when_nothing_is_configured(tmp_path: Path) -> None:
    store = tmp_path / "keys"
    assert find_passphrase(store, {}) is None
    assert not configured({})
    with pytest.raises(SecretError, match="no passphrase for the key store"):
        require_passphrase(store, {})
    path = create_default_secret(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    passphrase = require_passphrase(store, {})
    assert len(passphrase) == 44  # 32 random bytes, URL-safe base64
    assert path.read_bytes() == passphrase + b"\n"
    with pytest.raises(SecretError, match="already exists"):
        create_default_secret(store)  # never replaced: that would lock the keys away
    assert require_passphrase(store, {}) == passphrase


@pytest.mark.parametrize(("content", "error"), [(b"\n", "is empty"), (None, "cannot read")])
def test_unusable_secret_files_are_clear_errors(
    tmp_path: Path, content: bytes | None, error: str
) -> None:
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_bytes(content)
    with pytest.raises(SecretError, match=error):
        find_passphrase(tmp_path / "keys", {ENV_PASSPHRASE_FILE: str(secret)})

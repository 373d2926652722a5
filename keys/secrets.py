"""Where the key store's passphrase comes from: never the command line (it would show in
`ps` and shell history).

In order: the environment variable SEALPOST_KEYS_PASSPHRASE; the secret file named by
SEALPOST_KEYS_PASSPHRASE_FILE; else the embedded default, the file ``<store>.passphrase``
next to the store directory, which `init` creates so that a development set-up works with
nothing configured. Production keeps the passphrase somewhere else (a secret manager, a
mounted secret file), never beside the keys it protects.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

# Names of environment variables, not secrets.
ENV_PASSPHRASE = "SEALPOST_KEYS_PASSPHRASE"  # noqa: S105
ENV_PASSPHRASE_FILE = "SEALPOST_KEYS_PASSPHRASE_FILE"  # noqa: S105


class SecretError(Exception):
    """No usable passphrase, or a secret file that cannot be read."""


def default_secret_file(store: Path) -> Path:
    store = store.absolute()
    return store.with_name(store.name + ".passphrase")


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ops chose a passphrase source (rather than the embedded default)."""
    env = os.environ if environ is None else environ
    return bool(env.get(ENV_PASSPHRASE) or env.get(ENV_PASSPHRASE_FILE))


def _read_secret_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read the passphrase file {path}: {exc.strerror}") from exc
    # Secret files usually end with a newline that is not part of the secret.
    passphrase = data.rstrip(b"\r\n")
    if not passphrase:
        raise SecretError(f"the passphrase file {path} is empty")
    return passphrase


def find_passphrase(store: Path, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The passphrase from the first configured source, or None when there is none."""
    env = os.environ if environ is None else environ
    if value := env.get(ENV_PASSPHRASE):
        return value.encode("utf-8")
    if name := env.get(ENV_PASSPHRASE_FILE):
        return _read_secret_file(Path(name))
    default = default_secret_file(store)
    if default.exists():
        return _read_secret_file(default)
    return None


def require_passphrase(store: Path, environ: Mapping[str, str] | None = None) -> bytes:
    passphrase = find_passphrase(store, environ)
    if passphrase is None:
        raise SecretError(
            f"no passphrase for the key store {store}: set {ENV_PASSPHRASE} or name a "
            f"secret file in {ENV_PASSPHRASE_FILE} (the default file "
            f"{default_secret_file(store)} does not exist)"
        )
    return passphrase


def create_default_secret(store: Path) -> Path:
    """Writes 32 random bytes (URL-safe base64) to the default secret file, mode 0600.
    Refuses to overwrite an existing one: that would lock the store's keys away forever."""
    path = default_secret_file(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SecretError(f"the passphrase file {path} already exists") from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path

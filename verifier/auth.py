"""Who calls the API: an organisation named by its Bearer token (RFC 6750), or nobody.

A request that presents credentials we cannot accept is refused, never served as an
anonymous one: an intake system with a revoked token must learn it at once, not find
itself on the anonymous quota.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from orgs.registry import Registry, RegistryError

log = logging.getLogger("verifier")

SCHEME = "Bearer"
REALM = "sealpost-verifier"
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_TOKEN = 512  # far longer than any token the registry makes


class Organisation(Protocol):
    @property
    def code(self) -> str: ...


class TokenOwners(Protocol):
    def token_owner(self, token: str) -> Organisation | None: ...


class RegistryUnavailable(Exception):
    """The registry exists but cannot be read: no answer rather than a wrong one."""


class RegistryTokens:
    """The tokens of the registry at `path`, opened once the file exists (the verifier
    never makes it; `sealpost-orgs` does). The registry itself sees later changes, such
    as a revocation, at the next lookup."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._registry: Registry | None = None
        self._lock = threading.Lock()

    def token_owner(self, token: str) -> Organisation | None:
        try:
            registry = self._open()
            return None if registry is None else registry.token_owner(token)
        except (RegistryError, sqlite3.Error) as exc:
            log.error("organisations registry unreadable: %s", exc)
            raise RegistryUnavailable from exc

    def _open(self) -> Registry | None:
        with self._lock:
            if self._registry is None and self.path.is_file():
                self._registry = Registry(self.path)
            return self._registry


class Unauthorized(Exception):
    """Credentials were presented and are not accepted. The description is ours (it goes
    into WWW-Authenticate), never the token."""

    def __init__(self, description: str, key: str = "error_token_refused") -> None:
        super().__init__(description)
        self.key = key  # the message shown to the client

    def challenge(self) -> str:
        return f'{SCHEME} realm="{REALM}", error="invalid_token", error_description="{self}"'


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer` header; None when there is no header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():  # the scheme is case-insensitive (RFC 9110 11.1)
        raise Unauthorized("only Bearer tokens are accepted", "error_token_malformed")
    token = token.strip(" ")
    if not token or len(token) > _MAX_TOKEN or not _B64TOKEN.fullmatch(token):
        raise Unauthorized("malformed token", "error_token_malformed")
    return token


def organisation(authorization: str | None, owners: TokenOwners) -> str | None:
    """The code of the organisation the request speaks for, None when anonymous."""
    token = bearer_token(authorization)
    if token is None:
        return None
    owner = owners.token_owner(token)
    if owner is None:
        raise Unauthorized("unknown or revoked token, or an ended organisation")
    return owner.code

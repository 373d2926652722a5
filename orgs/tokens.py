"""API tokens: how they are made, recognised and stored.

A token is `spt_` and 43 base64url characters (256 random bits). The prefix lets a secret
scanner or a person recognise one in a log or a repository; the randomness makes a plain
SHA-256 a safe thing to store (no dictionary to run against it, unlike a password, so no
slow hash is needed and the verifier can check one per request). Only the hash is kept;
the token itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "spt_"
RANDOM_BYTES = 32
HINT_LENGTH = 4
_SHAPE = re.compile(r"spt_[A-Za-z0-9_-]{43}")


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(RANDOM_BYTES)


def new_token_id() -> str:
    """A public name for a token (in lists, in the audit log, for revoking): not secret."""
    return "tok_" + secrets.token_hex(6)


def looks_like_token(text: str) -> bool:
    """Whether `text` has a token's shape; anything else is refused without a lookup."""
    return _SHAPE.fullmatch(text) is not None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def hint(token: str) -> str:
    """The last characters, so ops can tell which token a client holds without the token."""
    return token[-HINT_LENGTH:]

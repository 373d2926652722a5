"""Bearer tokens (RFC 6750) and the registry they are looked up in."""

from __future__ import annotations

from pathlib import Path

import pytest

from orgs.registry import Registry
from verifier.auth import (
    RegistryTokens,
    RegistryUnavailable,
    Unauthorized,
    bearer_token,
    organisation,
)


def test_no_header_is_anonymous() -> None:
    assert bearer_token(None) is None


@pytest.mark.parametrize("header", ["Bearer spt_abc", "bearer spt_abc", "BEARER  spt_abc"])
def test_the_scheme_is_case_insensitive(header: str) -> None:
    assert bearer_token(header) == "spt_abc"


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", 'Bearer a"b', "Token x", "x" * 600]
)
def test_anything_else_is_refused_not_ignored(header: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        bearer_token(header)
    assert caught.value.key == "error_token_malformed"
    assert 'error="invalid_token"' in caught.value.challenge()


def test_tokens_are_looked_up_in_the_registry_and_changes_count_at_once(tmp_path: Path) -> None:
    path = tmp_path / "orgs" / "registry.sqlite"
    tokens = RegistryTokens(path)
    assert tokens.token_owner("spt_" + "A" * 43) is None  # no registry yet: nobody
    assert not path.exists()  # and the verifier did not make one
    with Registry(path) as registry:
        registry.add("MUTAZUR", "Mutuelle Azur")
        token_info, token = registry.create_token("MUTAZUR")
        assert organisation(f"Bearer {token}", tokens) == "MUTAZUR"
        registry.revoke_token("MUTAZUR", token_info.id)
        with pytest.raises(Unauthorized) as caught:
            organisation(f"Bearer {token}", tokens)
        assert caught.value.key == "error_token_refused"
        assert token not in caught.value.challenge()


def test_an_unreadable_registry_is_no_answer_rather_than_a_wrong_one(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryUnavailable):
        RegistryTokens(path).token_owner("spt_" + "A" * 43)

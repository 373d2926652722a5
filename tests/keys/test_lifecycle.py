"""The key lifecycle as pure functions: which moves are allowed, and why others are refused."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace

import pytest

from keys.lifecycle import (
    ALLOWED,
    WITHDRAW_WAIT,
    Certificate,
    Change,
    DkimKey,
    Domain,
    Generation,
    Refused,
    State,
    activate,
    check_can_rotate,
    find,
    move,
    new_domain_generation,
    next_generation_id,
    normalise_domain,
    revoke,
    withdraw,
)

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
PROPAGATION = dt.timedelta(hours=48)


def generation(gen_id: str, *states: tuple[State, dt.datetime]) -> Generation:
    history = tuple(Change(state, at) for state, at in states)
    return Generation(
        id=gen_id,
        created_at=states[0][1],
        rsa=DkimKey(history, None, f"s{gen_id}r", "rsa", "UlNB", "r.pem"),
        ed25519=DkimKey(history, None, f"s{gen_id}e", "ed25519", "RUQ=", "e.pem"),
        certificate=Certificate(history, None, f"{gen_id}abc", "PEM", "c.pem"),
    )


def domain_with_active_and_pending() -> Domain:
    old = generation("202611", (State.PENDING, T0), (State.ACTIVE, T0))
    new = generation("202612", (State.PENDING, T0 + HOUR))
    return Domain("caisses.example", "Org", (old, new))


def key_in(state: State) -> DkimKey:
    path = {
        State.PENDING: [State.PENDING],
        State.ACTIVE: [State.PENDING, State.ACTIVE],
        State.RETIRED: [State.PENDING, State.ACTIVE, State.RETIRED],
        State.WITHDRAWN: [State.PENDING, State.ACTIVE, State.RETIRED, State.WITHDRAWN],
        State.REVOKED: [State.PENDING, State.REVOKED],
    }[state]
    history = tuple(Change(s, T0) for s in path)
    return DkimKey(history, None, "s202611r", "rsa", "UlNB", "r.pem")


@pytest.mark.parametrize(("source", "target"), list(itertools.product(State, State)))
def test_every_move_is_allowed_or_refused_with_a_reason(source: State, target: State) -> None:
    key = key_in(source)
    allowed = {
        (State.PENDING, State.ACTIVE),
        (State.ACTIVE, State.RETIRED),
        (State.RETIRED, State.WITHDRAWN),
        *((s, State.REVOKED) for s in State if s != State.REVOKED),
    }
    assert ((source, target) in allowed) == (target in ALLOWED[source])
    if (source, target) in allowed:
        moved = move(key, target, T0 + HOUR)
        assert moved.state == target
        assert moved.since == T0 + HOUR
        assert moved.history[:-1] == key.history  # history only grows
    else:
        with pytest.raises(Refused, match=f"DKIM key s202611r is {source}; it cannot become"):
            move(key, target, T0 + HOUR)


def test_a_move_back_in_time_is_refused() -> None:
    with pytest.raises(Refused, match="check the clock"):
        move(key_in(State.PENDING), State.ACTIVE, T0 - HOUR)


def test_activate_waits_for_the_propagation_time() -> None:
    domain = domain_with_active_and_pending()
    with pytest.raises(Refused) as refused:
        activate(domain, T0 + 48 * HOUR, PROPAGATION)
    message = str(refused.value)
    assert "generation 202612" in message
    assert "47.0 h ago" in message
    assert "propagation time of 48 h" in message
    assert "from 2026-11-04T10:00:00Z on" in message
    assert "--force" in message

    result = activate(domain, T0 + 49 * HOUR, PROPAGATION)  # exactly the propagation time
    assert result.activated.id == "202612"
    assert result.domain.active is not None
    assert result.domain.active.id == "202612"
    assert result.retired is not None
    assert result.retired.all_in(State.RETIRED)
    assert result.domain.pending is None


def test_activate_with_force_ignores_the_propagation_time() -> None:
    result = activate(domain_with_active_and_pending(), T0 + 2 * HOUR, PROPAGATION, force=True)
    assert result.activated.all_in(State.ACTIVE)
    assert [g.id for g in result.domain.generations if g.all_in(State.ACTIVE)] == ["202612"]


def test_activate_without_a_pending_generation_is_refused() -> None:
    old = generation("202611", (State.PENDING, T0), (State.ACTIVE, T0))
    with pytest.raises(Refused, match=r"no pending generation to activate.*rotate --domain"):
        activate(Domain("caisses.example", "Org", (old,)), T0 + 99 * HOUR, PROPAGATION)


def test_rotating_twice_is_refused_while_one_is_pending() -> None:
    domain = domain_with_active_and_pending()
    with pytest.raises(Refused, match="already has a pending generation 202612"):
        check_can_rotate(domain)
    with pytest.raises(Refused):
        new_domain_generation(domain, generation("202612b", (State.PENDING, T0)))


def test_withdraw_takes_a_retired_key_out_of_dns() -> None:
    domain = activate(domain_with_active_and_pending(), T0 + 50 * HOUR, PROPAGATION).domain
    after, key = withdraw(domain, "s202611r", T0 + 50 * HOUR + WITHDRAW_WAIT)
    assert key.state == State.WITHDRAWN
    found = find(after, "s202611r")
    assert found is not None
    assert found[1].state == State.WITHDRAWN
    sibling = find(after, "s202611e")
    assert sibling is not None
    assert sibling[1].state == State.RETIRED  # only the named key moves


def test_withdraw_waits_seven_days_after_retirement_unless_forced() -> None:
    retired_at = T0 + 50 * HOUR
    domain = activate(domain_with_active_and_pending(), retired_at, PROPAGATION).domain
    with pytest.raises(Refused, match=r"retired 6\.9 days ago.* from 2026-11-11T11:00:00Z on"):
        withdraw(domain, "s202611r", retired_at + WITHDRAW_WAIT - 2 * HOUR)
    with pytest.raises(Refused, match="less than the wait of 10 days"):
        withdraw(domain, "s202611r", retired_at + WITHDRAW_WAIT, wait=dt.timedelta(days=10))
    _, forced = withdraw(domain, "s202611r", retired_at + HOUR, force=True)
    assert forced.state == State.WITHDRAWN


@pytest.mark.parametrize(
    ("selector", "hint"),
    [("s202611r", "it is signing"), ("s202612r", "it has never signed")],
)
def test_withdraw_of_an_active_or_pending_key_is_refused(selector: str, hint: str) -> None:
    with pytest.raises(Refused, match=hint):
        withdraw(domain_with_active_and_pending(), selector, T0 + HOUR)


def test_revoking_an_active_key_stops_the_whole_generation_signing() -> None:
    domain = domain_with_active_and_pending()
    gen = domain.generations[0]
    result = revoke(domain, gen, gen.rsa, T0, "key file leaked", T0 + HOUR)
    assert result.was_active
    assert result.revoked.state == State.REVOKED
    assert result.revoked.revocation is not None
    assert result.revoked.revocation.reason == "key file leaked"
    assert result.revoked.revocation.compromised_at == T0
    assert result.generation.ed25519.state == State.RETIRED
    assert result.generation.certificate.state == State.RETIRED
    assert result.domain.active is None  # nothing signs until the pending one is activated
    assert result.domain.pending is not None


def test_revoking_a_pending_key_leaves_the_active_generation_alone() -> None:
    domain = domain_with_active_and_pending()
    gen = domain.generations[1]
    result = revoke(domain, gen, gen.certificate, T0, "lost", T0 + 2 * HOUR)
    assert not result.was_active
    assert result.domain.active is not None
    assert result.domain.pending is None  # a generation with a revoked key never activates
    check_can_rotate(result.domain)


def test_revocation_refusals() -> None:
    domain = domain_with_active_and_pending()
    gen = domain.generations[0]
    with pytest.raises(Refused, match="in the future"):
        revoke(domain, gen, gen.rsa, T0 + 2 * HOUR, "leak", T0 + HOUR)
    with pytest.raises(Refused, match="needs a reason"):
        revoke(domain, gen, gen.rsa, T0, "  ", T0 + HOUR)
    once = revoke(domain, gen, gen.rsa, T0, "leak", T0 + HOUR)
    with pytest.raises(Refused, match="revoked is final"):
        revoke(once.domain, once.generation, once.revoked, T0, "again", T0 + 2 * HOUR)


def test_generation_ids_are_the_month_then_a_letter() -> None:
    assert next_generation_id([], T0) == "202611"
    assert next_generation_id(["202611"], T0) == "202611b"
    assert next_generation_id(["202611", "202611b"], T0) == "202611c"
    assert next_generation_id(["202611", "202611b"], T0 + 40 * 24 * HOUR) == "202612"


def test_find_by_selector_or_by_serial_as_ops_type_it() -> None:
    domain = domain_with_active_and_pending()
    for ident in ["202611abc", "0x202611ABC", "20:26:11:ab:c"]:
        found = find(domain, ident)
        assert found is not None
        assert isinstance(found[1], Certificate)
    assert find(domain, "s202612e") is not None
    assert find(domain, "nope") is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Caisses.Example.", "caisses.example"),
        ("mail.caisses-sociales.mc", "mail.caisses-sociales.mc"),
    ],
)
def test_domain_names_are_normalised(given: str, expected: str) -> None:
    assert normalise_domain(given) == expected


@pytest.mark.parametrize(
    "bad", ["localhost", "../etc", "a/b.example", "-x.example", "x..example", ""]
)
def test_domain_names_that_are_not_hostnames_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid domain name"):
        normalise_domain(bad)


def test_revoking_a_retired_generation_keeps_the_record_of_its_destroyed_keys() -> None:
    """The store destroys a key when it retires; a later revocation (an old backup stolen)
    must not make the state claim the key is back."""
    retired = generation("202611", (State.PENDING, T0), (State.ACTIVE, T0), (State.RETIRED, T0))
    destroyed_at = T0 + HOUR
    retired = replace(
        retired,
        rsa=replace(retired.rsa, key_destroyed_at=destroyed_at),
        ed25519=replace(retired.ed25519, key_destroyed_at=destroyed_at),
        certificate=replace(retired.certificate, key_destroyed_at=destroyed_at),
    )
    domain = Domain("caisses.example", "Org", (retired,))
    result = revoke(domain, retired, retired.certificate, T0, "backup stolen", T0 + 2 * HOUR)
    assert [i.state for i in result.generation.items] == [
        State.RETIRED, State.RETIRED, State.REVOKED
    ]  # fmt: skip
    assert {i.key_destroyed_at for i in result.generation.items} == {destroyed_at}
    assert generation("202612", (State.PENDING, T0)).rsa.key_destroyed_at is None

"""Key states and the transitions between them, as pure functions over immutable values.

Every DKIM key and every CMS certificate has a history of states. The allowed moves::

    pending -> active -> retired -> withdrawn        (and any state but revoked -> revoked)

A generation (one RSA key, one Ed25519 key, one certificate) moves as a whole through
pending, active and retired; `withdraw` and `revoke` name a single key. Nothing here
touches the disk or the clock: callers pass `now`, and a refused move raises `Refused`
with a reason ops can act on.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar

from keys.archive import PublicLog, Revocation


class State(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"
    WITHDRAWN = "withdrawn"
    REVOKED = "revoked"


ALLOWED: Mapping[State, frozenset[State]] = {
    State.PENDING: frozenset({State.ACTIVE, State.REVOKED}),
    State.ACTIVE: frozenset({State.RETIRED, State.REVOKED}),
    State.RETIRED: frozenset({State.WITHDRAWN, State.REVOKED}),
    State.WITHDRAWN: frozenset({State.REVOKED}),
    State.REVOKED: frozenset(),
}

# States that can never sign again: their private keys are destroyed.
OUT_OF_SERVICE = frozenset({State.RETIRED, State.WITHDRAWN, State.REVOKED})

# States whose DKIM record must be in DNS: pending (so it propagates before use), active,
# retired (mail in flight still verifies) and revoked (published with an empty p=).
IN_DNS = frozenset({State.PENDING, State.ACTIVE, State.RETIRED, State.REVOKED})


class Refused(Exception):
    """The lifecycle forbids the operation; the message says why and what to do instead."""


@dataclass(frozen=True)
class Change:
    state: State
    at: dt.datetime


@dataclass(frozen=True)
class Tracked:
    history: tuple[Change, ...]
    revocation: Revocation | None

    @property
    def state(self) -> State:
        return self.history[-1].state

    @property
    def since(self) -> dt.datetime:
        return self.history[-1].at

    @property
    def label(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class DkimKey(Tracked):
    selector: str
    algorithm: str  # the DKIM k= tag: "rsa" or "ed25519"
    public_key: str  # the p= value, base64
    key_file: str  # relative to the store directory
    # When the private key file was overwritten and deleted (None: still in the store).
    key_destroyed_at: dt.datetime | None = None

    @property
    def label(self) -> str:
        return f"DKIM key {self.selector}"


@dataclass(frozen=True)
class Certificate(Tracked):
    serial: str  # lower-case hex
    pem: str
    key_file: str
    key_destroyed_at: dt.datetime | None = None  # as DkimKey.key_destroyed_at

    @property
    def label(self) -> str:
        return f"certificate {self.serial}"


@dataclass(frozen=True)
class Generation:
    id: str
    created_at: dt.datetime
    rsa: DkimKey
    ed25519: DkimKey
    certificate: Certificate

    @property
    def dkim(self) -> tuple[DkimKey, DkimKey]:
        return (self.rsa, self.ed25519)

    @property
    def items(self) -> tuple[DkimKey | Certificate, ...]:
        return (self.rsa, self.ed25519, self.certificate)

    def all_in(self, state: State) -> bool:
        return all(item.state == state for item in self.items)


@dataclass(frozen=True)
class Domain:
    name: str
    org: str
    generations: tuple[Generation, ...]

    @property
    def active(self) -> Generation | None:
        return next((g for g in self.generations if g.all_in(State.ACTIVE)), None)

    @property
    def pending(self) -> Generation | None:
        return next((g for g in self.generations if g.all_in(State.PENDING)), None)

    def replace_generation(self, generation: Generation) -> Domain:
        return replace(
            self,
            generations=tuple(generation if g.id == generation.id else g for g in self.generations),
        )


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(name: str) -> str:
    """Lower-case, no trailing dot, LDH labels only (the name is also a directory name)."""
    domain = name.strip().lower().rstrip(".")
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{name!r} is not a valid domain name")
    return domain


def next_generation_id(taken: Iterable[str], now: dt.datetime) -> str:
    """'YYYYMM' of `now`, or with a suffix b, c, ... when that month already has one."""
    base: str = now.astimezone(dt.UTC).strftime("%Y%m")
    used = set(taken)
    suffixes: list[str] = ["", *"bcdefghijklmnopqrstuvwxyz"]
    for suffix in suffixes:
        candidate = base + suffix
        if candidate not in used:
            return candidate
    raise Refused(f"26 generations already exist for {base}; wait for next month")


def selectors(generation_id: str) -> tuple[str, str]:
    """The RSA and Ed25519 selectors of a generation (e.g. s202611r, s202611e)."""
    return f"s{generation_id}r", f"s{generation_id}e"


_T = TypeVar("_T", bound=Tracked)


def move(item: _T, target: State, now: dt.datetime) -> _T:
    """One item's transition, or `Refused` with the reason."""
    if target not in ALLOWED[item.state]:
        raise Refused(f"{item.label} is {item.state}; it cannot become {target}{_hint(item)}")
    if now < item.since:
        raise Refused(
            f"{item.label} entered {item.state} at {item.since.isoformat()}, after the "
            f"requested time {now.isoformat()}; check the clock"
        )
    return replace(item, history=(*item.history, Change(target, now)))


def _hint(item: Tracked) -> str:
    if item.state == State.ACTIVE:
        return " (it is signing: activate another generation first, or revoke it)"
    if item.state == State.PENDING:
        return " (it has never signed: activate it first)"
    if item.state == State.REVOKED:
        return " (revoked is final)"
    return ""


def _move_generation(generation: Generation, target: State, now: dt.datetime) -> Generation:
    return replace(
        generation,
        rsa=move(generation.rsa, target, now),
        ed25519=move(generation.ed25519, target, now),
        certificate=move(generation.certificate, target, now),
    )


def check_can_rotate(domain: Domain) -> None:
    """A new generation is refused while one is pending: two would race to activation."""
    pending = domain.pending
    if pending is not None:
        raise Refused(
            f"{domain.name} already has a pending generation {pending.id} "
            f"({', '.join(k.selector for k in pending.dkim)}); activate it "
            f"(sealpost-keys activate --domain {domain.name}) or revoke it before rotating again"
        )


def new_domain_generation(domain: Domain, generation: Generation) -> Domain:
    """Adds a freshly created generation (all pending)."""
    check_can_rotate(domain)
    if not generation.all_in(State.PENDING):
        raise ValueError("a new generation must be pending")
    return replace(domain, generations=(*domain.generations, generation))


def check_propagation(generation: Generation, now: dt.datetime, propagation: dt.timedelta) -> None:
    ready_at = generation.created_at + propagation
    if now < ready_at:
        waited = (now - generation.created_at).total_seconds() / 3600
        needed = propagation.total_seconds() / 3600
        raise Refused(
            f"the DNS records of generation {generation.id} were created "
            f"{waited:.1f} h ago, less than the propagation time of {needed:g} h: "
            f"resolvers may not see them yet. Publish them (sealpost-keys dns) and activate "
            f"from {ready_at.strftime('%Y-%m-%dT%H:%M:%SZ')} on, or use --force"
        )


@dataclass(frozen=True)
class Activation:
    domain: Domain
    activated: Generation
    retired: Generation | None


def activate(
    domain: Domain,
    now: dt.datetime,
    propagation: dt.timedelta,
    force: bool = False,
) -> Activation:
    """The pending generation becomes active; the active one (if any) becomes retired."""
    pending = domain.pending
    if pending is None:
        raise Refused(
            f"{domain.name} has no pending generation to activate; create one with "
            f"sealpost-keys rotate --domain {domain.name}"
        )
    if not force:
        check_propagation(pending, now, propagation)
    activated = _move_generation(pending, State.ACTIVE, now)
    result = domain.replace_generation(activated)
    previous = domain.active
    retired = None
    if previous is not None:
        retired = _move_generation(previous, State.RETIRED, now)
        result = result.replace_generation(retired)
    return Activation(domain=result, activated=activated, retired=retired)


# The runbook's wait between retiring a generation and taking its DKIM records out of DNS:
# the longest queue time (delivery.max_lifetime, 5 days) plus a 2-day margin, so that a
# message signed just before the retirement still verifies when it is finally received.
WITHDRAW_WAIT = dt.timedelta(days=7)


def check_withdrawal_wait(key: DkimKey, now: dt.datetime, wait: dt.timedelta) -> None:
    """Refuse a withdrawal sooner than `wait` after the key was retired."""
    retired_at = next((c.at for c in reversed(key.history) if c.state == State.RETIRED), None)
    if retired_at is None or key.state != State.RETIRED:
        return  # not retired: `move` refuses it with its own reason
    ready_at = retired_at + wait
    if now < ready_at:
        waited = (now - retired_at).total_seconds() / 86400
        raise Refused(
            f"{key.label} was retired {waited:.1f} days ago, less than the wait of "
            f"{wait.total_seconds() / 86400:g} days: mail signed with it may still be queued "
            "or in transit, and its receivers need the DNS record to verify it. Withdraw it "
            f"from {ready_at.strftime('%Y-%m-%dT%H:%M:%SZ')} on, or use --force"
        )


def withdraw(
    domain: Domain,
    selector: str,
    now: dt.datetime,
    *,
    wait: dt.timedelta = WITHDRAW_WAIT,
    force: bool = False,
) -> tuple[Domain, DkimKey]:
    """A retired DKIM key leaves DNS, `wait` after its retirement at the earliest (unless
    `force`); its public key stays in the archive."""
    for generation in domain.generations:
        for key in generation.dkim:
            if selector != key.selector:
                continue
            if not force:
                check_withdrawal_wait(key, now, wait)
            moved = move(key, State.WITHDRAWN, now)
            if key is generation.rsa:
                changed = replace(generation, rsa=moved)
            else:
                changed = replace(generation, ed25519=moved)
            return domain.replace_generation(changed), moved
    raise LookupError(f"{domain.name} has no DKIM selector {selector!r}")


@dataclass(frozen=True)
class RevocationResult:
    domain: Domain
    revoked: DkimKey | Certificate
    generation: Generation
    # Set when the revoked key belonged to the signing generation: the domain has no
    # active signing key until a pending generation is activated.
    was_active: bool


def find(domain: Domain, ident: str) -> tuple[Generation, DkimKey | Certificate] | None:
    """The key named by a selector or a certificate serial (hex, case and 0x insensitive)."""
    name = ident.strip()
    serial = name.lower().removeprefix("0x").replace(":", "").lstrip("0") or "0"
    for generation in domain.generations:
        for key in generation.dkim:
            if key.selector == name:
                return generation, key
        if generation.certificate.serial == serial:
            return generation, generation.certificate
    return None


def revoke(
    domain: Domain,
    generation: Generation,
    item: DkimKey | Certificate,
    compromised_at: dt.datetime,
    reason: str,
    now: dt.datetime,
) -> RevocationResult:
    """`item` becomes revoked. If it was signing, its generation stops signing: the other
    keys of that generation are retired, so exactly zero generations are active."""
    if not reason.strip():
        raise Refused("a revocation needs a reason (--reason)")
    if compromised_at > now:
        raise Refused(
            f"the compromise time {compromised_at.isoformat()} is in the future "
            f"(now is {now.isoformat()})"
        )
    was_active = generation.all_in(State.ACTIVE)
    revoked = replace(
        move(item, State.REVOKED, now),
        revocation=Revocation(compromised_at=compromised_at, reason=reason.strip(), revoked_at=now),
    )

    def updated(other: _T) -> _T:
        if other == item:
            return replace(other, history=revoked.history, revocation=revoked.revocation)
        return move(other, State.RETIRED, now) if was_active else other

    changed = replace(
        generation,
        rsa=updated(generation.rsa),
        ed25519=updated(generation.ed25519),
        certificate=updated(generation.certificate),
    )
    return RevocationResult(
        domain=domain.replace_generation(changed),
        revoked=revoked,
        generation=changed,
        was_active=was_active,
    )


@dataclass(frozen=True)
class Root:
    """The store's root CA: one per store, shared by its domains."""

    org: str
    certificate_pem: str
    key_file: str
    created_at: dt.datetime


@dataclass(frozen=True)
class StoreState:
    """Everything the store knows except private keys, which live in their own files."""

    encrypt_all: bool
    root: Root | None
    domains: tuple[Domain, ...]
    # Statement logs of the gateway nodes (their private keys live with the nodes).
    logs: tuple[PublicLog, ...] = ()
    # PEM certificates of the Time-Stamp Authorities whose tokens certify checkpoints.
    tsa_roots: tuple[str, ...] = ()
    # Verifier keys (C2SP signed note) of witnesses whose cosignatures the verifier checks.
    witnesses: tuple[str, ...] = ()

    def domain(self, name: str) -> Domain | None:
        return next((d for d in self.domains if d.name == name), None)

    def with_domain(self, domain: Domain) -> StoreState:
        others = tuple(d for d in self.domains if d.name != domain.name)
        return replace(self, domains=tuple(sorted((*others, domain), key=lambda d: d.name)))

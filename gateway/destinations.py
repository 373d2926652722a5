"""The dead-destination cache: which next hops are failing, and who may try them now.

As Postfix's queue manager treats a "dead" destination: once a next hop fails at the
connection level (connection refused or timed out, a 4xx greeting, EHLO, STARTTLS or AUTH
failing), its other messages are not each given a connection attempt of their own. One
probe at a time tries it, every ``probe_interval`` seconds; the other deliveries for it
are held without connecting, with the last error as their reason, until after the next
probe. A probe (or any delivery) that gets an SMTP session marks the destination up again
and the messages held for it are released at once (subscribers are told), so its queue
drains at the destination's concurrency. A 4xx or 5xx to one recipient, or to one
message, says nothing about the destination and changes nothing here.

A destination is a next hop: the smarthost's ``host:port``, or a recipient domain's MX
set and port on the ``mx`` route (domains sharing their MX hosts share one state), with
``+tls`` when the hop is asked for verified TLS although the route does not require it
(a certificate failure must not hold back the mail that may go without), and the name of
a recipient domain's own TLS policy enforced on it (``+dane``, ``+mta-sts-enforce``: see
gateway.tls_policy), for the same reason. A certificate that does not match such a policy
is a failure of that host for that policy, not of the destination: it is not counted here.

The cache also knows, for the metrics, which queued messages are deferred for each
destination (their count and the oldest one's age); a destination that is up with
nothing deferred is forgotten, so the table only ever holds destinations with a queue
or a problem, never one row per recipient.

All of this is in memory and per process: each lane has its own scheduler and delivery,
so its own cache (a dead destination costs one probe per lane per interval), and a
restart forgets it (the held messages are then simply due after the probe time they
were given).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("sealpost.delivery")

State = Literal["up", "failing"]
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class Hold:
    """What a delivery outcome says about a failing destination: try again after
    ``until`` (its next probe); ``attempted`` is False when no connection was made, so the
    recipient's attempt count, and with it its back-off, does not grow."""

    until: float
    attempted: bool


@dataclass(frozen=True)
class Ticket:
    """Leave to try a destination now; ``probe`` when it is the one probe of a failing one."""

    destination: str
    probe: bool


@dataclass(frozen=True)
class Refusal:
    """No leave: the destination is failing and its probe is not due, or is in flight."""

    destination: str
    reason: str
    until: float


@dataclass(frozen=True)
class DestinationView:
    """One destination as the metrics show it."""

    destination: str
    state: State
    failing_since: float | None
    failures: int
    deferred: int
    oldest_received_at: float | None


@dataclass
class _Destination:
    state: State = "up"
    failing_since: float | None = None
    failures: int = 0  # consecutive connection-level failures
    next_probe: float = 0.0
    last_error: str = ""
    probing: bool = False
    deferred: dict[str, float] = field(default_factory=dict)  # queue id -> received at
    held: set[str] = field(default_factory=set)  # queue ids waiting for the destination


def next_hop(
    hosts: Iterable[str],
    port: int,
    *,
    tls_beyond_route: bool = False,
    requirements: Iterable[str] = (),
) -> str:
    """The destination key: the set of hosts, their port, and ``+tls`` when verified TLS
    is asked for beyond what the route itself requires; ``requirements`` add the names of
    other TLS requirements enforced on the hop (a domain's ``dane``, ``mta-sts-enforce``)."""
    hop = f"{','.join(sorted({h.lower() for h in hosts}))}:{port}"
    tags = set(requirements) | ({"tls"} if tls_beyond_route else set())
    return hop + "".join(f"+{t}" for t in sorted(tags))


class Destinations:
    def __init__(
        self, *, probe_interval: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._interval = probe_interval
        self._clock = clock
        self._table: dict[str, _Destination] = {}
        self._on_up: list[Callable[[str, list[str]], None]] = []

    def subscribe(self, on_up: Callable[[str, list[str]], None]) -> None:
        """``on_up(destination, queue_ids)`` when a failing destination answers again,
        with the messages that were held for it."""
        self._on_up.append(on_up)

    # -- leave to connect ---------------------------------------------------------------

    def admit(self, destination: str) -> Ticket | Refusal:
        entry = self._table.get(destination)
        if entry is None or entry.state == "up":
            return Ticket(destination, probe=False)
        now = self._clock()
        if not entry.probing and now >= entry.next_probe:
            entry.probing = True
            # Were this probe to fail, the next one: what the held messages wait for.
            entry.next_probe = now + self._interval
            log.info("event=destination_probe destination=%s failures=%d", destination,
                     entry.failures)  # fmt: skip
            return Ticket(destination, probe=True)
        return Refusal(destination, suspended(entry.last_error), entry.next_probe)

    def recheck(self, ticket: Ticket) -> Refusal | None:
        """A Refusal when the destination went down after ``ticket`` was given (while
        its holder waited for a free session); the probe itself always goes."""
        entry = self._table.get(ticket.destination)
        if ticket.probe or entry is None or entry.state == "up":
            return None
        return Refusal(ticket.destination, suspended(entry.last_error), entry.next_probe)

    def succeeded(self, ticket: Ticket) -> None:
        """The destination gave an SMTP session (whatever it then said to the message)."""
        entry = self._table.get(ticket.destination)
        if ticket.probe and entry is not None:
            entry.probing = False
        if entry is None or entry.state == "up":
            return
        log.info("event=destination_up destination=%s failing_for=%.0fs failures=%d",
                 ticket.destination, self._clock() - (entry.failing_since or 0.0),
                 entry.failures)  # fmt: skip
        held = sorted(entry.held)
        entry.state, entry.failing_since, entry.failures = "up", None, 0
        entry.last_error, entry.held = "", set()
        self._forget_if_idle(ticket.destination)
        for on_up in self._on_up:
            on_up(ticket.destination, held)

    def failed(self, ticket: Ticket, reason: str) -> Hold:
        """Every host of the destination failed at the connection level."""
        now = self._clock()
        entry = self._table.setdefault(ticket.destination, _Destination())
        if ticket.probe:
            entry.probing = False
        entry.failures += 1
        entry.last_error = reason
        if entry.state == "up":
            entry.state, entry.failing_since = "failing", now
            entry.next_probe = now + self._interval
            log.warning("event=destination_failing destination=%s reason=%r",
                        ticket.destination, reason[:200])  # fmt: skip
        elif ticket.probe:
            entry.next_probe = now + self._interval
        return Hold(entry.next_probe, attempted=True)

    def abandoned(self, ticket: Ticket) -> None:
        """The attempt ended without a verdict (cancelled at shutdown): free the probe."""
        entry = self._table.get(ticket.destination)
        if ticket.probe and entry is not None and entry.probing:
            entry.probing = False
            entry.next_probe = self._clock()

    # -- the queue per destination ------------------------------------------------------

    def recorded(
        self, queue_id: str, received_at: float, destination: str, *, deferred: bool, held: bool
    ) -> bool:
        """After an attempt was stored: is ``queue_id`` still deferred for ``destination``,
        and is it waiting for the destination to come back (``held``)? True when it was
        held for a destination that has answered again meanwhile: it should go now."""
        entry = self._table.get(destination)
        if deferred:
            if entry is None:
                entry = self._table[destination] = _Destination()
            entry.deferred[queue_id] = received_at
            if held and entry.state == "failing":
                entry.held.add(queue_id)
                return False
            entry.held.discard(queue_id)
            return held
        if entry is not None:
            entry.deferred.pop(queue_id, None)
            entry.held.discard(queue_id)
            self._forget_if_idle(destination)
        return False

    def tracked(self) -> set[str]:
        """Every queue id counted as deferred for some destination."""
        return {q for entry in self._table.values() for q in entry.deferred}

    def forget_message(self, queue_id: str) -> None:
        """A message that left the spool by another way (deleted by the queue tool)."""
        for destination, entry in list(self._table.items()):
            entry.deferred.pop(queue_id, None)
            entry.held.discard(queue_id)
            self._forget_if_idle(destination)

    def views(self) -> list[DestinationView]:
        return [
            DestinationView(
                destination,
                entry.state,
                entry.failing_since,
                entry.failures,
                len(entry.deferred),
                min(entry.deferred.values(), default=None),
            )
            for destination, entry in sorted(self._table.items())
        ]

    def _forget_if_idle(self, destination: str) -> None:
        entry = self._table.get(destination)
        if entry is not None and entry.state == "up" and not entry.deferred and not entry.probing:
            del self._table[destination]


def suspended(last_error: str) -> str:
    """The reason given to a held recipient, as Postfix words it, keeping the enhanced
    status code first (the DSN takes it from there)."""
    code, _, detail = last_error.partition(" ")
    if not _STATUS.fullmatch(code):
        code, detail = "4.4.1", last_error
    return f"{code} delivery temporarily suspended: {detail or 'destination not answering'}"

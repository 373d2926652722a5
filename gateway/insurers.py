"""The registry of insurers (orgs/) as the gateway applies it.

The convention has each insurer list, in its avenant, the mailboxes that receive the
fund's statements. So:
- a message carrying a statement document, to an address at the domain of a registered
  insurer that is not one of its registered mailboxes, is refused (`orgs.unregistered`):
  a typo or an old address there would hand health data to whoever reads that mailbox;
- mail to a mailbox of an insurer whose convention has ended is refused (`orgs.ended`),
  at RCPT, statement or not: those mailboxes were dedicated to the fund's flow;
- every registered mailbox's domain gets verified TLS or no delivery (Delivery asks
  `tls_required`).

With `orgs.unregistered = "warn"` the two refusals become a log line and a metric and the
mail is delivered: for the first weeks of a registry, while ops completes it.

Lookups go to an in-memory copy of the registry that reloads when `sealpost-orgs` commits
a change, so a change applies to the next transaction without a restart. Logs name the
organisation and the recipient's domain, never the recipient's address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.policy import Rejection
from orgs.registry import Organisation, Registry, View

log = logging.getLogger("sealpost.gateway.insurers")

Mode = Literal["refuse", "warn"]
MODES: tuple[Mode, ...] = ("refuse", "warn")
RULE_UNREGISTERED = "orgs.unregistered"
RULE_ENDED = "orgs.ended"


@dataclass(frozen=True)
class Violation:
    rule: str  # RULE_UNREGISTERED or RULE_ENDED
    recipient: str
    organisations: tuple[str, ...]  # the codes concerned

    @property
    def domain(self) -> str:
        return self.recipient.rpartition("@")[2].lower()

    def rejection(self) -> Rejection:
        codes = ", ".join(self.organisations)
        if self.rule == RULE_ENDED:
            text = (
                f"<{self.recipient}> is a mailbox of organisation {codes}, whose convention "
                f"has ended: the fund sends it nothing (rule {RULE_ENDED})"
            )
            return Rejection(550, "5.7.1", text, "org_ended")
        text = (
            f"Statement refused: <{self.recipient}> is not a registered mailbox of "
            f"organisation {codes}; statements go only to the mailboxes its avenant lists "
            f"(rule {RULE_UNREGISTERED})"
        )
        return Rejection(550, "5.7.1", text, "org_unregistered_mailbox")


class Insurers:
    def __init__(self, registry: Registry, mode: Mode = "refuse") -> None:
        if mode not in MODES:
            raise ValueError(f"orgs.unregistered must be one of {', '.join(MODES)}")
        self.registry = registry
        self.mode = mode

    @property
    def warn_only(self) -> bool:
        return self.mode == "warn"

    def view(self) -> View:
        """The registry as it is now: what one mail transaction checks its recipients
        against, from its first RCPT to its DATA (a change applies to the next one)."""
        return self.registry.view()

    def ended(self, recipient: str, view: View | None = None) -> Violation | None:
        """A recipient that is a mailbox of an ended organisation."""
        owner = (self.view() if view is None else view).mailbox_owner(recipient)
        if owner is None or owner.active:
            return None
        return Violation(RULE_ENDED, recipient, (owner.code,))

    def unregistered(self, recipient: str, view: View | None = None) -> Violation | None:
        """A recipient at a registered organisation's domain that is none of its mailboxes."""
        view = self.view() if view is None else view
        owners = _domain_owners(view, recipient)
        if not owners or view.mailbox_owner(recipient) is not None:
            return None
        return Violation(RULE_UNREGISTERED, recipient, tuple(o.code for o in owners))

    def check_statement(
        self, recipients: Iterable[str], view: View | None = None
    ) -> list[Violation]:
        """What is wrong with sending a statement to `recipients` (empty when nothing)."""
        view = self.view() if view is None else view
        found: list[Violation] = []
        for recipient in recipients:
            # ended() or unregistered(), with one look-up of the mailbox.
            owner = view.mailbox_owner(recipient)
            if owner is not None:
                if not owner.active:
                    found.append(Violation(RULE_ENDED, recipient, (owner.code,)))
            elif owners := _domain_owners(view, recipient):
                found.append(Violation(RULE_UNREGISTERED, recipient, tuple(o.code for o in owners)))
        return found

    def tls_required(self, domain: str) -> bool:
        """Whether `domain` holds a registered mailbox (of any organisation, even ended)."""
        return bool(self.registry.domain_owners(domain))

    def organisation_of(self, recipient: str) -> str | None:
        """The code of the organisation `recipient` is a registered mailbox of."""
        owner = self.registry.mailbox_owner(recipient)
        return None if owner is None else owner.code


def _domain_owners(view: View, recipient: str) -> list[Organisation]:
    domain = recipient.rpartition("@")[2]
    return view.domain_owners(domain) if domain else []

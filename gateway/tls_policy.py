"""What TLS each MX host of a recipient domain must give before mail goes to it: DANE
(RFC 7672) first, then MTA-STS (RFC 8461), else opportunistic.

Per host, in this order:
- DANE applies when the domain's MX answer and the host's address answer are both
  DNSSEC-validated (RFC 7672 2.2.1, 2.2.2). Validated TLSA records at ``_25._tcp.<host>``
  then decide: usable ones mean the certificate must match one of them ("dane"); records
  that are all unusable still make TLS mandatory ("encrypted", RFC 7672 2.2), or verified
  when an enforced MTA-STS policy names the host. A TLSA lookup that fails for such a host
  skips the host (an attacker could cause it), as does a validated MX host without address.
- Otherwise an MTA-STS policy in ``enforce`` mode keeps only the hosts it names, with a
  certificate valid for the host's name ("verified"); one in ``testing`` mode asks the same
  but delivers anyway when it fails, and counts the failure.
- Otherwise "opportunistic": STARTTLS when offered, certificate not checked.
DANE takes precedence over MTA-STS (RFC 8461 2). The domains in ``tls_required_domains``,
and those of registered insurers' mailboxes (`gateway.insurers`), never get here: their
verified TLS is decided by `gateway.delivery` and wins, as an explicit per-destination
policy does over DANE in Postfix (``required=True``).

Host addresses come from the same resolver (the validating one DANE trusts), so the
connection goes to the address whose security was judged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import dns.asyncresolver
import dns.rdata
from dns.rdtypes.ANY.TLSA import TLSA

from gateway import dane, tls_rpt
from gateway.dns_lookup import Lookup, LookupFailed, lookup, txt_text
from gateway.mta_sts import MtaSts, Policy

log = logging.getLogger("sealpost.tls_policy")

Mode = Literal["opportunistic", "encrypted", "verified", "dane"]


@dataclass(frozen=True)
class HostTls:
    mode: Mode
    tlsa: tuple[dane.Tlsa, ...] = ()  # "dane": the usable records the certificate must match
    testing: bool = False  # MTA-STS testing: a failure is reported, then delivery goes on
    policy: str = ""  # what asked for it, in replies, logs and metrics
    # Connect to these (from the resolver, in order) rather than by name; () by name.
    addresses: tuple[str, ...] = ()

    @property
    def enforced(self) -> bool:
        """A failure to give this TLS means no delivery to the host."""
        return self.mode != "opportunistic" and not self.testing


OPPORTUNISTIC = HostTls("opportunistic")
REQUIRED = HostTls("verified", policy="tls_required_domains")


@dataclass(frozen=True)
class Plan:
    hosts: tuple[tuple[str, HostTls], ...]  # the hosts to try, best first
    skipped: tuple[str, ...] = ()  # why the other hosts are not tried ("4.7.5 ...")

    def refusal(self) -> str:
        return "; ".join(self.skipped) or "4.4.4 no host to deliver to"


Report = Callable[[str, str], None]  # (policy, result) for the metrics


class TlsPolicy:
    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        *,
        mta_sts: MtaSts | None,
        dane_enabled: bool,
        report: Report = lambda policy, result: None,
    ) -> None:
        self._resolver = resolver
        self._mta_sts = mta_sts
        self._dane = dane_enabled
        self.report = report

    async def plan(
        self, domain: str, hosts: list[str], port: int = 25, *, required: bool = False
    ) -> Plan:
        """``required``: the domain is in ``tls_required_domains``, whose verified TLS wins."""
        if required:
            return Plan(
                tuple([(h, replace(REQUIRED, addresses=await self._any(h))) for h in hosts])
            )
        sts = await self._mta_sts.policy(domain) if self._mta_sts is not None else None
        mx_secure = self._dane and await self._secure(domain, "MX")
        chosen = []
        skipped: list[str] = []
        for host in hosts:
            decided = await self._host(domain, host, port, sts, mx_secure)
            if isinstance(decided, str):
                skipped.append(decided)
            else:
                chosen.append((host, decided))
        if not chosen:
            log.warning(
                "event=tls_policy_no_host domain=%s reason=%s tls_rpt=%s",
                domain,
                "; ".join(skipped),
                ",".join(await self._tls_rpt(domain)) or "none",
            )
        return Plan(tuple(chosen), tuple(skipped))

    async def _host(
        self, domain: str, host: str, port: int, sts: Policy | None, mx_secure: bool
    ) -> HostTls | str:
        try:
            addresses, addresses_secure = await self._addresses(host)
        except LookupFailed as exc:
            if mx_secure:
                return f"4.4.3 {host}: {exc}"
            addresses, addresses_secure = (), False
        if mx_secure and addresses_secure and addresses:
            try:
                found = await lookup(self._resolver, dane.tlsa_name(host, port), "TLSA")
            except LookupFailed as exc:
                self.report("dane", "tlsa_lookup_failed")
                return f"4.7.5 {host}: TLSA lookup failed, so no delivery: {exc}"
            if found.secure and found.records:
                return self._dane_tls(domain, host, found.records, sts, addresses)
        if sts is None:
            return HostTls("opportunistic", addresses=addresses)
        testing = sts.mode == "testing"
        policy = f"mta-sts-{sts.mode}"
        if not sts.allows(host):
            self.report(policy, "mx_not_in_policy")
            log.warning(
                "event=mta_sts_mx_mismatch domain=%s host=%s mode=%s mx=%s",
                domain,
                host,
                sts.mode,
                ",".join(sts.mx),
            )
            if not testing:
                return f"4.7.5 {host}: not an MX host of {domain}'s MTA-STS policy"
            return HostTls("opportunistic", addresses=addresses)
        return HostTls("verified", testing=testing, policy=policy, addresses=addresses)

    def _dane_tls(
        self,
        domain: str,
        host: str,
        records: tuple[dns.rdata.Rdata, ...],
        sts: Policy | None,
        addresses: tuple[str, ...],
    ) -> HostTls:
        tlsa = tuple(
            dane.Tlsa(r.usage, r.selector, r.mtype, r.cert) for r in records if isinstance(r, TLSA)
        )
        usable = dane.usable(tlsa)
        for record in tlsa:
            if (reason := dane.unusable_reason(record)) is not None:
                log.info("event=dane_tlsa_unusable host=%s tlsa=%s reason=%s", host, record, reason)
        if usable:
            return HostTls("dane", tlsa=usable, policy="dane", addresses=addresses)
        if sts is not None and sts.mode == "enforce" and sts.allows(host):
            return HostTls("verified", policy="mta-sts-enforce", addresses=addresses)
        log.info("event=dane_only_unusable domain=%s host=%s: TLS, unauthenticated", domain, host)
        return HostTls("encrypted", policy="dane-unusable", addresses=addresses)

    async def _tls_rpt(self, domain: str) -> tuple[str, ...]:
        try:
            found = await lookup(self._resolver, tls_rpt.record_name(domain), "TXT")
        except LookupFailed:
            return ()
        return tls_rpt.parse_record([txt_text(r) for r in found.records])

    async def _secure(self, name: str, rdtype: str) -> bool:
        try:
            return (await lookup(self._resolver, name, rdtype)).secure
        except LookupFailed:
            return False

    async def _any(self, host: str) -> tuple[str, ...]:
        try:
            return (await self._addresses(host))[0]
        except LookupFailed:
            return ()  # then the system's resolver has a go at the name

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], bool]:
        """The addresses of ``host``, IPv4 first, and whether every answer they come from
        is validated (RFC 7672 2.2.2: DANE only then). One family failing to answer leaves
        the other; LookupFailed only when both fail."""
        answers: list[Lookup] = []
        failures: list[LookupFailed] = []
        for rdtype in ("A", "AAAA"):
            try:
                answers.append(await lookup(self._resolver, host, rdtype))
            except LookupFailed as exc:
                failures.append(exc)
        if not answers:
            raise failures[0]
        used = [a for a in answers if a.records]
        found = tuple(r.to_text() for a in used for r in a.records)
        return found, bool(used) and all(a.secure for a in used)

"""Delivery of one message to its recipients, by route: smarthost, direct MX or Maildir.

The only module that speaks SMTP outward (with aiosmtplib, whose replies come through
`gateway.reply_queue`; transactions pipelined by `gateway.pipelining`). It knows
nothing of the spool or of retries: ``Delivery.deliver`` takes a sender, recipients and
the sealed bytes and returns one ``Outcome`` per recipient, each delivered, transient
(try again later) or permanent (bounce), with the reply text kept for the DSN and logs.

TLS: opportunistic by default (STARTTLS when offered, certificate not checked, since an
MX's certificate rarely names it; if the handshake itself fails, the attempt is repeated
in clear text, as any MTA does). For destinations that require TLS (a smarthost set to
``required``, a recipient domain listed in ``tls_required_domains``, or one for which the
``tls_required`` callable, the registry of insurers, says so at each attempt) STARTTLS is
mandatory and the certificate is verified against the host name; any failure there is a
transient outcome, never a clear-text delivery. On the ``mx`` route, `gateway.tls_policy`
(DANE, MTA-STS) may ask the same of an MX host, or a certificate matching its TLSA records,
or TLS without authentication; it may also leave hosts out.

Connections are pooled per host, port and the TLS asked of that host (``HostTls``: two
domains' policies asking different things of one MX host never share a session), checked
with RSET before each reuse (in the same write as the envelope to a hop offering
PIPELINING) and closed with QUIT once idle for ``idle_timeout``
(gateway.connection_pool); the number of simultaneous transactions per destination is
bounded. Credentials for a
smarthost are only ever sent over TLS.

A next hop that fails at the connection level is remembered (gateway.destinations): while
it is failing only one probe at a time connects, and the other recipients for it get a
transient outcome at once, held until after the next probe, without a connection attempt.
The hop's key names the TLS enforced on it (``+tls``, ``+dane``, ``+mta-sts-enforce``), and
a certificate that fails a domain's DANE or MTA-STS policy is a transient outcome for that
attempt, not a dead destination: the host answered.

Maildir (the embedded default): one file per recipient, with ``Return-Path`` and
``Delivered-To`` prepended (above the DKIM signatures, which they do not disturb),
written in ``tmp/``, fsynced, renamed into ``new/``, and the directory fsynced.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, Protocol

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from gateway import dane, pipelining
from gateway.connection_pool import IdlePool
from gateway.destinations import Destinations, Hold, Refusal, Ticket, next_hop
from gateway.mail_params import NO_PARAMS, MailParams, Unsendable, options_for
from gateway.reply_queue import QueuedSMTP
from gateway.tls_policy import OPPORTUNISTIC, HostTls, TlsPolicy
from keys.safeio import fsync_dir

log = logging.getLogger("sealpost.delivery")

Status = Literal["delivered", "transient", "permanent"]
TlsMode = Literal["required", "opportunistic"]


@dataclass(frozen=True)
class Outcome:
    recipient: str
    status: Status
    reply: str  # "250 ...", "550 5.1.1 ...", or a local reason such as "4.4.1 connect ..."
    destination: str = ""  # the next hop tried (gateway.destinations.next_hop); "" for none
    hold: Hold | None = None  # set when the destination is failing: when to try again


@dataclass(frozen=True)
class Smarthost:
    host: str
    port: int = 25
    tls: TlsMode = "opportunistic"
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DirectMX:
    port: int = 25  # other than 25 only in tests


@dataclass(frozen=True)
class MaildirRoute:
    path: Path


Route = Smarthost | DirectMX | MaildirRoute


class MxResolver(Protocol):
    async def mx_hosts(self, domain: str) -> list[str]:
        """Host names to try for ``domain``, best first. Raises DnsFailure."""
        ...


class DnsFailure(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


class DnsMxResolver:
    """MX lookup with dnspython: MX records by preference, else the domain's own A/AAAA
    (RFC 5321 5.1 implicit MX); a null MX (RFC 7505) or NXDOMAIN is permanent."""

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self._resolver = resolver or dns.asyncresolver.Resolver()

    async def mx_hosts(self, domain: str) -> list[str]:
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise DnsFailure(f"5.1.2 domain {domain} does not exist", permanent=True) from exc
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except dns.exception.DNSException as exc:
            raise DnsFailure(
                f"4.4.3 MX lookup for {domain} failed: {exc}", permanent=False
            ) from exc
        records = sorted(answer, key=lambda r: r.preference)
        if any(r.exchange == dns.name.root for r in records):
            raise DnsFailure(f"5.1.10 domain {domain} accepts no mail (null MX)", permanent=True)
        return [r.exchange.to_text(omit_final_dot=True) for r in records]

    async def _implicit_mx(self, domain: str) -> list[str]:
        for rdtype in ("A", "AAAA"):
            try:
                await self._resolver.resolve(domain, rdtype)
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as exc:
                raise DnsFailure(
                    f"4.4.3 lookup for {domain} failed: {exc}", permanent=False
                ) from exc
            return [domain]
        raise DnsFailure(f"5.1.2 domain {domain} has no MX and no address", permanent=True)


@dataclass(frozen=True)
class _Destination:
    hosts: tuple[str, ...]
    port: int
    tls: TlsMode
    # Per host, what `gateway.tls_policy` asks; a host not listed gets `tls`.
    host_tls: tuple[tuple[str, HostTls], ...] = ()

    def tls_for(self, host: str) -> HostTls:
        for name, tls in self.host_tls:
            if name == host:
                return tls
        return _VERIFIED if self.tls == "required" else OPPORTUNISTIC


_VERIFIED = HostTls("verified")  # a required smarthost, or tls_required_domains without policy


class _TransientConnect(Exception):
    """No usable session with a host: the host is down, not the message refused."""


class _LostMidTransaction(_TransientConnect):
    """A fresh session dropped during the transaction: the host answered, so this says
    nothing about the destination (the message may be what it chokes on)."""


class _PolicyUnmet(_TransientConnect):
    """The host answered but its certificate is not the one a domain's DANE or MTA-STS
    policy asks for: a failure of that host for that policy, not a dead destination (the
    same host may be right for another domain, or once its certificate is fixed)."""


class _Unauthenticated(Exception):
    """TLS was established but the peer's certificate is not the one the policy asks for."""


class _Held(Exception):
    """The destination went down while this attempt waited for a free session."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


_RSET_TIMEOUT: Final = 20.0  # Postfix's smtp_rset_timeout
# Requirements a recipient domain publishes (gateway.tls_policy) rather than ours.
_DOMAIN_POLICIES: Final = frozenset({"dane", "dane-unusable", "mta-sts-enforce"})


class Delivery:
    def __init__(
        self,
        route: Route,
        *,
        tls_required_domains: frozenset[str] = frozenset(),
        tls_required: Callable[[str], bool] | None = None,
        verify_context: ssl.SSLContext | None = None,
        resolver: MxResolver | None = None,
        local_hostname: str | None = None,
        per_destination: int = 4,
        timeout: float = 60.0,
        idle_timeout: float = 30.0,
        destinations: Destinations | None = None,
        tls_policy: TlsPolicy | None = None,
    ) -> None:
        self.route = route
        self._tls_required = frozenset(d.lower() for d in tls_required_domains)
        self._tls_required_for = tls_required
        self._verify = verify_context or ssl.create_default_context()
        self._relaxed = ssl.create_default_context()
        self._relaxed.check_hostname = False
        self._relaxed.verify_mode = ssl.CERT_NONE
        self._resolver: MxResolver = resolver or DnsMxResolver()
        self._local_hostname = local_hostname or socket.getfqdn()
        self._per_destination = per_destination
        self._timeout = timeout
        self._tls_policy = tls_policy
        self._pool: IdlePool[tuple[str, int, HostTls], aiosmtplib.SMTP] = IdlePool(
            idle_timeout, _quit
        )
        self.destinations = destinations or Destinations()
        self._limits: dict[tuple[str, int, HostTls], asyncio.Semaphore] = {}
        self.connections_opened = 0

    async def deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        params: MailParams = NO_PARAMS,
    ) -> list[Outcome]:
        """One attempt for every recipient; never raises for a delivery failure. `params`:
        the client's MAIL parameters, passed on as the next hop allows (gateway.mail_params)."""
        if isinstance(self.route, MaildirRoute):
            return await asyncio.to_thread(write_maildir, self.route.path, sender, recipients, data)
        groups: dict[_Destination | DnsFailure, list[str]] = {}
        by_domain: dict[str, _Destination | DnsFailure] = {}  # one lookup (and policy) each
        for rcpt in recipients:
            domain = rcpt.rpartition("@")[2].lower()
            if domain not in by_domain:
                by_domain[domain] = await self._destination(rcpt)
            groups.setdefault(by_domain[domain], []).append(rcpt)
        outcomes: dict[str, Outcome] = {}
        results = await asyncio.gather(
            *(
                self._deliver_group(key, group, sender, data, params)
                for key, group in groups.items()
            )
        )
        for result in results:
            outcomes.update((o.recipient, o) for o in result)
        return [outcomes[r] for r in recipients]

    async def close(self) -> None:
        """Quit every pooled connection."""
        await self._pool.close()

    # -- routing -------------------------------------------------------------------

    async def _destination(self, rcpt: str) -> _Destination | DnsFailure:
        domain = rcpt.rpartition("@")[2].lower()
        required = domain in self._tls_required or bool(
            self._tls_required_for and self._tls_required_for(domain)
        )
        if isinstance(self.route, Smarthost):
            tls: TlsMode = "required" if required else self.route.tls
            return _Destination((self.route.host,), self.route.port, tls)
        assert isinstance(self.route, DirectMX)
        if not domain:
            return DnsFailure("5.1.3 recipient address has no domain", permanent=True)
        try:
            hosts = await self._resolver.mx_hosts(domain)
        except DnsFailure as failure:
            return failure
        if self._tls_policy is None:
            return _Destination(
                tuple(hosts), self.route.port, "required" if required else "opportunistic"
            )
        plan = await self._tls_policy.plan(domain, hosts, self.route.port, required=required)
        if not plan.hosts:  # every host left out by policy: a deferral like a DNS one
            return DnsFailure(plan.refusal(), permanent=False)
        return _Destination(
            tuple(h for h, _ in plan.hosts), self.route.port, "opportunistic", plan.hosts
        )

    async def _deliver_group(
        self,
        key: _Destination | DnsFailure,
        rcpts: list[str],
        sender: str,
        data: bytes,
        params: MailParams,
    ) -> list[Outcome]:
        if isinstance(key, DnsFailure):
            status: Status = "permanent" if key.permanent else "transient"
            return [Outcome(r, status, str(key)) for r in rcpts]
        hop = self._next_hop(key)
        admitted = self.destinations.admit(hop)
        if isinstance(admitted, Refusal):
            held = Hold(admitted.until, attempted=False)
            return [Outcome(r, "transient", admitted.reason, hop, held) for r in rcpts]
        reasons: list[str] = []
        answered = False
        try:
            for host in key.hosts:
                try:
                    outcomes = await self._deliver_to_host(
                        host, key, rcpts, sender, data, params, admitted
                    )
                except _Held as held:
                    hold = Hold(held.refusal.until, attempted=bool(reasons))
                    return [Outcome(r, "transient", held.refusal.reason, hop, hold) for r in rcpts]
                except _TransientConnect as exc:
                    reasons.append(str(exc))
                    answered = answered or isinstance(exc, _LostMidTransaction | _PolicyUnmet)
                    continue
                self.destinations.succeeded(admitted)
                return [replace(o, destination=hop) for o in outcomes]
        except BaseException:
            self.destinations.abandoned(admitted)
            raise
        reason = "; ".join(reasons) or "4.4.4 no host to deliver to"
        if answered:
            self.destinations.succeeded(admitted)
            return [Outcome(r, "transient", reason, hop) for r in rcpts]
        hold = self.destinations.failed(admitted, reason)
        return [Outcome(r, "transient", reason, hop, hold) for r in rcpts]

    def _next_hop(self, dest: _Destination) -> str:
        """The hop named by its hosts, port and what TLS is enforced on them beyond the
        route: ``+tls`` for ours (tls_required_domains, the registry), the policy's name
        for a domain's own (``+dane``, ``+mta-sts-enforce``), so that a hop failing under
        one requirement holds back no mail for the same MX hosts without it."""
        route_tls = self.route.tls if isinstance(self.route, Smarthost) else "opportunistic"
        policies: set[str] = set()
        for host in dest.hosts:
            tls = dest.tls_for(host)
            if not tls.enforced:
                continue
            if tls.policy in _DOMAIN_POLICIES:
                policies.add(tls.policy)
            elif route_tls != "required":
                policies.add("tls")
        return next_hop(dest.hosts, dest.port, requirements=policies)

    # -- one host ------------------------------------------------------------------

    async def _deliver_to_host(
        self,
        host: str,
        dest: _Destination,
        rcpts: list[str],
        sender: str,
        data: bytes,
        params: MailParams,
        ticket: Ticket,
    ) -> list[Outcome]:
        pool_key = (host, dest.port, dest.tls_for(host))
        limit = self._limits.setdefault(pool_key, asyncio.Semaphore(self._per_destination))
        async with limit:
            # Those queued behind the first failures do not each try again (a cohort of
            # ``per_destination`` attempts at most finds a destination down).
            if (refusal := self.destinations.recheck(ticket)) is not None:
                raise _Held(refusal)
            client, reused = await self._checkout(pool_key)
            try:
                outcomes, healthy = await self._transaction(
                    client, host, rcpts, sender, data, params, reset=reused
                )
            except aiosmtplib.SMTPServerDisconnected:
                client.close()
                if not reused:
                    raise _LostMidTransaction(f"4.4.2 {host}: connection lost") from None
                # A pooled connection the peer had already closed (or that failed its
                # pipelined RSET): one fresh try.
                client, _ = await self._checkout(pool_key, fresh=True)
                try:
                    outcomes, healthy = await self._transaction(
                        client, host, rcpts, sender, data, params, reset=False
                    )
                except aiosmtplib.SMTPServerDisconnected:
                    client.close()
                    raise _LostMidTransaction(f"4.4.2 {host}: connection lost") from None
                except BaseException:
                    client.close()
                    raise
            except BaseException:  # cancelled mid-transaction: the session is unusable
                client.close()
                raise
            if healthy and client.is_connected:
                self._pool.park(pool_key, client)
            else:
                await _quit(client)
            return outcomes

    async def _checkout(
        self, key: tuple[str, int, HostTls], *, fresh: bool = False
    ) -> tuple[aiosmtplib.SMTP, bool]:
        while not fresh and (client := self._pool.take(key)) is not None:
            # RSET first: a clean envelope, and proof the session still lives (RFC 5321
            # 4.1.1.5), before a message is committed to it. With PIPELINING it goes in
            # the same write as the envelope (`_transaction`).
            if pipelining.offered(client):
                return client, True
            try:
                await client.rset(timeout=min(self._timeout, _RSET_TIMEOUT))
            except (aiosmtplib.SMTPException, OSError):
                client.close()
                continue
            return client, True
        return await self._connect(*key), False

    async def _connect(self, host: str, port: int, tls: HostTls) -> aiosmtplib.SMTP:
        try:
            client = await self._open(host, port, tls, plain=False)
        except _TransientConnect:
            raise
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError, _Unauthenticated) as exc:
            self._tls_result(host, tls, exc)
            if tls.enforced:
                by = f" by {tls.policy}" if tls.policy else ""
                reason = f"4.7.5 {host}: TLS required{by} but not established: {_describe(exc)}"
                mismatch = isinstance(exc, _Unauthenticated | ssl.SSLCertVerificationError)
                if mismatch and tls.policy in _DOMAIN_POLICIES:
                    raise _PolicyUnmet(reason) from exc
                raise _TransientConnect(reason) from exc
            if not tls.testing:
                log.info("event=tls_fallback host=%s reason=%s", host, _describe(exc))
        else:
            self._tls_result(host, tls, None)
            return client
        if tls.testing:  # MTA-STS testing: reported above; now deliver as without a policy
            tls = replace(tls, mode="opportunistic", testing=False)
            try:
                return await self._open(host, port, tls, plain=False)
            except _TransientConnect:
                raise
            except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                log.info("event=tls_fallback host=%s reason=%s", host, _describe(exc))
        try:
            return await self._open(host, port, tls, plain=True)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _TransientConnect(f"4.4.1 {host}: {_describe(exc)}") from exc

    def _tls_result(self, host: str, tls: HostTls, error: BaseException | None) -> None:
        if not tls.policy or self._tls_policy is None:
            return
        self._tls_policy.report(tls.policy, "failed" if error else "ok")
        if error is not None:
            log.warning(
                "event=tls_policy_failure host=%s policy=%s enforced=%s reason=%s",
                host,
                tls.policy,
                tls.enforced,
                _describe(error),
            )

    async def _open(self, host: str, port: int, tls: HostTls, *, plain: bool) -> aiosmtplib.SMTP:
        smarthost = self.route if isinstance(self.route, Smarthost) else None
        addresses = tls.addresses or (host,)
        for i, address in enumerate(addresses):
            client = QueuedSMTP(
                hostname=address,
                port=port,
                local_hostname=self._local_hostname,
                timeout=self._timeout,
                start_tls=False,
                tls_context=self._verify if tls.mode == "verified" else self._relaxed,
            )
            try:
                await client.connect()
                break
            except (aiosmtplib.SMTPException, OSError) as exc:
                if i == len(addresses) - 1:
                    raise _TransientConnect(f"4.4.1 {host}: {_describe(exc)}") from exc
        self.connections_opened += 1
        try:
            await client.ehlo()
            mandatory = tls.mode != "opportunistic"
            if mandatory or (not plain and client.supports_extension("starttls")):
                # The name, not the address, for SNI and the certificate check.
                await client.starttls(server_hostname=host)
            if tls.mode == "dane":
                _check_dane(client, host, tls.tlsa)
            if smarthost is not None and smarthost.username is not None:
                if client.get_transport_info("sslcontext") is None:
                    raise _TransientConnect(f"4.7.0 {host}: no TLS, so no AUTH (never in clear)")
                try:
                    await client.login(smarthost.username, smarthost.password or "")
                except aiosmtplib.SMTPException as exc:
                    raise _TransientConnect(
                        f"4.7.0 {host}: authentication failed: {_describe(exc)}"
                    ) from exc
        except BaseException:
            await _quit(client)
            raise
        return client

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        host: str,
        rcpts: list[str],
        sender: str,
        data: bytes,
        params: MailParams,
        *,
        reset: bool,
    ) -> tuple[list[Outcome], bool]:
        """One MAIL/RCPT/DATA; returns outcomes and whether the connection is reusable.
        `reset`: a pooled session, to be proven alive by a pipelined RSET (when the hop
        pipelines; `_checkout` sent it otherwise)."""
        if client.is_ehlo_or_helo_needed:
            # STARTTLS makes the client forget the extensions (RFC 3207 4.2) until its next
            # EHLO, which sendmail would send only after the options were chosen.
            try:
                await client.ehlo()
            except aiosmtplib.SMTPServerDisconnected:
                raise
            except (aiosmtplib.SMTPException, OSError) as exc:
                return [Outcome(r, "transient", f"4.4.2 {_describe(exc)}") for r in rcpts], False
        try:
            options = options_for(params, sender, rcpts, data, client.supports_extension, host)
        except Unsendable as refusal:
            # Nothing was sent, so the connection stays usable. Every recipient fails for
            # good and no other MX is tried, as in Postfix.
            log.info("event=unsendable host=%s reason=%s", host, refusal)
            return [Outcome(r, "permanent", str(refusal)) for r in rcpts], True
        try:
            if pipelining.offered(client):
                done = await pipelining.send_pipelined(
                    client,
                    sender,
                    rcpts,
                    data,
                    options,
                    reset=reset,
                    reply_timeout=self._timeout,
                    reset_timeout=min(self._timeout, _RSET_TIMEOUT),
                )
                return [_decided(r, v) for r, v in zip(rcpts, done.verdicts, strict=True)], (
                    done.reusable
                )
            refused, reply = await client.sendmail(sender, rcpts, data, mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            by_rcpt = {
                e.recipient: _classify(e.code, e.message, e.recipient) for e in exc.recipients
            }
            return [by_rcpt[r] for r in rcpts], True
        except aiosmtplib.SMTPServerDisconnected:
            raise
        except aiosmtplib.SMTPDataError as exc:
            # The recipients refused at RCPT keep their own reply, as when pipelining.
            kept = client.refused_at_rcpt if isinstance(client, QueuedSMTP) else {}
            return [
                _classify(kept[r].code, kept[r].message, r)
                if r in kept
                else _classify(exc.code, exc.message, r)
                for r in rcpts
            ], client.is_connected
        except aiosmtplib.SMTPResponseException as exc:
            return [_classify(exc.code, exc.message, r) for r in rcpts], client.is_connected
        except aiosmtplib.SMTPNotSupported as exc:
            return [Outcome(r, "permanent", f"5.6.7 {exc}") for r in rcpts], True
        except (aiosmtplib.SMTPException, OSError) as exc:
            return [Outcome(r, "transient", f"4.4.2 {_describe(exc)}") for r in rcpts], False
        except ValueError as exc:  # an address aiosmtplib refuses to put on the wire
            return [Outcome(r, "permanent", f"5.1.3 {exc}") for r in rcpts], True
        outcomes = []
        for r in rcpts:
            if r in refused:
                outcomes.append(_classify(refused[r].code, refused[r].message, r))
            else:
                outcomes.append(Outcome(r, "delivered", f"250 {_one_line(reply)}"))
        return outcomes, True


def _check_dane(client: aiosmtplib.SMTP, host: str, tlsa: tuple[dane.Tlsa, ...]) -> None:
    ssl_object = client.get_transport_info("ssl_object")
    chain = dane.peer_chain(ssl_object) if ssl_object else []
    if dane.verify(tlsa, chain, host) is None:
        raise _Unauthenticated(f"certificate matches none of its {len(tlsa)} TLSA records")


def _decided(rcpt: str, verdict: pipelining.Verdict) -> Outcome:
    if verdict.delivered:
        return Outcome(rcpt, "delivered", f"250 {_one_line(verdict.reply.message)}")
    return _classify(verdict.reply.code, verdict.reply.message, rcpt)


def _classify(code: int, message: str, rcpt: str) -> Outcome:
    status: Status = "permanent" if 500 <= code < 600 else "transient"
    return Outcome(rcpt, status, f"{code} {_one_line(message)}")


# A downstream server's reply is untrusted text: aiosmtplib hands its undecodable bytes
# over as lone surrogates, which neither the spool (SQLite) nor a DSN can encode, and its
# control characters would reach logs and DSNs as they came. Each becomes "?", as
# Postfix's smtp client masks a reply; valid UTF-8 text stays.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _one_line(text: str) -> str:
    return _UNSAFE.sub("?", " ".join(text.split()))[:900]


def _describe(exc: BaseException) -> str:
    return _one_line(str(exc)) or type(exc).__name__


async def _quit(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        async with asyncio.timeout(2.0):  # not wait_for: see Scheduler._run
            await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


# -- Maildir --------------------------------------------------------------------------

_sequence = itertools.count(1)  # next() on a count is atomic: safe from worker threads


def maildir_name() -> str:
    """A unique name per the Maildir rules: time.MusecPpidQcounter.host."""
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_sequence)}.{host}"


MAILDIR_SUBDIRS: Final = ("tmp", "new", "cur")


def write_maildir(root: Path, sender: str, recipients: Sequence[str], data: bytes) -> list[Outcome]:
    """One file per recipient, written in tmp/, fsynced, renamed into new/ (synchronous)."""
    try:
        for sub in MAILDIR_SUBDIRS:
            (root / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [
            Outcome(r, "transient", f"4.3.0 maildir {root}: {_describe(exc)}") for r in recipients
        ]
    outcomes = []
    for rcpt in recipients:
        name = maildir_name()
        tmp, new = root / "tmp" / name, root / "new" / name
        header = f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode()
        try:
            with open(tmp, "xb") as f:
                f.write(header)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, new)
            fsync_dir(root / "new")
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            outcomes.append(Outcome(rcpt, "transient", f"4.3.0 maildir: {_describe(exc)}"))
            continue
        outcomes.append(Outcome(rcpt, "delivered", f"250 2.0.0 maildir {name}"))
    return outcomes

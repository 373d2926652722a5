"""``sealpost-gateway``: run the gateway, check its config, hash a password, manage the queue.

    sealpost-gateway [--config FILE]                  run (the embedded default without FILE)
    sealpost-gateway check-config [--config FILE]     print the effective config, or the errors
    sealpost-gateway hash-password                    read a password, print its scrypt hash
    sealpost-gateway [--config FILE] queue list [--org CODE]|show ID|retry ID|delete ID|flush

Running wires the stages together, each given plain values: SMTP listeners in this
process's event loop -> policy -> sealing in a process pool -> the durable spool -> the
scheduler and delivery. SIGTERM or SIGINT stops accepting, lets sessions finish their
message (bounded by gateway.shutdown_grace), stops the scheduler and closes the spool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import dns.asyncresolver

from gateway import dns_lookup, queue_cli, server, tls_policy_cli
from gateway import metrics as metrics_http
from gateway.delivery import (
    Delivery,
    DirectMX,
    DnsMxResolver,
    MaildirRoute,
    Route,
    Smarthost,
)
from gateway.destinations import Destinations
from gateway.insurers import Insurers, Mode
from gateway.lanes import lane_settings, spool_paths, supervise
from gateway.log_process import LogProcess, LogProcessConfig
from gateway.log_writer import LogConfig, LogError
from gateway.metrics import Metrics
from gateway.mta_sts import HttpsFetcher, MtaSts, PolicyCache
from gateway.scheduler import RetryPolicy, Scheduler
from gateway.seal import DocumentRules, Sealed
from gateway.sealer import Sealer
from gateway.settings import (
    ConfigError,
    LimitsSettings,
    ListenerSettings,
    Settings,
    hash_password,
    load,
    parse_listen,
    render,
)
from gateway.signing_watch import SigningWatch
from gateway.smtp_handler import AuthGuard, Handler, SessionLimits, Sessions
from gateway.spool import Envelope, Spool, SpoolError
from gateway.tls_policy import TlsPolicy
from keys import dns as key_dns
from keys import store as key_store
from keys.lifecycle import Refused
from keys.safeio import atomic_write
from keys.signing import SigningKeys
from orgs.registry import Registry, RegistryError
from tlog import note

log = logging.getLogger("sealpost.gateway")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    config_help = "TOML config file (default: the embedded default, see gateway/settings.py)"
    parser = argparse.ArgumentParser(
        prog="sealpost-gateway", description="Sealpost outbound mail gateway."
    )
    parser.add_argument("--config", type=Path, help=config_help)
    # Set by the parent of the lanes (gateway.lanes > 1) on each lane it starts.
    parser.add_argument("--lane", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")
    for name, text in (
        ("run", "run the gateway (the default)"),
        ("check-config", "print the effective configuration (secrets masked) or its errors"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    commands.add_parser("hash-password", help="read a password, print its scrypt hash")
    policy = commands.add_parser(
        "tls-policy", help="show the TLS (DANE, MTA-STS) delivery would ask of a domain's MX"
    )
    policy.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    policy.add_argument("domain", help="recipient domain")
    queue = commands.add_parser("queue", help="list, show, retry, delete or flush queued mail")
    queue.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    queue.add_argument("args", nargs=argparse.REMAINDER, help="list | show ID | retry ID | ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-password":
        return hash_password_command(sys.stdin, sys.stdout)
    try:
        settings = load(args.config)
    except ConfigError as error:
        count = len(error.errors)
        print(f"sealpost-gateway: invalid configuration ({count} problems):", file=sys.stderr)
        for line in error.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        sys.stdout.write(render(settings))
        return EXIT_OK
    if args.command == "queue":
        registry = Path(settings.orgs.registry) if settings.orgs.registry else None
        return queue_cli.main(args.args, spool_paths(settings), registry=registry)
    if args.command == "tls-policy":
        return tls_policy_command(settings, args.domain)
    _configure_logging(settings.gateway.log_level)
    try:
        if args.lane is not None:
            parent = args.parent if args.parent is not None else os.getppid()
            return asyncio.run(run(lane_settings(settings, args.lane), args.lane, parent))
        if settings.gateway.lanes > 1:
            return asyncio.run(run_lanes(settings, args.config))
        return asyncio.run(run(settings))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return EXIT_FAILED


async def run_lanes(settings: Settings, config: Path | None) -> int:
    """Prepare what lanes must not race for, then run them (gateway/lanes.py)."""
    hostname = settings.gateway.hostname or socket.gethostname()
    try:
        initialise_keys(settings)
        _tls(settings, hostname)
        for lane in range(settings.gateway.lanes):
            log_config(lane_settings(settings, lane), hostname, lane)
    except (OSError, ValueError, Refused, key_store.StoreError) as error:
        log.error("event=start_failed error=%s", error)
        return EXIT_FAILED
    # -P: the working directory (a key store's "keys" folder, say) must not shadow a package.
    command = [sys.executable, "-P", "-m", "gateway"]
    if config is not None:
        command += ["--config", str(config)]
    return await supervise(command, settings.gateway.lanes, settings.gateway.shutdown_grace)


def hash_password_command(stdin: TextIO, stdout: TextIO) -> int:
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("sealpost-gateway: the passwords differ", file=sys.stderr)
            return EXIT_FAILED
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        print("sealpost-gateway: empty password", file=sys.stderr)
        return EXIT_FAILED
    stdout.write(hash_password(password) + "\n")
    return EXIT_OK


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every command, with addresses, at INFO: our one line per message
    # event says what matters, and its chatter costs throughput.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------- running


class _NotifyingSpool:
    """The spool as the SMTP handler sees it: a put also wakes the scheduler, or the
    statement log's writer when the message waits for its entry to be published."""

    def __init__(self, spool: Spool, scheduler: Scheduler) -> None:
        self._spool = spool
        self._scheduler = scheduler

    async def put(self, envelope: Envelope) -> str:
        # The handler writes the message's one event=queued line, with every field.
        queue_id = await self._spool.put(envelope, log_queued=False)
        # A message waiting for its log entry is released by the log writer's process.
        if envelope.log_entry is None:
            self._scheduler.notify()
        return queue_id


def initialise_keys(settings: Settings) -> None:
    """On first start, create the key store for the embedded default's domain."""
    store_dir, public = Path(settings.keys.store), Path(settings.keys.public_archive)
    if not settings.keys.init_domain or key_store.state_path(store_dir).exists():
        return
    result = key_store.init_domain(store_dir, public, settings.keys.init_domain, exist_ok=True)
    if not result.created:
        return
    log.warning(
        "event=keys_initialised store=%s domain=%s: publish these DNS records:",
        store_dir,
        result.domain.name,
    )
    if result.created_secret is not None:
        log.warning(
            "event=keys_secret file=%s: the root CA passphrase sits next to the store; "
            "fine for development, keep it elsewhere in production",
            result.created_secret,
        )
    for line in key_dns.zone_lines(result.domain):
        print(line, flush=True)


def log_config(settings: Settings, hostname: str, lane: int | None = None) -> LogConfig | None:
    """This node's statement log, from its key file and the key store's record of it. On
    first start with `keys.init_domain` set (development), the key is made and registered."""
    if not settings.log.key:
        return None
    key_file = Path(settings.log.key)
    store_dir, public = Path(settings.keys.store), Path(settings.keys.public_archive)
    if not key_file.exists():
        if not settings.keys.init_domain:
            raise ValueError(
                f"log.key: no statement-log key at {key_file}; create it with "
                'sealpost-keys log-key --origin ORIGIN --out FILE (or set log.key = "" to run '
                "without the statement log)"
            )
        origin = f"{settings.keys.init_domain}/statements/{hostname}"
        if lane is not None:
            origin += f"/lane{lane}"
        signer_text, verifier_text = note.generate_key(origin)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(key_file, (signer_text + "\n").encode("ascii"), 0o600)
        key_store.add_log(store_dir, public, origin, verifier_text)
        log.warning("event=log_initialised origin=%s key=%s", origin, key_file)
    signer = note.Signer.from_text(key_file.read_text(encoding="ascii").strip())
    state = key_store.load_state(store_dir)
    record = next((r for r in state.logs if r.origin == signer.name), None)
    if record is None or record.key != signer.verifier().text():
        raise ValueError(
            f"log.key: the statement log {signer.name!r} is not registered in {store_dir} "
            "with this key (sealpost-keys log-key registers it)"
        )
    return LogConfig(
        directory=public / record.path,
        signer=signer,
        interval=settings.log.interval,
        stamp_interval=settings.log.stamp_interval,
        tsa_url=settings.log.tsa_url,
        tsa_timeout=settings.log.tsa_timeout,
        tsa_roots=tuple(pem.encode("ascii") for pem in state.tsa_roots),
    )


def _log_process_config(settings: Settings, config: LogConfig) -> LogProcessConfig:
    return LogProcessConfig(
        spool_path=Path(settings.spool.path),
        directory=config.directory,
        signer_key=config.signer.text(),
        interval=config.interval,
        stamp_interval=config.stamp_interval,
        tsa_url=config.tsa_url,
        tsa_timeout=config.tsa_timeout,
        tsa_roots=config.tsa_roots,
        log_level=logging.getLogger().getEffectiveLevel(),
    )


def _insurers(settings: Settings) -> Insurers | None:
    """The registry of insurers, opened in this process (a lane opens its own)."""
    if not settings.orgs.registry:
        return None
    mode: Mode = "warn" if settings.orgs.unregistered == "warn" else "refuse"
    return Insurers(Registry(Path(settings.orgs.registry)), mode)


def _route(settings: Settings) -> Route:
    delivery = settings.delivery
    if delivery.route == "smarthost":
        host, port = parse_listen(delivery.smarthost)
        return Smarthost(
            host,
            port,
            tls="required" if delivery.smarthost_tls == "required" else "opportunistic",
            username=delivery.smarthost_username or None,
            password=delivery.smarthost_password or None,
        )
    if delivery.route == "mx":
        return DirectMX()
    return MaildirRoute(Path(delivery.maildir))


def _delivery(
    settings: Settings, hostname: str, metrics: Metrics, insurers: Insurers | None = None
) -> Delivery:
    """Delivery on its route; on the mx route with DANE and MTA-STS as configured; verified
    TLS to the domains of ``tls_required_domains`` and of registered insurers' mailboxes."""
    config = settings.delivery
    route = _route(settings)
    verify = _verify_context(settings)
    resolver = dns_lookup.make_resolver(config.resolver)
    tls_policy = None
    if isinstance(route, DirectMX):
        tls_policy = _tls_policy(settings, resolver, verify, metrics)
    return Delivery(
        route,
        tls_required_domains=frozenset(config.tls_required_domains),
        tls_required=insurers.tls_required if insurers is not None else None,
        verify_context=verify,
        resolver=DnsMxResolver(resolver),
        local_hostname=hostname,
        per_destination=config.concurrency_per_destination,
        idle_timeout=config.idle_timeout,
        destinations=Destinations(probe_interval=config.probe_interval),
        tls_policy=tls_policy,
    )


def _verify_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.delivery.tls_ca_file or None)


def _tls_policy(
    settings: Settings,
    resolver: dns.asyncresolver.Resolver,
    verify: ssl.SSLContext,
    metrics: Metrics,
    *,
    persist: bool = True,
) -> TlsPolicy | None:
    config = settings.delivery
    if not (config.mta_sts or config.dane):
        return None
    finder = None
    if config.mta_sts:
        cache = Path(config.mta_sts_cache or Path(settings.spool.path) / "mta-sts")
        finder = MtaSts(
            resolver,
            PolicyCache(cache, persist=persist),
            HttpsFetcher(resolver, verify, config.mta_sts_fetch_timeout),
            on_fetch=metrics.mta_sts_fetches.inc,
        )
    return TlsPolicy(
        resolver, mta_sts=finder, dane_enabled=config.dane, report=metrics.tls_policy.inc
    )


def tls_policy_command(settings: Settings, domain: str) -> int:
    """``sealpost-gateway tls-policy DOMAIN``: what delivery to DOMAIN would ask of its MX
    hosts now; reads the MTA-STS cache of the (first) spool, never writes it."""
    resolver = dns_lookup.make_resolver(settings.delivery.resolver)
    policy = _tls_policy(
        lane_settings(settings, 0) if settings.gateway.lanes > 1 else settings,
        resolver,
        _verify_context(settings),
        Metrics(),
        persist=False,
    )
    required = frozenset(d.lower() for d in settings.delivery.tls_required_domains)
    return asyncio.run(
        tls_policy_cli.show(domain, DnsMxResolver(resolver), policy, required, sys.stdout)
    )


def _listeners(settings: Settings) -> list[server.ListenerSpec]:
    configured: tuple[tuple[server.Mode, ListenerSettings], ...] = (
        ("relay", settings.relay),
        ("submission", settings.submission),
        ("smtps", settings.smtps),
    )
    specs = []
    for mode, listener in configured:
        if listener.listen:
            host, port = parse_listen(listener.listen)
            timeout = listener.proxy_protocol_timeout or None
            specs.append(server.ListenerSpec(mode, host, port, timeout))
    return specs


def _tls(settings: Settings, hostname: str) -> ssl.SSLContext | None:
    cert, key = Path(settings.tls.certificate), Path(settings.tls.key)
    if settings.tls.self_signed and server.ensure_self_signed(cert, key, hostname):
        log.warning(
            "event=tls_self_signed certificate=%s: made a self-signed certificate for the "
            "embedded default; clients must trust it explicitly. Configure [tls] with a "
            "real certificate in production.",
            cert,
        )
    if not cert.exists() or not key.exists():
        return None
    return server.tls_context(cert, key)


def _handler(
    settings: Settings,
    sealer: Sealer,
    spool: Spool,
    scheduler: Scheduler,
    metrics: Metrics,
    logging_on: bool,
    insurers: Insurers | None,
) -> Handler:
    limits = settings.limits
    return Handler(
        insurers=insurers,
        clients=settings.clients,
        signing_domains=SigningKeys(Path(settings.keys.store)).domains,
        sealer=sealer,
        spool=_NotifyingSpool(spool, scheduler),
        log_entries=logging_on,
        metrics=metrics,
        auth_guard=AuthGuard(
            limits.auth_max_failures_per_ip,
            limits.auth_max_failures_per_user,
            lockout=limits.auth_lockout,
            delay=limits.auth_failure_delay,
        ),
        max_recipients=limits.max_recipients,
        max_line_length=limits.max_line_length,
    )


def _scheduler(
    settings: Settings,
    spool: Spool,
    delivery: Delivery,
    sealer: Sealer,
    metrics: Metrics,
    logging_on: bool,
    insurers: Insurers | None,
) -> Scheduler:
    async def seal_dsn(raw: bytes, domain: str) -> bytes | Sealed:
        sealed = await sealer.seal(raw, domain)
        # A bounce is sealed like any mail, so with the log on it is logged like any mail.
        return sealed if logging_on else sealed.data

    def count(states: Mapping[str, int]) -> None:
        metrics.delivered.inc(amount=states["delivered"])
        metrics.deferred.inc(amount=states["deferred"])
        metrics.bounced.inc(amount=states["bounced"])

    by_state = {
        "delivered": metrics.org_delivered,
        "deferred": metrics.org_deferred,
        "bounced": metrics.org_bounced,
    }

    def count_per_insurer(outcomes: Sequence[tuple[str, str]]) -> None:
        assert insurers is not None
        for address, state in outcomes:
            code = insurers.organisation_of(address)
            if code is not None:
                by_state[state].inc(code)

    return Scheduler(
        spool,
        delivery,
        seal_dsn,
        reporting_mta=settings.gateway.hostname or socket.gethostname(),
        policy=RetryPolicy(
            first=settings.delivery.first_retry,
            ceiling=settings.delivery.max_retry_interval,
            lifetime=settings.delivery.max_lifetime,
        ),
        grace=settings.gateway.shutdown_grace,
        on_recorded=count,
        on_recipients=count_per_insurer if insurers is not None else None,
        destinations=delivery.destinations,
    )


async def run(settings: Settings, lane: int | None = None, parent: int | None = None) -> int:
    """Start every stage, serve until SIGTERM or SIGINT, then stop them in order. A lane
    shares its ports with the other lanes and stops when its parent dies."""
    hostname = settings.gateway.hostname or socket.gethostname()
    limits = settings.limits
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        try:
            initialise_keys(settings)
            tls = _tls(settings, hostname)
            spool = Spool.open(Path(settings.spool.path))
            stack.push_async_callback(spool.close)
            rules = DocumentRules(settings.sealing.content_types, settings.sealing.filename_globs)
            sealer = Sealer(Path(settings.keys.store), rules, settings.sealing.workers)
            stack.callback(sealer.close)
            insurers = _insurers(settings)
            if insurers is not None:
                stack.callback(insurers.registry.close)
            delivery = _delivery(settings, hostname, metrics, insurers)
            stack.push_async_callback(delivery.close)
            logging_config = log_config(settings, hostname, lane)
            scheduler = _scheduler(
                settings, spool, delivery, sealer, metrics, logging_config is not None, insurers
            )
            writer = None
            if logging_config is not None:
                writer = LogProcess(
                    _log_process_config(settings, logging_config), spool, scheduler.notify
                )
                stack.push_async_callback(writer.stop)
            metrics.queue_depth = spool.depth
            watch = SigningWatch(Path(settings.keys.store))
            watch.start()  # logs the generation each domain signs with from now on
            stack.push_async_callback(watch.stop)
            metrics.signing = watch.series
            metrics.destinations = delivery.destinations.views
            if settings.metrics.listen:
                host, port = parse_listen(settings.metrics.listen)
                metrics_server = await metrics_http.serve(metrics, host, port)
                stack.callback(metrics_server.close)
            receiver = await server.start(
                _handler(settings, sealer, spool, scheduler, metrics, writer is not None, insurers),
                _listeners(settings),
                hostname=hostname,
                tls=tls,
                limits=session_limits(limits),
                sessions=Sessions(limits.max_connections, limits.max_connections_per_ip),
                reuse_port=lane is not None,
            )
        except (
            OSError,
            ValueError,
            Refused,
            key_store.StoreError,
            SpoolError,
            LogError,
            RegistryError,
        ) as error:
            # A port in use, an unreadable certificate or store: one readable line.
            log.error("event=start_failed error=%s", error)
            return EXIT_FAILED
        scheduler.start()
        stack.push_async_callback(scheduler.stop)
        if writer is not None:
            writer.start()
        log.info("event=started hostname=%s workers=%d", hostname, settings.sealing.workers)
        settle_gc()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if parent is not None:
            stack.push_async_callback(_cancel, loop.create_task(_orphaned(stop, parent)))
        await stop.wait()
        log.info("event=stopping grace=%ss", settings.gateway.shutdown_grace)
        await receiver.close(settings.gateway.shutdown_grace)
    # The exit stack stopped the scheduler, then closed metrics, delivery, sealer, spool.
    log.info("event=stopped")
    return EXIT_OK


def session_limits(limits: LimitsSettings) -> SessionLimits:
    """What each SMTP session is held to, from the `[limits]` settings."""
    return SessionLimits(
        max_message_size=limits.max_message_size,
        max_recipients=limits.max_recipients,
        command_timeout=limits.command_timeout,
        data_timeout=limits.data_timeout,
        max_line_length=limits.max_line_length,
        max_junk_commands=limits.max_junk_commands,
        max_errors=limits.max_errors,
        tls_handshake_timeout=limits.tls_handshake_timeout,
    )


def settle_gc() -> None:
    """Tune the cyclic garbage collector for a process that has finished starting.

    Under load its passes took 2.2% of a lane's CPU, a third of it in full passes that
    walked every object built at start (modules, key store, settings), which live as long
    as the process. Frozen, they are no longer walked; a message's garbage is freed by
    reference counting, so the young generation is examined every 5,000 allocations
    rather than 700 (1.1% of a lane's CPU, measured with gc.callbacks).
    """
    gc.freeze()
    gc.set_threshold(5000, 20, 20)


async def _orphaned(stop: asyncio.Event, parent: int) -> None:
    """A lane whose parent died (even by SIGKILL, even while the lane was starting) stops
    as on SIGTERM."""
    while os.getppid() == parent:  # noqa: ASYNC110 - a parent's death signals nothing here
        await asyncio.sleep(1.0)
    log.warning("event=parent_gone: stopping")
    stop.set()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


if __name__ == "__main__":
    sys.exit(main())

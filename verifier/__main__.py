"""`sealpost-verifier`: serve the verifier with uvicorn.

With no arguments it serves 127.0.0.1:8080 and reads the public archive in var/public.
Settings come from SEALPOST_VERIFIER_* variables, then from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from keys.archive import ARCHIVE_FILE
from verifier import metrics, shared, workers
from verifier.protocol import http_protocol
from verifier.settings import (
    PROXY_HEADERS,
    Settings,
    SettingsError,
    from_env,
    listen_address,
    networks,
    proxy_header,
    split_listen,
    to_env,
)


def parse_args(argv: Sequence[str] | None, base: Settings) -> Settings:
    parser = argparse.ArgumentParser(
        prog="sealpost-verifier", description="Statement verifier (web form and JSON API)."
    )
    parser.add_argument("--host", default=base.host)
    parser.add_argument("--port", type=int, default=base.port)
    parser.add_argument(
        "--archive",
        type=Path,
        default=base.archive_dir,
        help="directory holding archive.json (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=base.workers)
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=base.rate_limit_per_minute,
        help="anonymous verifications per minute per client address, 0 for none",
    )
    parser.add_argument(
        "--org-rate-limit",
        type=int,
        default=base.org_rate_limit_per_minute,
        help="verifications per minute per organisation (API tokens), 0 for none",
    )
    parser.add_argument(
        "--orgs",
        type=Path,
        default=base.orgs_registry,
        help="the registry of organisations and their API tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--trusted-proxies",
        default=",".join(base.trusted_proxies),
        help="comma-separated addresses or networks of the reverse proxies in front",
    )
    parser.add_argument(
        "--proxy-header",
        default=base.proxy_header,
        choices=PROXY_HEADERS,
        help="the header those proxies write (default: %(default)s)",
    )
    parser.add_argument(
        "--runtime-dir",
        default=base.runtime_dir,
        help="where the workers share rate limits and metrics (default: a temporary one)",
    )
    parser.add_argument(
        "--metrics-listen",
        default=base.metrics_listen,
        help='host:port of the Prometheus /metrics endpoint, "" for none (default: %(default)s)',
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        trusted = networks(args.trusted_proxies)
        header = proxy_header(args.proxy_header)
        metrics_listen = listen_address(args.metrics_listen)
    except SettingsError as exc:
        parser.error(str(exc))
    return dataclasses.replace(
        base,
        host=args.host,
        port=args.port,
        archive_dir=args.archive,
        workers=args.workers,
        rate_limit_per_minute=args.rate_limit,
        org_rate_limit_per_minute=args.org_rate_limit,
        orgs_registry=args.orgs,
        trusted_proxies=trusted,
        proxy_header=header,
        runtime_dir=args.runtime_dir,
        metrics_listen=metrics_listen,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_args(argv, from_env())
    except SettingsError as exc:
        print(f"sealpost-verifier: {exc}", file=sys.stderr)
        return 2
    archive = settings.archive_dir / ARCHIVE_FILE
    if not archive.is_file():
        # Not fatal: the archive is picked up once it appears, but until then every
        # verification answers 503, and the operator should know why from the first line.
        print(
            f"sealpost-verifier: warning: no public archive at {archive} yet; verifications "
            f"answer 503 until `sealpost-keys export-public {settings.archive_dir}` "
            "(or `sealpost-keys init`) writes it",
            file=sys.stderr,
        )
    try:
        with runtime_dir(settings) as settings, metrics_endpoint(settings):
            return serve(settings)
    except shared.RuntimeDirError as exc:
        print(f"sealpost-verifier: {exc}", file=sys.stderr)
        return 2


def serve(settings: Settings) -> int:
    # Worker processes rebuild the app from the environment; the launcher's view wins.
    os.environ.update(to_env(settings))
    if settings.workers > 1:
        options = {"access_log": True, "log_level": "info", **server_options(settings)}
        return workers.serve(settings.host, settings.port, settings.workers, options)
    uvicorn.run(
        "verifier.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=True,
        log_level="info",
        **server_options(settings),
    )
    return 0


@contextlib.contextmanager
def runtime_dir(settings: Settings) -> Iterator[Settings]:
    """The directory where this run's workers share their state, prepared empty and locked
    for this run; a private temporary one, removed afterwards, when none is set."""
    made = not settings.runtime_dir
    directory = Path(tempfile.mkdtemp(prefix="sealpost-verifier-")) if made else None
    directory = directory or Path(settings.runtime_dir)
    try:
        _, lock = shared.prepare(directory)
        try:
            yield dataclasses.replace(settings, runtime_dir=str(directory.resolve()))
        finally:
            os.close(lock)
    finally:
        if made:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def metrics_endpoint(settings: Settings) -> Iterator[None]:
    """Serves the host's metrics from the launcher, which outlives any one worker. A port
    that cannot be had is reported, and verification goes on without metrics."""
    if not settings.metrics_listen:
        yield
        return
    host, port = split_listen(settings.metrics_listen)
    state = shared.SharedState(Path(settings.runtime_dir) / shared.DATABASE)
    try:
        server = metrics.serve(state, host, port)
    except OSError as exc:
        print(
            f"sealpost-verifier: error: no metrics on {settings.metrics_listen}: {exc}",
            file=sys.stderr,
        )
        yield
        return
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        state.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that make the verifier what it is; the tests serve with these."""
    return {
        # Our h11 protocol, with its deadline on request headers, in every worker.
        "http": http_protocol(settings.limits.header_timeout_seconds),
        "ws": "none",  # no WebSocket route; an upgrade would escape the header deadline
        # Forwarding headers are read by verifier/clientaddr.py, from trusted proxies only.
        "proxy_headers": False,
        "server_header": False,
    }


if __name__ == "__main__":
    sys.exit(main())

"""`sealpost-verifier`: serve the verifier with uvicorn.

With no arguments it serves 127.0.0.1:8080 and reads the public archive in var/public.
Settings come from SEALPOST_VERIFIER_* variables, then from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from keys.archive import ARCHIVE_FILE
from verifier import workers
from verifier.protocol import http_protocol
from verifier.settings import Settings, SettingsError, from_env, to_env


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
        help="verifications per minute per client address, 0 for none",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return dataclasses.replace(
        base,
        host=args.host,
        port=args.port,
        archive_dir=args.archive,
        workers=args.workers,
        rate_limit_per_minute=args.rate_limit,
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


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that make the verifier what it is; the tests serve with these."""
    return {
        # Our h11 protocol, with its deadline on request headers, in every worker.
        "http": http_protocol(settings.limits.header_timeout_seconds),
        "ws": "none",  # no WebSocket route; an upgrade would escape the header deadline
        "proxy_headers": False,  # the rate limit keys on the peer address; no spoofing
        "server_header": False,
    }


if __name__ == "__main__":
    sys.exit(main())

"""``sealpost-gateway queue list [--org CODE] | show ID | retry ID | delete ID | flush``.

Like ``postqueue -p`` / ``postsuper``: works on the spool database directly, also while
the gateway runs (SQLite WAL lets both read, and they take turns to write). ``retry`` and
``flush`` make pending recipients due now; the running gateway's scheduler sees that at
its next poll. ``list --org CODE`` shows only the recipients that are registered mailboxes
of that insurer (orgs/), with a count per state: what the fund's staff look at first when
an insurer's mailbox is full or unreachable. Mount with ``main(argv, spool_path,
registry=...)``; it returns the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO, TypeVar

from gateway.dsn import original_headers
from gateway.spool import Recipient, Spool, StoredMessage
from orgs.registry import Registry, RegistryError

T = TypeVar("T")

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sealpost-gateway queue", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every queued message with its recipients' states")
    listing.add_argument(
        "--org",
        metavar="CODE",
        help="only the recipients that are registered mailboxes of this insurer",
    )
    for name, text in (
        ("show", "one message: envelope, recipients, headers"),
        ("retry", "try one message's pending recipients now"),
        ("delete", "remove one message from the queue (no DSN)"),
    ):
        sub.add_parser(name, help=text).add_argument("id", help="queue id")
    sub.add_parser("flush", help="try every pending recipient now")
    return p


def main(
    argv: Sequence[str],
    spool_path: Path | Sequence[Path],
    out: TextIO | None = None,
    *,
    registry: Path | None = None,
) -> int:
    """`spool_path`: the spool, or every shard of a node that runs lanes; `registry`: the
    registry of insurers, for ``list --org``."""
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse has printed the usage
        return EXIT_USAGE if exc.code else EXIT_OK
    paths = [spool_path] if isinstance(spool_path, Path) else list(spool_path)
    output = out or sys.stdout
    if args.command == "list" and args.org is not None:
        return _list_org(args.org, paths, registry, output)
    return asyncio.run(_run(args, paths, output))


def _list_org(code: str, paths: list[Path], registry: Path | None, out: TextIO) -> int:
    if registry is None or not registry.exists():
        out.write(f"no registry of insurers at {registry} (orgs.registry)\n")
        return EXIT_USAGE
    try:
        with Registry(registry) as opened:
            organisation = opened.organisation(code)
            if organisation is None:
                out.write(f"{code}: no such organisation in {registry}\n")
                return EXIT_NOT_FOUND

            def mine(r: Recipient) -> bool:
                owner = opened.mailbox_owner(r.address)
                return owner is not None and owner.code == organisation.code

            messages = asyncio.run(_all_messages(paths))
            counts = {"queued": 0, "deferred": 0, "delivered": 0, "bounced": 0}
            shown = 0
            for m in messages:
                recipients = [r for r in m.recipients if mine(r)]
                if not recipients:
                    continue
                shown += 1
                out.write(format_entry(m, recipients))
                for r in recipients:
                    counts[r.state] = counts.get(r.state, 0) + 1
    except RegistryError as exc:
        out.write(f"{exc}\n")
        return EXIT_USAGE
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    out.write(
        f"-- {shown} message(s) in queue for {organisation.code} ({organisation.name}, "
        f"{organisation.state}): {summary}\n"
    )
    return EXIT_OK


async def _all_messages(paths: list[Path]) -> list[StoredMessage]:
    messages: list[StoredMessage] = []
    for path in paths:
        messages += await _with(path, lambda spool: spool.messages())
    return messages


async def _run(args: argparse.Namespace, paths: list[Path], out: TextIO) -> int:
    command: str = args.command
    if command == "list":
        total = 0
        for path in paths:
            messages = await _with(path, lambda spool: spool.messages())
            total += len(messages)
            for m in messages:
                out.write(format_entry(m))
        out.write(f"-- {total} message(s) in queue\n")
        return EXIT_OK
    if command == "flush":
        count = 0
        for path in paths:
            count += await _with(path, lambda spool: spool.flush())
        out.write(f"{count} message(s) due now\n")
        return EXIT_OK
    queue_id: str = args.id
    for path in paths:  # a queue id lives in one shard
        if await _with(path, lambda spool: _one(command, queue_id, spool, out)):
            return EXIT_OK
    out.write(f"{queue_id}: no such message\n")
    return EXIT_NOT_FOUND


async def _with(path: Path, action: Callable[[Spool], Awaitable[T]]) -> T:
    spool = Spool.open(path)
    try:
        return await action(spool)
    finally:
        await spool.close()


async def _one(command: str, queue_id: str, spool: Spool, out: TextIO) -> bool:
    if command == "show":
        message = await spool.get(queue_id)
        if message is None:
            return False
        out.write(format_entry(message))
        out.write("\n" + original_headers(message.data).decode("utf-8", "replace") + "\n")
        return True
    if command == "retry":
        found = await spool.retry(queue_id)
        if found:
            out.write(f"{queue_id}: due now\n")
        return found
    found = await spool.delete(queue_id)
    if found:
        out.write(f"{queue_id}: deleted\n")
    return found


def format_entry(m: StoredMessage, recipients: Sequence[Recipient] | None = None) -> str:
    """The message and its recipients (`recipients`: only those)."""
    lines = [f"{m.id}  {_when(m.received_at)}  {m.size:>8}  <{m.sender}>  client={m.client}"]
    for r in m.recipients if recipients is None else recipients:
        line = f"    {r.address}  {r.state}  attempts={r.attempts}"
        if r.pending:
            line += f"  next={_when(r.next_attempt)}"
        if r.last_reply:
            line += f"  last={r.last_reply!r}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

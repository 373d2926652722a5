"""`sealpost-orgs`: the command line ops use to keep the registry of insurers, as each
insurer's convention and avenant say. A thin layer over orgs.registry: parse arguments,
call one operation, print the outcome, map errors to exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orgs.address import AddressError
from orgs.registry import (
    MAX_MAILBOXES,
    NotFound,
    Organisation,
    Refused,
    Registry,
    RegistryBusy,
    RegistryError,
    Token,
)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4
EXIT_BUSY = 6
EXIT_REGISTRY = 7

ENV_REGISTRY = "SEALPOST_ORGS_REGISTRY"
DEFAULT_REGISTRY = Path("var/orgs/registry.sqlite")

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  done
  1  unexpected internal error (a bug: the traceback says where)
  {EXIT_USAGE}  usage error (bad arguments)
  {EXIT_REFUSED}  refused: a rule of the registry forbids it (the message says which)
  {EXIT_NOT_FOUND}  not found: no such organisation, mailbox or token
  {EXIT_BUSY}  busy: another command held the registry for too long
  {EXIT_REGISTRY}  the registry file cannot be opened or is not a registry

environment:
  {ENV_REGISTRY}  default for --registry ({DEFAULT_REGISTRY})
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealpost-orgs",
        description="Keep the registry of insurers (organismes complémentaires): each with "
        f"its code, name, state (active, ended), up to {MAX_MAILBOXES} mailboxes with their "
        "labels exactly as its avenant lists them, and its API tokens. The gateway and the "
        "verifier see every change at once.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--registry",
        type=Path,
        default=Path(os.environ.get(ENV_REGISTRY) or DEFAULT_REGISTRY),
        help=f"the registry file (default: ${ENV_REGISTRY} or {DEFAULT_REGISTRY})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
    ) -> argparse.ArgumentParser:
        return group.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    add = command(commands, "add", "Register an insurer, active, with no mailbox yet.")
    add.add_argument("code", help="a short code: letters, digits, '-', '_' (stored upper-case)")
    add.add_argument("--name", required=True, help="the insurer's name (raison sociale)")

    mailbox = command(commands, "mailbox", "Add or remove one of an insurer's mailboxes.")
    mailbox_commands = mailbox.add_subparsers(dest="action", required=True)
    mailbox_add = command(
        mailbox_commands,
        "add",
        f"Add a mailbox (at most {MAX_MAILBOXES}) with its label from the avenant.",
    )
    mailbox_add.add_argument("code")
    mailbox_add.add_argument("address", help="the mailbox address, e.g. decomptes@assureur.mc")
    mailbox_add.add_argument("--label", required=True, help="its label (libellé) in the avenant")
    mailbox_remove = command(mailbox_commands, "remove", "Remove a mailbox.")
    mailbox_remove.add_argument("code")
    mailbox_remove.add_argument("address")

    end = command(
        commands,
        "end",
        "End an insurer's convention: its tokens stop working and mail to its mailboxes is "
        "refused. Final: an ended insurer cannot change again.",
    )
    end.add_argument("code")

    listing = command(commands, "list", "List every insurer.")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = command(commands, "show", "Show one insurer, its mailboxes and tokens.")
    show.add_argument("code")
    show.add_argument("--json", action="store_true", help="print JSON")

    token = command(commands, "token", "Create, list or revoke an insurer's API tokens.")
    token_commands = token.add_subparsers(dest="action", required=True)
    create = command(
        token_commands,
        "create",
        "Create a token and print it, once: only its hash is kept. Give it to the insurer's "
        "IT over a channel fit for a password.",
    )
    create.add_argument("code")
    token_list = command(token_commands, "list", "List an insurer's tokens (never the tokens).")
    token_list.add_argument("code")
    token_list.add_argument("--json", action="store_true", help="print JSON")
    revoke = command(token_commands, "revoke", "Revoke a token, effective at once.")
    revoke.add_argument("code")
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="the id `token list` shows")
    return parser


def organisation_json(organisation: Organisation) -> dict[str, Any]:
    return {
        "code": organisation.code,
        "name": organisation.name,
        "state": organisation.state,
        "created": organisation.created,
        "ended": organisation.ended,
        "mailboxes": [{"address": m.address, "label": m.label} for m in organisation.mailboxes],
    }


def token_json(token: Token) -> dict[str, Any]:
    return {
        "id": token.id,
        "created": token.created,
        "hint": token.hint,
        "state": token.state,
        "revoked": token.revoked,
    }


def _json(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _token_rows(tokens: list[Token]) -> list[list[str]]:
    rows = [["ID", "CREATED", "ENDS WITH", "STATE"]]
    for token in tokens:
        state = f"revoked {token.revoked}" if token.revoked else token.state
        rows.append([token.id, token.created, "…" + token.hint, state])
    return rows


def _found(registry: Registry, code: str) -> Organisation:
    organisation = registry.organisation(code)
    if organisation is None:
        raise NotFound(f"no organisation {code.strip().upper()} in the registry")
    return organisation


def cmd_add(registry: Registry, args: argparse.Namespace) -> int:
    organisation = registry.add(args.code, args.name)
    print(f"Registered {organisation.code} ({organisation.name}), active, with no mailbox yet.")
    print(f"Add the mailboxes of its avenant: sealpost-orgs mailbox add {organisation.code} ...")
    return EXIT_OK


def cmd_mailbox(registry: Registry, args: argparse.Namespace) -> int:
    if args.action == "add":
        mailbox = registry.add_mailbox(args.code, args.address, args.label)
        count = len(_found(registry, args.code).mailboxes)
        print(
            f"Added {mailbox.address} ({mailbox.label}) to {args.code.strip().upper()}: "
            f"{count} of {MAX_MAILBOXES} mailboxes. Its domain {mailbox.domain} now gets "
            "statements over verified TLS only."
        )
    else:
        mailbox = registry.remove_mailbox(args.code, args.address)
        print(f"Removed {mailbox.address} ({mailbox.label}) from {args.code.strip().upper()}.")
    return EXIT_OK


def cmd_end(registry: Registry, args: argparse.Namespace) -> int:
    organisation = registry.end(args.code)
    print(
        f"Ended {organisation.code} at {organisation.ended}: its tokens no longer work and "
        "mail to its mailboxes is refused."
    )
    return EXIT_OK


def cmd_list(registry: Registry, args: argparse.Namespace) -> int:
    organisations = registry.organisations()
    if args.json:
        print(_json([organisation_json(o) for o in organisations]))
        return EXIT_OK
    if not organisations:
        print("No organisation registered.")
        return EXIT_OK
    rows = [["CODE", "STATE", "MAILBOXES", "NAME"]]
    rows += [[o.code, o.state, str(len(o.mailboxes)), o.name] for o in organisations]
    _table(rows)
    return EXIT_OK


def cmd_show(registry: Registry, args: argparse.Namespace) -> int:
    organisation = _found(registry, args.code)
    tokens = registry.tokens(organisation.code)
    if args.json:
        document = organisation_json(organisation)
        document["tokens"] = [token_json(t) for t in tokens]
        print(_json(document))
        return EXIT_OK
    print(f"{organisation.code}  {organisation.name}")
    state = f"ended {organisation.ended}" if organisation.ended else organisation.state
    print(f"state: {state} (registered {organisation.created})")
    print(f"mailboxes: {len(organisation.mailboxes)} of {MAX_MAILBOXES}")
    for n, mailbox in enumerate(organisation.mailboxes, 1):
        print(f"  {n}. {mailbox.address}  {mailbox.label}")
    print(f"tokens: {len(tokens)}")
    if tokens:
        _table([["", *row] for row in _token_rows(tokens)])
    return EXIT_OK


def cmd_token(registry: Registry, args: argparse.Namespace) -> int:
    if args.action == "create":
        token, secret = registry.create_token(args.code)
        # The token alone on stdout, so `TOKEN=$(sealpost-orgs token create X)` works;
        # what it is goes to stderr.
        print(secret)
        print(
            f"Token {token.id} for {token.code}: shown this once, only its hash is kept. "
            "It goes in the insurer's requests as 'Authorization: Bearer <token>'.",
            file=sys.stderr,
        )
    elif args.action == "list":
        tokens = registry.tokens(args.code)
        if args.json:
            print(_json([token_json(t) for t in tokens]))
        elif not tokens:
            print(f"{args.code.strip().upper()} has no token.")
        else:
            _table(_token_rows(tokens))
    else:
        token = registry.revoke_token(args.code, args.token_id)
        print(f"Revoked token {token.id} of {token.code} (…{token.hint}) at {token.revoked}.")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Registry, argparse.Namespace], int]] = {
    "add": cmd_add,
    "mailbox": cmd_mailbox,
    "end": cmd_end,
    "list": cmd_list,
    "show": cmd_show,
    "token": cmd_token,
}


READ_ONLY = frozenset({"list", "show"})


def _fail(code: int, message: str) -> int:
    print(f"sealpost-orgs: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command in READ_ONLY and not args.registry.exists():
        return _fail(
            EXIT_REGISTRY,
            f"no registry at {args.registry}; `sealpost-orgs add` creates it "
            f"(or set --registry / ${ENV_REGISTRY})",
        )
    try:
        with Registry(args.registry) as registry:
            return COMMANDS[args.command](registry, args)
    except (Refused, AddressError) as exc:
        return _fail(EXIT_REFUSED, f"refused: {exc}")
    except NotFound as exc:
        return _fail(EXIT_NOT_FOUND, str(exc.args[0]))
    except RegistryBusy as exc:
        return _fail(EXIT_BUSY, str(exc))
    except RegistryError as exc:
        return _fail(EXIT_REGISTRY, str(exc))
    except OSError as exc:
        return _fail(EXIT_REGISTRY, f"{exc.filename or args.registry}: {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())

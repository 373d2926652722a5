"""`sealpost-keys`: the command line ops use to manage the key store. A thin layer over
keys.store: parse arguments, call one operation, print the outcome, map errors to exit
codes."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from keys import dns as key_dns
from keys import pki, store
from keys import secrets as key_secrets
from keys.archive import format_time
from keys.export import der_sha256
from keys.lifecycle import Certificate, DkimKey, Domain, Generation, Refused, StoreState
from keys.safeio import atomic_write
from tlog import note

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4
EXIT_DNS = 5
EXIT_BUSY = 6
EXIT_STORE = 7

ENV_STORE = "SEALPOST_KEYS_STORE"
ENV_PUBLIC = "SEALPOST_KEYS_PUBLIC"
ENV_PROPAGATION = "SEALPOST_KEYS_PROPAGATION_HOURS"
ENV_WITHDRAW_WAIT = "SEALPOST_KEYS_WITHDRAW_WAIT_DAYS"

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  done
  1  unexpected internal error (a bug: the traceback says where)
  {EXIT_USAGE}  usage error (bad arguments or option values)
  {EXIT_REFUSED}  refused: the key lifecycle forbids it (the message says why)
  {EXIT_NOT_FOUND}  not found: no such domain, selector or certificate serial
  {EXIT_DNS}  --check-dns: DNS does not serve the expected record
  {EXIT_BUSY}  busy: another sealpost-keys command is changing the store
  {EXIT_STORE}  store or secret error: missing store, unreadable file, no or wrong passphrase

environment:
  {ENV_STORE}, {ENV_PUBLIC}   defaults for --store and --public
  {key_secrets.ENV_PASSPHRASE}       the passphrase protecting the root CA key
  {key_secrets.ENV_PASSPHRASE_FILE}  or a file holding it (the default is the
                                  file <store>.passphrase that the first init creates)
  {ENV_PROPAGATION}  default for activate --propagation (48)
  {ENV_WITHDRAW_WAIT}  default for withdraw --wait (7)
"""


class UsageError(Exception):
    pass


def _time(value: str) -> dt.datetime:
    """ISO 8601; a time without offset is refused rather than guessed."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time (e.g. 2026-11-23T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no time zone (add Z or +01:00)")
    return parsed


def _hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of hours") from None
    if not 0 <= hours <= 24 * 365:
        raise argparse.ArgumentTypeError(f"{value!r} hours is out of range (0 to 8760)")
    return hours


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of days") from None
    if not 0 <= days <= 365:
        raise argparse.ArgumentTypeError(f"{value!r} days is out of range (0 to 365)")
    return days


def _resolver(value: str) -> key_dns.Resolver:
    try:
        return key_dns.parse_resolver(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealpost-keys",
        description="Manage Sealpost's key store: DKIM keys, CMS signing certificates, "
        "their lifecycle (pending -> active -> retired -> withdrawn, any -> revoked), "
        "their DNS records and the public archive the verifier reads.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=Path(os.environ.get(ENV_STORE, "var/keys")),
        help=f"key store directory (default: ${ENV_STORE} or var/keys)",
    )
    parser.add_argument(
        "--public",
        type=Path,
        default=Path(os.environ.get(ENV_PUBLIC, "var/public")),
        help="public archive directory, refreshed after every change "
        f"(default: ${ENV_PUBLIC} or var/public)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    init = command(
        "init",
        "Add a signing domain: its first key generation, active at once, and the store's "
        "root CA if the store is new. Prints the DNS records to publish.",
    )
    init.add_argument("--domain", required=True, help="the signing domain (DKIM d=)")
    init.add_argument(
        "--org", default=store.DEFAULT_ORG, help="organisation name in the certificates"
    )
    init.add_argument(
        "--exist-ok",
        action="store_true",
        help="if the domain is already initialised, change nothing and print its records",
    )
    init.add_argument(
        "--encrypt-all",
        action="store_true",
        help="new store only: encrypt every private key, not just the root CA's "
        "(the gateway then needs the passphrase too)",
    )

    rotate = command(
        "rotate",
        "Create the next key generation as pending and print its DNS records; activate it "
        "once they are published and propagated.",
    )
    rotate.add_argument("--domain", required=True)

    activate = command(
        "activate",
        "Make the pending generation sign; the active one becomes retired (still in DNS) "
        "and its private keys are destroyed.",
    )
    activate.add_argument("--domain", required=True)
    activate.add_argument(
        "--propagation",
        type=_hours,
        default=None,
        metavar="HOURS",
        help=f"minimum age of the pending DNS records (default ${ENV_PROPAGATION} or 48)",
    )
    activate.add_argument(
        "--force", action="store_true", help="activate before the propagation time is over"
    )
    activate.add_argument(
        "--check-dns",
        action="store_true",
        help="refuse unless DNS serves the pending generation's TXT records",
    )
    activate.add_argument(
        "--resolver",
        type=_resolver,
        default=None,
        metavar="IP[:PORT]",
        help="DNS server for --check-dns (default: the system's resolver)",
    )
    activate.add_argument(
        "--dns-timeout",
        type=float,
        default=key_dns.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for each DNS answer (default %(default)g)",
    )

    withdraw = command(
        "withdraw",
        "Take retired DKIM keys out of DNS; their public keys stay in the archive.",
    )
    withdraw.add_argument("selectors", nargs="+", metavar="SELECTOR")
    withdraw.add_argument(
        "--wait",
        type=_days,
        default=None,
        metavar="DAYS",
        help=(
            "minimum time since the key was retired: the longest queue time plus a margin "
            f"(default ${ENV_WITHDRAW_WAIT} or 7)"
        ),
    )
    withdraw.add_argument("--force", action="store_true", help="withdraw before the wait is over")

    revoke = command(
        "revoke",
        "Mark a compromised DKIM key or certificate as revoked: verifiers flag its "
        "signatures; a DKIM key is then published with an empty p=. Its private key (and "
        "those of its generation, if it was signing) is destroyed.",
    )
    revoke.add_argument("key", metavar="SELECTOR|CERT-SERIAL")
    revoke.add_argument(
        "--compromised-at",
        type=_time,
        required=True,
        metavar="TIME",
        help="when the key may have been compromised, ISO 8601 with zone",
    )
    revoke.add_argument("--reason", required=True, help="why, in a few words (kept in the archive)")

    destroy = command(
        "destroy",
        "Destroy what is left of the private keys of a retired, withdrawn or revoked "
        "generation (every store-changing command does it too); refused for an active or "
        "pending one. Their public keys stay in the archive.",
    )
    destroy.add_argument("--domain", required=True)
    destroy.add_argument("generation", metavar="GENERATION", help="e.g. 202611")

    log_key = command(
        "log-key",
        "Create a gateway node's statement-log key: its private key goes to --out (0600, "
        "never into this store; in production on the host that writes the log), and the log "
        "(origin, public key, start time) is registered in the public archive.",
    )
    log_key.add_argument(
        "--origin", required=True, help="the log's origin line, e.g. caisses.example/statements/gw1"
    )
    log_key.add_argument("--out", type=Path, required=True, help="file for the private key")
    log_key.add_argument(
        "--tsa-root", type=Path, help="PEM root of the Time-Stamp Authority certifying checkpoints"
    )
    witness = command(
        "witness",
        "List a witness of the statement logs in the public archive: the verifier checks the "
        "cosignatures (C2SP tlog-cosignature) it adds to checkpoints and shows them.",
    )
    witness.add_argument("--key", required=True, help="the witness's verifier key")
    log_key.add_argument(
        "--exist-ok",
        action="store_true",
        help="if --out already holds the registered key of this origin, change nothing",
    )

    listing = command("list", "Show every key and certificate with its state and dates.")
    listing.add_argument("--domain", help="only this domain")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    dns_cmd = command(
        "dns",
        "Print the zone-file lines that must be in DNS now (pending, active, retired, "
        "and revoked keys with an empty p=).",
    )
    dns_cmd.add_argument("--domain", required=True)

    export = command(
        "export-public",
        "Write the public archive (archive.json, root.pem) for the verifier into DIR.",
    )
    export.add_argument("directory", type=Path, metavar="DIR")
    return parser


# --- output ----------------------------------------------------------------------------


def _print_dns(domain: Domain, out: TextIO) -> None:
    for line in key_dns.zone_lines(domain):
        print(line, file=out)


def _algorithm(item: DkimKey | Certificate) -> str:
    if isinstance(item, DkimKey):
        return "rsa-2048" if item.algorithm == "rsa" else item.algorithm
    return "ecdsa-p256"


def _rows(state: StoreState, only: str | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if state.root is not None and only is None:
        root = x509.load_pem_x509_certificate(state.root.certificate_pem.encode("ascii"))
        created = format_time(state.root.created_at)
        rows.append(
            {
                "domain": "-",
                "generation": "-",
                "kind": "root",
                "id": pki.serial_hex(root),
                "algorithm": "ecdsa-p384",
                "state": "active",
                "since": created,
                "created": created,
                "fingerprint": pki.fingerprint(root),
                "history": [{"state": "active", "at": created}],
                "revocation": None,
                "private_key": "kept",  # the root CA key is never destroyed
                "key_destroyed_at": None,
            }
        )
    for domain in state.domains:
        if only is None or domain.name == only:
            rows.extend(_row(domain, g, item) for g in domain.generations for item in g.items)
    return rows


def _row(domain: Domain, generation: Generation, item: DkimKey | Certificate) -> dict[str, Any]:
    if isinstance(item, DkimKey):
        kind, ident, fingerprint = "dkim", item.selector, key_dns.public_sha256(item.public_key)
    else:
        kind, ident, fingerprint = "cert", item.serial, der_sha256(item.pem)
    revocation = item.revocation
    return {
        "domain": domain.name,
        "generation": generation.id,
        "kind": kind,
        "id": ident,
        "algorithm": _algorithm(item),
        "state": str(item.state),
        "since": format_time(item.since),
        "created": format_time(generation.created_at),
        "fingerprint": fingerprint,
        "history": [{"state": str(c.state), "at": format_time(c.at)} for c in item.history],
        "private_key": "kept" if item.key_destroyed_at is None else "destroyed",
        "key_destroyed_at": None
        if item.key_destroyed_at is None
        else format_time(item.key_destroyed_at),
        "revocation": None
        if revocation is None
        else {
            "compromised_at": format_time(revocation.compromised_at),
            "reason": revocation.reason,
            "revoked_at": format_time(revocation.revoked_at),
        },
    }


TABLE_COLUMNS = (
    "domain", "generation", "kind", "id", "algorithm", "state", "since", "created", "private_key"
)  # fmt: skip


def _print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    """Fingerprints are cut to 16 hex digits here; --json has them whole."""
    header = [*(c.upper() for c in TABLE_COLUMNS), "SHA256"]
    header[TABLE_COLUMNS.index("private_key")] = "PRIVATE"
    lines = [[str(row[c]) for c in TABLE_COLUMNS] + [row["fingerprint"][:16]] for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(),
            file=out,
        )


# --- commands --------------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"sealpost-keys: warning: {message}", file=sys.stderr)


def _option_or_env(
    given: float | None, env: str, default: float, parse: Callable[[str], float]
) -> float:
    """The option's value, else the environment's, else `default`; a bad value in the
    environment is a usage error that names the variable."""
    if given is not None:
        return given
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{env}: {exc}") from None


def _propagation(args: argparse.Namespace) -> dt.timedelta:
    return dt.timedelta(hours=_option_or_env(args.propagation, ENV_PROPAGATION, 48.0, _hours))


def _ids(generation: Generation) -> str:
    return (
        f"{generation.rsa.selector} (rsa), {generation.ed25519.selector} (ed25519), "
        f"certificate {generation.certificate.serial}"
    )


def cmd_init(args: argparse.Namespace, now: dt.datetime | None) -> int:
    result = store.init_domain(
        args.store,
        args.public,
        args.domain,
        args.org,
        exist_ok=args.exist_ok,
        encrypt_all=args.encrypt_all,
        now=now,
    )
    domain = result.domain
    if result.created_secret is not None:
        _warn(
            f"created {result.created_secret} (mode 0600) holding the passphrase that "
            "encrypts the root CA key. Fine for development; in production keep the "
            f"passphrase elsewhere ({key_secrets.ENV_PASSPHRASE} or "
            f"{key_secrets.ENV_PASSPHRASE_FILE}), never next to the store."
        )
    if not result.created:
        print(f"{domain.name} is already initialised in {args.store}; nothing changed.")
    else:
        generation = domain.generations[-1]
        if result.created_root:
            print(f"Created the key store {args.store} and its root CA.")
        print(
            f"Initialised {domain.name}: generation {generation.id} is active: {_ids(generation)}."
        )
        print("Publish these DNS records before sending mail:")
    _print_dns(domain, sys.stdout)
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace, now: dt.datetime | None) -> int:
    generation = store.rotate(args.store, args.public, args.domain, now=now)
    domain = store.load_domain(args.store, args.domain)
    print(f"Created generation {generation.id} of {domain.name}, pending: {_ids(generation)}.")
    print("Publish these DNS records, wait for them to propagate, then run")
    print(f"  sealpost-keys activate --domain {domain.name}")
    for key in generation.dkim:
        print(key_dns.zone_line(domain.name, key))
    return EXIT_OK


def cmd_activate(args: argparse.Namespace, now: dt.datetime | None) -> int:
    result = store.activate(
        args.store,
        args.public,
        args.domain,
        propagation=_propagation(args),
        force=args.force,
        check_dns=args.check_dns,
        resolver=args.resolver,
        dns_timeout=args.dns_timeout,
        now=now,
    )
    name = store.load_domain(args.store, args.domain).name
    print(f"{name} now signs with generation {result.activated.id}: {_ids(result.activated)}.")
    if result.retired is not None:
        selectors = " ".join(k.selector for k in result.retired.dkim)
        print(
            f"Generation {result.retired.id} is retired: keep its DNS records until mail "
            f"signed with it has been delivered, then run: sealpost-keys withdraw {selectors}"
        )
    _print_destroyed(result.destroyed)
    return EXIT_OK


def _print_destroyed(idents: Sequence[str]) -> None:
    if idents:
        print(
            f"Destroyed the private keys of {', '.join(idents)} (overwritten, then deleted); "
            "their public keys stay in the archive."
        )


def _withdraw_wait(args: argparse.Namespace) -> dt.timedelta:
    return dt.timedelta(days=_option_or_env(args.wait, ENV_WITHDRAW_WAIT, 7.0, _days))


def cmd_withdraw(args: argparse.Namespace, now: dt.datetime | None) -> int:
    withdrawn = store.withdraw(
        args.store,
        args.public,
        args.selectors,
        wait=_withdraw_wait(args),
        force=args.force,
        now=now,
    )
    for key in withdrawn:
        print(f"Withdrawn {key.selector}: remove its TXT record from DNS.")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace, now: dt.datetime | None) -> int:
    result = store.revoke(
        args.store,
        args.public,
        args.key,
        compromised_at=args.compromised_at,
        reason=args.reason,
        now=now,
    )
    item = result.revoked
    print(
        f"Revoked {item.label} of {result.domain} (generation {result.generation.id}), "
        f"compromised at {format_time(args.compromised_at)}: {args.reason.strip()}"
    )
    if isinstance(item, DkimKey):
        print("Publish its record with an empty p= (verifiers then treat it as revoked):")
        print(key_dns.zone_line(result.domain, item))
    _print_destroyed(result.destroyed)
    if result.was_active:
        if result.pending is not None:
            next_step = (
                f"activate the pending generation {result.pending.id}: "
                f"sealpost-keys activate --domain {result.domain} (with --force if its "
                "records are published but younger than the propagation time)"
            )
        else:
            next_step = (
                f"create one with sealpost-keys rotate --domain {result.domain}, publish "
                "its records and activate it"
            )
        _warn(
            f"the revoked key belonged to the active generation: {result.domain} now has NO "
            "active signing key and the gateway answers 451 to its mail until a pending "
            f"generation is activated. Next: {next_step}."
        )
    return EXIT_OK


def cmd_destroy(args: argparse.Namespace, now: dt.datetime | None) -> int:
    result = store.destroy(args.store, args.domain, args.generation, now=now)
    name = f"generation {result.generation} of {result.domain}"
    removed = [d.ident for d in result.destroyed if d.was_present]
    if removed:
        print(
            f"Destroyed the private keys of {name}: {', '.join(removed)} (overwritten, then "
            "deleted); their public keys stay in the archive."
        )
    else:
        print(f"No private key of {name} is left in the store: nothing to destroy.")
    others = [f"{d.ident} ({d.domain} {d.generation})" for d in result.others if d.was_present]
    if others:
        print(f"Also destroyed leftover private keys of keys out of service: {', '.join(others)}.")
    return EXIT_OK


def cmd_log_key(args: argparse.Namespace, now: dt.datetime | None) -> int:
    if not note.is_valid_name(args.origin):
        raise ValueError(f"{args.origin!r} cannot be a log origin (no spaces, no '+')")
    tsa_root = args.tsa_root.read_text(encoding="ascii") if args.tsa_root else None
    if args.out.exists():
        if args.exist_ok and _registered(args, args.out.read_text(encoding="ascii").strip()):
            print(f"The statement log {args.origin} is registered with the key in {args.out}.")
            if tsa_root and store.add_tsa_root(args.store, args.public, tsa_root, now=now):
                print(f"Added the Time-Stamp Authority root {args.tsa_root} to the archive.")
            return EXIT_OK
        raise Refused(f"{args.out} exists: a log key is never overwritten")
    signer, verifier = note.generate_key(args.origin)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, (signer + "\n").encode("ascii"), store.PRIVATE_FILE_MODE)
    try:
        added = store.add_log(
            args.store, args.public, args.origin, verifier, tsa_root=tsa_root, now=now
        )
    except BaseException:
        args.out.unlink()
        raise
    print(f"Wrote the private key of the statement log {added.origin} to {args.out} (0600).")
    print(f"Registered it in the public archive: {verifier}")
    print(f"Its tiles and checkpoints go to {args.public / added.path}.")
    return EXIT_OK


def _registered(args: argparse.Namespace, signer_text: str) -> bool:
    try:
        signer = note.Signer.from_text(signer_text)
    except note.NoteError as exc:
        raise Refused(f"{args.out} holds no statement-log key: {exc}") from exc
    logs = store.load_state(args.store).logs
    return any(
        log.origin == args.origin == signer.name and log.key == signer.verifier().text()
        for log in logs
    )


def cmd_witness(args: argparse.Namespace, now: dt.datetime | None) -> int:
    try:
        name = note.Verifier.from_text(args.key).name
    except note.NoteError as exc:
        raise ValueError(f"not a signed-note verifier key: {exc}") from exc
    store.add_witness(args.store, args.public, args.key, now=now)
    print(f"The witness {name} is listed in the public archive.")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, now: dt.datetime | None) -> int:
    state = store.load_state(args.store)
    only = None
    if args.domain is not None:
        only = store.load_domain(args.store, args.domain).name
    rows = _rows(state, only)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, sys.stdout)
    return EXIT_OK


def cmd_dns(args: argparse.Namespace, now: dt.datetime | None) -> int:
    _print_dns(store.load_domain(args.store, args.domain), sys.stdout)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, now: dt.datetime | None) -> int:
    for path in store.export_public(args.store, args.directory, now=now):
        print(f"Wrote {path}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, dt.datetime | None], int]] = {
    "init": cmd_init,
    "rotate": cmd_rotate,
    "activate": cmd_activate,
    "withdraw": cmd_withdraw,
    "revoke": cmd_revoke,
    "destroy": cmd_destroy,
    "log-key": cmd_log_key,
    "witness": cmd_witness,
    "list": cmd_list,
    "dns": cmd_dns,
    "export-public": cmd_export,
}


def _fail(code: int, message: str) -> int:
    print(f"sealpost-keys: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, *, now: dt.datetime | None = None) -> int:
    """Runs one command; `now` replaces the clock (tests)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return COMMANDS[args.command](args, now)
    except Refused as exc:
        return _fail(EXIT_REFUSED, f"refused: {exc}")
    except store.NotFound as exc:
        return _fail(EXIT_NOT_FOUND, str(exc))
    except key_dns.DnsCheckFailed as exc:
        problems = "\n  ".join(exc.problems)
        return _fail(EXIT_DNS, f"refused: DNS does not serve the pending records:\n  {problems}")
    except store.StoreBusy as exc:
        return _fail(EXIT_BUSY, str(exc))
    except (store.StoreError, key_secrets.SecretError) as exc:
        return _fail(EXIT_STORE, str(exc))
    except (UsageError, ValueError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except OSError as exc:
        return _fail(EXIT_STORE, f"{exc.filename or 'store'}: {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())

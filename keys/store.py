"""The key store on disk, and the operations ops run on it.

Layout of a store directory (0700; private key files 0600)::

    state.json                      every key's public part, states and history
    audit.log                       one JSON line per operation, never key material
    lock                            held (flock) by the command changing the store
    root/root-ca.key.pem            the root CA key, always encrypted
    domains/<domain>/<generation>/  dkim-rsa.key.pem, dkim-ed25519.key.pem, cms.key.pem

`state.json` is the commit point: an operation first writes its new key files, then
replaces the state file atomically. A crash at any moment leaves the previous state,
which names only files that were complete before it was written; at worst an unused
generation directory is left behind and overwritten by the next rotation.

Each operation takes the lock, loads the state, applies a pure transition from
keys.lifecycle, writes, refreshes the public archive and appends to the audit log.

A key out of service (retired, withdrawn, revoked) must not be able to sign again, so its
private file is destroyed (overwritten with zeros, fsync'd, unlinked) right after the
commit that takes it out of service, and its `key_destroyed_at` is recorded in a second
state write. Never before the commit: until then the gateway may still load it. Every
store-changing operation ends with that sweep, so a crash between commit and destruction,
or a store made before keys were destroyed, is cleaned by the next command. The root CA
key is never destroyed. The public halves stay in the state and the archive.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from keys import pki
from keys import secrets as key_secrets
from keys.archive import (
    PublicLog,
    Revocation,
    format_time,
    log_json,
    parse_log,
    parse_revocation,
    parse_time,
)
from keys.dns import DnsCheckFailed, Resolver, check_published, public_value
from keys.export import write_public
from keys.lifecycle import (
    OUT_OF_SERVICE,
    WITHDRAW_WAIT,
    Certificate,
    Change,
    DkimKey,
    Domain,
    Generation,
    Refused,
    Root,
    State,
    StoreState,
    check_can_rotate,
    find,
    new_domain_generation,
    next_generation_id,
    normalise_domain,
    selectors,
)
from keys.lifecycle import activate as lifecycle_activate
from keys.lifecycle import revoke as lifecycle_revoke
from keys.lifecycle import withdraw as lifecycle_withdraw
from keys.safeio import atomic_write, fsync_dir

FORMAT = "sealpost-key-store/1"
STATE_FILE = "state.json"
AUDIT_FILE = "audit.log"
LOCK_FILE = "lock"
ROOT_KEY_FILE = "root/root-ca.key.pem"
DEFAULT_ORG = "Caisses Sociales de Monaco"
DEFAULT_PROPAGATION = dt.timedelta(hours=48)
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


class StoreError(Exception):
    """The store cannot be read or written (missing, corrupt, unreadable key, bad passphrase)."""


class StoreBusy(StoreError):
    """Another command holds the store's lock."""


class NotFound(LookupError):
    """No such domain, selector or certificate serial in the store."""


def utc_now(now: dt.datetime | None = None) -> dt.datetime:
    """`now` (injectable for tests) in UTC, to the second: the precision of every stored time."""
    value = dt.datetime.now(dt.UTC) if now is None else now
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(dt.UTC).replace(microsecond=0)


# --- files -----------------------------------------------------------------------------


def ensure_private_dir(path: Path) -> None:
    """`path` exists with mode 0700 (its parents, outside the store, keep default modes)."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)


def write_private(store: Path, relative: str, data: bytes) -> None:
    """Writes a file inside the store, 0600, every directory on the way 0700."""
    for parent in reversed(Path(relative).parents[:-1]):
        directory = store / parent
        if not directory.is_dir():
            directory.mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(directory, PRIVATE_DIR_MODE)
    atomic_write(store / relative, data, PRIVATE_FILE_MODE)


@contextlib.contextmanager
def locked(store: Path) -> Iterator[None]:
    """Holds the store's exclusive lock, or raises StoreBusy at once: a second command
    must not wait behind a rotation and then act on a state it has not seen."""
    if not store.is_dir():
        raise StoreError(
            f"no key store at {store}; create one with sealpost-keys init --domain DOMAIN"
        )
    fd = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StoreBusy(
                f"another sealpost-keys command (pid {holder}) is changing the store {store}; "
                "nothing was done: try again when it has finished"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def audit(store: Path, operation: str, outcome: str, **details: Any) -> None:
    """Appends one JSON line. O_APPEND makes concurrent appends safe, even from a refused
    command that does not hold the lock."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    record = {
        "at": format_time(dt.datetime.now(dt.UTC)),
        "operation": operation,
        "outcome": outcome,
        "user": user,
        "pid": os.getpid(),
        **details,
    }
    if not store.is_dir():
        return  # nothing to record: there is no store, so nothing happened to it
    fd = os.open(store / AUDIT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Record:
    """What an operation reports to the audit log: identifiers only."""

    details: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _audited(store: Path, operation: str, **details: Any) -> Iterator[_Record]:
    record = _Record(dict(details))
    try:
        yield record
    except (
        Refused,
        NotFound,
        StoreError,
        DnsCheckFailed,
        key_secrets.SecretError,
        ValueError,
    ) as exc:
        audit(store, operation, "refused", error=str(exc), **record.details)
        raise
    except Exception as exc:
        audit(store, operation, "failed", error=type(exc).__name__, **record.details)
        raise
    audit(store, operation, "ok", **record.details)


# --- state file ------------------------------------------------------------------------


def _history_json(history: tuple[Change, ...]) -> list[dict[str, str]]:
    return [{"state": str(c.state), "at": format_time(c.at)} for c in history]


def _revocation_json(revocation: Revocation | None) -> dict[str, str] | None:
    if revocation is None:
        return None
    return {
        "compromised_at": format_time(revocation.compromised_at),
        "reason": revocation.reason,
        "revoked_at": format_time(revocation.revoked_at),
    }


def _optional_time(value: dt.datetime | None) -> str | None:
    return None if value is None else format_time(value)


def _dkim_json(key: DkimKey) -> dict[str, Any]:
    return {
        "selector": key.selector,
        "algorithm": key.algorithm,
        "public_key": key.public_key,
        "key_file": key.key_file,
        "key_destroyed_at": _optional_time(key.key_destroyed_at),
        "history": _history_json(key.history),
        "revocation": _revocation_json(key.revocation),
    }


def state_to_json(state: StoreState) -> dict[str, Any]:
    root = state.root
    return {
        "format": FORMAT,
        "encrypt_all": state.encrypt_all,
        "root": None
        if root is None
        else {
            "org": root.org,
            "certificate": root.certificate_pem,
            "key_file": root.key_file,
            "created_at": format_time(root.created_at),
        },
        "domains": [
            {
                "name": d.name,
                "org": d.org,
                "generations": [
                    {
                        "id": g.id,
                        "created_at": format_time(g.created_at),
                        "dkim": [_dkim_json(g.rsa), _dkim_json(g.ed25519)],
                        "certificate": {
                            "serial": g.certificate.serial,
                            "pem": g.certificate.pem,
                            "key_file": g.certificate.key_file,
                            "key_destroyed_at": _optional_time(g.certificate.key_destroyed_at),
                            "history": _history_json(g.certificate.history),
                            "revocation": _revocation_json(g.certificate.revocation),
                        },
                    }
                    for g in d.generations
                ],
            }
            for d in state.domains
        ],
        "logs": [log_json(log) for log in state.logs],
        "tsa_roots": list(state.tsa_roots),
        "witnesses": list(state.witnesses),
    }


def _history(raw: list[dict[str, str]]) -> tuple[Change, ...]:
    if not raw:
        raise ValueError("empty history")
    return tuple(Change(State(c["state"]), parse_time(c["at"])) for c in raw)


def _destroyed_at(raw: dict[str, Any]) -> dt.datetime | None:
    # Absent from state files written before keys were destroyed at retirement.
    value = raw.get("key_destroyed_at")
    return None if value is None else parse_time(value)


def _dkim(raw: dict[str, Any]) -> DkimKey:
    return DkimKey(
        history=_history(raw["history"]),
        revocation=parse_revocation(raw["revocation"]),
        selector=raw["selector"],
        algorithm=raw["algorithm"],
        public_key=raw["public_key"],
        key_file=raw["key_file"],
        key_destroyed_at=_destroyed_at(raw),
    )


def state_from_json(document: dict[str, Any]) -> StoreState:
    if document.get("format") != FORMAT:
        raise ValueError(f"unknown store format {document.get('format')!r}")
    root = document["root"]
    domains = []
    for d in document["domains"]:
        generations = []
        for g in d["generations"]:
            rsa, ed = (_dkim(k) for k in g["dkim"])
            c = g["certificate"]
            certificate = Certificate(
                history=_history(c["history"]),
                revocation=parse_revocation(c["revocation"]),
                serial=c["serial"],
                pem=c["pem"],
                key_file=c["key_file"],
                key_destroyed_at=_destroyed_at(c),
            )
            generations.append(
                Generation(g["id"], parse_time(g["created_at"]), rsa, ed, certificate)
            )
        domains.append(Domain(d["name"], d["org"], tuple(generations)))
    return StoreState(
        encrypt_all=bool(document["encrypt_all"]),
        root=None
        if root is None
        else Root(
            org=root["org"],
            certificate_pem=root["certificate"],
            key_file=root["key_file"],
            created_at=parse_time(root["created_at"]),
        ),
        domains=tuple(domains),
        # Absent from state files written before the statement log existed.
        logs=tuple(parse_log(g) for g in document.get("logs", [])),
        tsa_roots=tuple(document.get("tsa_roots", [])),
        witnesses=tuple(document.get("witnesses", [])),
    )


def state_path(store: Path) -> Path:
    return store / STATE_FILE


def load_state(store: Path) -> StoreState:
    """The committed state; StoreError if there is no initialised store at `store`."""
    path = state_path(store)
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(
            f"no key store at {store} (no {STATE_FILE}); create one with "
            "sealpost-keys init --domain DOMAIN"
        ) from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    try:
        return state_from_json(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{path} is malformed: {exc!r}") from exc


def _load_or_empty(store: Path) -> StoreState:
    if not state_path(store).exists():
        return StoreState(encrypt_all=False, root=None, domains=())
    return load_state(store)


def save_state(store: Path, state: StoreState) -> None:
    data = json.dumps(state_to_json(state), indent=2).encode("utf-8") + b"\n"
    atomic_write(state_path(store), data, PRIVATE_FILE_MODE)


def read_private_key(store: Path, relative: str, passphrase: bytes | None) -> pki.PrivateKey:
    path = store / relative
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read the private key {path}: {exc.strerror}") from exc
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and passphrase is None:
        raise StoreError(f"{path} is encrypted and no passphrase is configured")
    try:
        return pki.load_private_pem(data, passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        raise StoreError(
            f"cannot load the private key {path}: wrong passphrase or damaged file"
        ) from exc


# --- destroying private keys ----------------------------------------------------------


def shred(path: Path) -> bool:
    """Overwrites a file with zeros (same length, fsync'd), unlinks it and fsyncs its
    directory; False when there is no such file. The zeros make the key unreadable from
    this filesystem's blocks (not from an SSD's remapped cells or a copy-on-write
    snapshot: the store belongs on an encrypted volume)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        zeros = memoryview(bytes(size))
        offset = 0
        while offset < size:
            offset += os.pwrite(fd, zeros[offset:], offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    fsync_dir(path.parent)
    return True


def _key_path(store: Path, relative: str) -> Path:
    """The file a DKIM or certificate key names, refused unless it is under domains/: a
    damaged state.json must not make a sweep overwrite the root CA key or a file outside
    the store."""
    parts = Path(relative).parts
    if not parts or parts[0] != "domains" or ".." in parts or Path(relative).is_absolute():
        raise StoreError(f"refusing to destroy {relative!r}: not a key file under domains/")
    return store / relative


@dataclass(frozen=True)
class Destroyed:
    """One out-of-service key whose private file is now gone."""

    domain: str
    generation: str
    ident: str  # selector or certificate serial
    key_file: str
    was_present: bool  # False: already gone (a crash after the unlink), now recorded


class DestroyFailed(StoreError):
    def __init__(self, message: str, done: list[Destroyed]) -> None:
        super().__init__(message)
        self.done = done


def _ident(item: DkimKey | Certificate) -> str:
    return item.selector if isinstance(item, DkimKey) else item.serial


def _leftovers(
    store: Path, state: StoreState
) -> list[tuple[Domain, Generation, DkimKey | Certificate]]:
    """Out-of-service keys whose private file exists or whose destruction is unrecorded."""
    found = []
    for domain in state.domains:
        for generation in domain.generations:
            for item in generation.items:
                if item.state not in OUT_OF_SERVICE:
                    continue
                if item.key_destroyed_at is None or _key_path(store, item.key_file).exists():
                    found.append((domain, generation, item))
    return found


_Item = TypeVar("_Item", DkimKey, Certificate)


def _mark_destroyed(
    state: StoreState, domain: Domain, generation: Generation, ident: str, when: dt.datetime
) -> StoreState:
    current = _domain(state, domain.name)
    stored = next(g for g in current.generations if g.id == generation.id)

    def stamp(item: _Item) -> _Item:
        return replace(item, key_destroyed_at=when) if _ident(item) == ident else item

    changed = replace(
        stored,
        rsa=stamp(stored.rsa),
        ed25519=stamp(stored.ed25519),
        certificate=stamp(stored.certificate),
    )
    return state.with_domain(current.replace_generation(changed))


def sweep(store: Path, state: StoreState, when: dt.datetime) -> tuple[StoreState, list[Destroyed]]:
    """Destroys the private key file of every retired, withdrawn or revoked key, and records
    it in the state. Runs after a commit (never before: until state.json says a key is out
    of service, the gateway may still load it). Raises DestroyFailed after saving what was
    done, so a file that resists (permissions, I/O) does not hide the ones destroyed."""
    done: list[Destroyed] = []
    try:
        for domain, generation, item in _leftovers(store, state):
            present = shred(_key_path(store, item.key_file))
            ident = _ident(item)
            state = _mark_destroyed(state, domain, generation, ident, when)
            done.append(Destroyed(domain.name, generation.id, ident, item.key_file, present))
    except OSError as exc:
        if done:
            save_state(store, state)
        raise DestroyFailed(
            f"could not destroy a private key of a key out of service "
            f"({exc.filename or 'store'}: {exc.strerror or exc}); fix the cause and run "
            "sealpost-keys destroy --domain DOMAIN GENERATION",
            done,
        ) from exc
    if done:
        save_state(store, state)
    return state, done


def _audit_destroyed(done: list[Destroyed], **details: Any) -> dict[str, Any]:
    """The audit details of a destruction: ids and file names, never contents."""
    return {
        **details,
        "keys": [d.ident for d in done if d.was_present],
        "files": [d.key_file for d in done if d.was_present],
        "already_absent": [d.ident for d in done if not d.was_present],
    }


def _sweep_after(store: Path, state: StoreState, when: dt.datetime, operation: str) -> list[str]:
    """The sweep every store-changing operation runs once its change is committed; one
    audit line `destroy` when it destroyed (or failed to destroy) anything."""
    try:
        _state, done = sweep(store, state, when)
    except DestroyFailed as exc:
        details = _audit_destroyed(exc.done, after=operation, error=str(exc))
        audit(store, "destroy", "failed", **details)
        raise StoreError(f"the {operation} is saved, but {exc}") from exc
    if done:
        audit(store, "destroy", "ok", **_audit_destroyed(done, after=operation))
    return [d.ident for d in done]


# --- operations ------------------------------------------------------------------------


def _domain(state: StoreState, name: str) -> Domain:
    domain = state.domain(name)
    if domain is None:
        known = ", ".join(d.name for d in state.domains) or "none"
        raise NotFound(f"the store has no domain {name!r} (domains: {known})")
    return domain


def load_domain(store: Path, name: str) -> Domain:
    """The committed state of one domain (NotFound if the store does not have it)."""
    return _domain(load_state(store), normalise_domain(name))


def _issuer(store: Path, state: StoreState, passphrase: bytes) -> pki.Issuer:
    if state.root is None:
        raise StoreError("the store has no root CA")
    key = read_private_key(store, state.root.key_file, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StoreError("the root CA key is not an ECDSA key")
    certificate = x509.load_pem_x509_certificate(state.root.certificate_pem.encode("ascii"))
    return pki.Issuer(certificate=certificate, key=key)


def _new_generation(
    store: Path,
    domain: str,
    org: str,
    generation_id: str,
    issuer: pki.Issuer,
    key_passphrase: bytes | None,
    now: dt.datetime,
) -> Generation:
    """Creates and writes the three private keys of a generation (not yet committed)."""
    rsa_key = pki.new_rsa_key()
    ed_key = pki.new_ed25519_key()
    cms_key = pki.new_signing_cert_key()
    certificate = pki.issue_signing_certificate(issuer, cms_key, org, domain, generation_id, now)
    directory = f"domains/{domain}/{generation_id}"
    files: dict[str, pki.PrivateKey] = {
        f"{directory}/dkim-rsa.key.pem": rsa_key,
        f"{directory}/dkim-ed25519.key.pem": ed_key,
        f"{directory}/cms.key.pem": cms_key,
    }
    for relative, key in files.items():
        write_private(store, relative, pki.private_pem(key, key_passphrase))
    pending = (Change(State.PENDING, now),)
    rsa_selector, ed_selector = selectors(generation_id)
    rsa_file, ed_file, cms_file = files
    return Generation(
        id=generation_id,
        created_at=now,
        rsa=DkimKey(pending, None, rsa_selector, "rsa", public_value(rsa_key), rsa_file),
        ed25519=DkimKey(pending, None, ed_selector, "ed25519", public_value(ed_key), ed_file),
        certificate=Certificate(
            pending,
            None,
            pki.serial_hex(certificate),
            pki.certificate_pem(certificate).decode(),
            cms_file,
        ),
    )


def _commit(store: Path, public: Path, state: StoreState, now: dt.datetime) -> None:
    save_state(store, state)
    try:
        write_public(state, public, now)
    except OSError as exc:
        raise StoreError(
            f"the change is saved, but the public archive in {public} could not be "
            f"refreshed ({exc.strerror or exc}): run sealpost-keys export-public {public}"
        ) from exc


def _ids(generation: Generation) -> list[str]:
    return [generation.rsa.selector, generation.ed25519.selector, generation.certificate.serial]


@dataclass(frozen=True)
class InitResult:
    domain: Domain
    created: bool  # False: the domain existed and exist_ok made init a no-op
    created_root: bool
    created_secret: Path | None  # the default passphrase file, when init made it


def init_domain(
    store: Path,
    public: Path,
    domain: str,
    org: str = DEFAULT_ORG,
    *,
    exist_ok: bool = False,
    encrypt_all: bool = False,
    passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> InitResult:
    """Adds `domain` with a first, active generation; creates the store and its root CA the
    first time. Refused when the domain exists, unless `exist_ok` (then a no-op)."""
    when = utc_now(now)
    name = normalise_domain(domain)
    ensure_private_dir(store)
    with _audited(store, "init", domain=name) as record, locked(store):
        state = _load_or_empty(store)
        existing = state.domain(name)
        if existing is not None:
            if exist_ok:
                record.details["noop"] = True
                # keys-init runs this at every start: the sweep then needs no ops at all.
                _sweep_after(store, state, when, "init")
                return InitResult(existing, created=False, created_root=False, created_secret=None)
            raise Refused(
                f"{name} is already initialised in {store} (generations: "
                f"{', '.join(g.id for g in existing.generations)}); use rotate for a new "
                "generation, or --exist-ok to accept an existing domain"
            )
        if state.root is not None and encrypt_all and not state.encrypt_all:
            raise Refused(
                "--encrypt-all applies to a new store only: this store keeps DKIM and "
                "certificate keys unencrypted (the root key is always encrypted)"
            )
        created_secret = None
        if passphrase is None:
            if (
                state.root is None
                and not key_secrets.configured()
                and not key_secrets.default_secret_file(store).exists()
            ):
                created_secret = key_secrets.create_default_secret(store)
            passphrase = key_secrets.require_passphrase(store)
        created_root = state.root is None
        if state.root is None:
            root_key = pki.new_root_key()
            root_cert = pki.make_root(root_key, org, when)
            write_private(store, ROOT_KEY_FILE, pki.private_pem(root_key, passphrase))
            state = replace(
                state,
                encrypt_all=encrypt_all,
                root=Root(org, pki.certificate_pem(root_cert).decode(), ROOT_KEY_FILE, when),
            )
            issuer = pki.Issuer(root_cert, root_key)
        else:
            issuer = _issuer(store, state, passphrase)
        generation_id = next_generation_id((), when)
        generation = _new_generation(
            store,
            name,
            org,
            generation_id,
            issuer,
            passphrase if state.encrypt_all else None,
            when,
        )
        active = Change(State.ACTIVE, when)
        generation = replace(
            generation,
            rsa=replace(generation.rsa, history=(*generation.rsa.history, active)),
            ed25519=replace(generation.ed25519, history=(*generation.ed25519.history, active)),
            certificate=replace(
                generation.certificate, history=(*generation.certificate.history, active)
            ),
        )
        new_domain = Domain(name, org, (generation,))
        state = state.with_domain(new_domain)
        _commit(store, public, state, when)
        record.details.update(keys=_ids(generation), created_root=created_root)
        _sweep_after(store, state, when, "init")
        return InitResult(new_domain, True, created_root, created_secret)


def rotate(
    store: Path,
    public: Path,
    domain: str,
    *,
    passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> Generation:
    """Creates the next generation, pending. Refused while another one is pending."""
    when = utc_now(now)
    name = normalise_domain(domain)
    with _audited(store, "rotate", domain=name) as record, locked(store):
        state = load_state(store)
        current = _domain(state, name)
        # Checked before generating anything, so a refusal costs nothing.
        check_can_rotate(current)
        if passphrase is None:
            passphrase = key_secrets.require_passphrase(store)
        issuer = _issuer(store, state, passphrase)
        generation_id = next_generation_id((g.id for g in current.generations), when)
        generation = _new_generation(
            store,
            name,
            current.org,
            generation_id,
            issuer,
            passphrase if state.encrypt_all else None,
            when,
        )
        state = state.with_domain(new_domain_generation(current, generation))
        _commit(store, public, state, when)
        record.details["keys"] = _ids(generation)
        _sweep_after(store, state, when, "rotate")
        return generation


@dataclass(frozen=True)
class ActivateResult:
    activated: Generation
    retired: Generation | None
    destroyed: list[str]  # ids of the keys whose private files this activation destroyed


def activate(
    store: Path,
    public: Path,
    domain: str,
    *,
    propagation: dt.timedelta = DEFAULT_PROPAGATION,
    force: bool = False,
    check_dns: bool = False,
    resolver: Resolver | None = None,
    dns_timeout: float = 5.0,
    now: dt.datetime | None = None,
) -> ActivateResult:
    """The pending generation starts signing, the active one retires. Refused before the
    propagation time (unless `force`) and, with `check_dns`, unless DNS serves its keys."""
    when = utc_now(now)
    name = normalise_domain(domain)
    with _audited(store, "activate", domain=name, force=force, check_dns=check_dns) as record:
        with locked(store):
            state = load_state(store)
            current = _domain(state, name)
            result = lifecycle_activate(current, when, propagation, force)
            if check_dns:
                check_published(name, result.activated.dkim, resolver, dns_timeout)
            state = state.with_domain(result.domain)
            _commit(store, public, state, when)
            record.details["keys"] = _ids(result.activated)
            if result.retired is not None:
                record.details["retired"] = _ids(result.retired)
            # Only now: until the retirement is committed the gateway may load these keys.
            destroyed = _sweep_after(store, state, when, "activate")
        return ActivateResult(result.activated, result.retired, destroyed)


def withdraw(
    store: Path,
    public: Path,
    selector_names: list[str],
    *,
    wait: dt.timedelta = WITHDRAW_WAIT,
    force: bool = False,
    now: dt.datetime | None = None,
) -> list[DkimKey]:
    """Retired DKIM keys leave DNS: all the named selectors, or none if one is refused.
    Each `wait` after its retirement at the earliest, unless `force`."""
    when = utc_now(now)
    with _audited(store, "withdraw", keys=list(selector_names), force=force), locked(store):
        state = load_state(store)
        withdrawn = []
        for name in selector_names:
            domain, _generation, item = _owner(state, name)
            if not isinstance(item, DkimKey):
                raise Refused(
                    f"{name} is a certificate: certificates are not published in DNS, "
                    "so they cannot be withdrawn (revoke it if it is compromised)"
                )
            changed, key = lifecycle_withdraw(domain, item.selector, when, wait=wait, force=force)
            state = state.with_domain(changed)
            withdrawn.append(key)
        _commit(store, public, state, when)
        _sweep_after(store, state, when, "withdraw")
        return withdrawn


def _owner(state: StoreState, ident: str) -> tuple[Domain, Generation, DkimKey | Certificate]:
    for domain in state.domains:
        found = find(domain, ident)
        if found is not None:
            return domain, found[0], found[1]
    raise NotFound(f"no DKIM selector or certificate serial {ident!r} in the store")


@dataclass(frozen=True)
class RevokeResult:
    domain: str
    revoked: DkimKey | Certificate
    generation: Generation
    # The revoked key was signing: the domain has no active key until `activate`.
    was_active: bool
    pending: Generation | None
    destroyed: list[str]  # ids of the keys whose private files the revocation destroyed


def revoke(
    store: Path,
    public: Path,
    ident: str,
    *,
    compromised_at: dt.datetime,
    reason: str,
    now: dt.datetime | None = None,
) -> RevokeResult:
    when = utc_now(now)
    with _audited(store, "revoke", keys=[ident], reason=reason) as record, locked(store):
        state = load_state(store)
        domain, generation, item = _owner(state, ident)
        record.details["domain"] = domain.name
        result = lifecycle_revoke(domain, generation, item, utc_now(compromised_at), reason, when)
        state = state.with_domain(result.domain)
        _commit(store, public, state, when)
        record.details["was_active"] = result.was_active
        destroyed = _sweep_after(store, state, when, "revoke")
        return RevokeResult(
            domain.name,
            result.revoked,
            result.generation,
            result.was_active,
            result.domain.pending,
            destroyed,
        )


@dataclass(frozen=True)
class DestroyResult:
    domain: str
    generation: str
    destroyed: list[Destroyed]  # this generation's keys, files gone now or found gone
    others: list[Destroyed]  # leftovers of other generations the sweep destroyed too


def _check_out_of_service(domain: Domain, generation: Generation) -> None:
    """Refuses while any key of the generation may still sign (active) or is meant to
    (pending): destroying it would stop the gateway or lose a generation being published."""
    for item in generation.items:
        if item.state == State.ACTIVE:
            raise Refused(
                f"generation {generation.id} of {domain.name} is active ({item.label} signs "
                "the mail): its private keys are destroyed when it is retired by the next "
                f"activation (sealpost-keys activate --domain {domain.name}) or revoked"
            )
        if item.state == State.PENDING:
            raise Refused(
                f"generation {generation.id} of {domain.name} is pending ({item.label} is "
                "waiting for activation): activate it (sealpost-keys activate --domain "
                f"{domain.name}), or revoke its keys if they must never sign"
            )


def destroy(
    store: Path,
    domain: str,
    generation_id: str,
    *,
    now: dt.datetime | None = None,
) -> DestroyResult:
    """Destroys what is left of the private keys of a retired, withdrawn or revoked
    generation (and, as every command does, of any other key out of service). Nothing left
    is not an error. The public halves stay in the state and the archive."""
    when = utc_now(now)
    name = normalise_domain(domain)
    details = {"domain": name, "generation": generation_id}
    with _audited(store, "destroy", **details) as record, locked(store):
        state = load_state(store)
        current = _domain(state, name)
        generation = next((g for g in current.generations if g.id == generation_id), None)
        if generation is None:
            known = ", ".join(g.id for g in current.generations)
            raise NotFound(f"{name} has no generation {generation_id!r} (generations: {known})")
        _check_out_of_service(current, generation)
        try:
            _state, done = sweep(store, state, when)
        except DestroyFailed as exc:
            record.details.update(_audit_destroyed(exc.done))
            raise
        record.details.update(_audit_destroyed(done))
        mine = [d for d in done if d.domain == name and d.generation == generation_id]
        return DestroyResult(name, generation_id, mine, [d for d in done if d not in mine])


def export_public(store: Path, public: Path, *, now: dt.datetime | None = None) -> list[Path]:
    """Writes the public archive of `store` into `public`; reads the state without the lock
    (it is replaced atomically, so a concurrent change is either fully in or out)."""
    when = utc_now(now)
    with _audited(store, "export-public", directory=str(public)):
        return write_public(load_state(store), public, when)


def log_directory(origin: str) -> str:
    """A log's directory in the public archive, named after its origin."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", origin).strip("-.")
    if not slug:
        raise ValueError(f"the log origin {origin!r} has no usable characters")
    return f"log/{slug}"


def add_log(
    store: Path,
    public: Path,
    origin: str,
    verifier_key: str,
    *,
    tsa_root: str | None = None,
    now: dt.datetime | None = None,
) -> PublicLog:
    """Registers a node's statement log: its checkpoints' verifier key and start time go
    into the public archive, so that every verifier knows it (and, from that time on,
    requires every seal to be in a log). `tsa_root`: a PEM Time-Stamp Authority root."""
    when = utc_now(now)
    with _audited(store, "add-log", origin=origin) as record, locked(store):
        state = load_state(store)
        if any(log.origin == origin for log in state.logs):
            raise Refused(
                f"a statement log with origin {origin!r} is already registered; each node's "
                "log keeps its origin and key for ever (choose another origin for a new node)"
            )
        added = PublicLog(origin, verifier_key, when, log_directory(origin))
        if any(log.path == added.path for log in state.logs):
            raise Refused(f"another log already uses the directory {added.path}")
        roots = state.tsa_roots
        if tsa_root and tsa_root not in roots:
            roots = (*roots, tsa_root)
        _commit(store, public, replace(state, logs=(*state.logs, added), tsa_roots=roots), when)
        record.details["path"] = added.path
        return added


def add_witness(
    store: Path, public: Path, verifier_key: str, *, now: dt.datetime | None = None
) -> None:
    """Lists a witness (an insurer, say) in the public archive: the verifier then checks
    the cosignatures it adds to checkpoints and shows them."""
    when = utc_now(now)
    with _audited(store, "add-witness", witness=verifier_key.split("+")[0]), locked(store):
        state = load_state(store)
        if verifier_key in state.witnesses:
            return
        _commit(store, public, replace(state, witnesses=(*state.witnesses, verifier_key)), when)


def add_tsa_root(store: Path, public: Path, pem: str, *, now: dt.datetime | None = None) -> bool:
    """Trusts one more Time-Stamp Authority root for checkpoints; False if it already was."""
    when = utc_now(now)
    with _audited(store, "add-tsa-root"), locked(store):
        state = load_state(store)
        if pem in state.tsa_roots:
            return False
        _commit(store, public, replace(state, tsa_roots=(*state.tsa_roots, pem)), when)
        return True

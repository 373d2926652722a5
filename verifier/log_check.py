"""Finds a statement's seals in the statement logs the archive lists, and proves it.

For each digest that names a seal (a .p7s, a DKIM b= value), the log's index gives the
entry's position; the entry is read from the tiles and must name that digest; its leaf
must be included, by an RFC 9162 proof, in a checkpoint signed by the log's key. The time
of logging is the one an RFC 3161 token certifies on the first timestamped checkpoint
that covers the entry: a time that does not rest on the fund's own keys.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from keys.archive import PublicLog
from tlog import merkle, note, timestamp
from tlog.entry import EntryError, decode
from tlog.tiles import TileStore
from verifier.report import LogProof

CHECKPOINT = "checkpoint"
HISTORY = "checkpoints"
INDEX = "index"
# An index shard read whole; past this it is not a shard this writer made.
MAX_SHARD = 64 * 1024 * 1024
# The gateway publishes within seconds and the copy to the verifiers follows; a seal younger
# than this and not found yet gets "try again" (503), never a verdict.
COPY_GRACE = dt.timedelta(minutes=2)


class LogUnavailable(Exception):
    """A log the archive lists cannot be read here: no answer can be given about it."""


@dataclass(frozen=True)
class _Log:
    record: PublicLog
    directory: Path
    verifier: note.Verifier


def find(
    digests: Iterable[str],
    logs: Iterable[PublicLog],
    archive_dir: Path,
    tsa_roots: list[bytes],
    witnesses: Iterable[str] = (),
) -> LogProof | None:
    """The proof for the first digest found in a log, or None when no log holds any."""
    wanted = [d for d in dict.fromkeys(digests) if d]
    cosigners = _witnesses(witnesses)
    for record in logs:
        log = _open(record, archive_dir)
        for digest in wanted:
            for index in _positions(log, digest):
                proof = _prove(log, index, digest, tsa_roots, cosigners)
                if proof is not None:
                    return proof
    return None


def _witnesses(keys: Iterable[str]) -> list[note.Verifier]:
    found = []
    for text in keys:
        try:
            verifier = _key(text)
        except note.NoteError:
            continue  # a bad entry in the archive hides that witness, nothing else
        found.append(
            verifier if verifier.alg == note.ALG_COSIGNATURE_V1 else verifier.as_cosigner()
        )
    return found


def _open(record: PublicLog, archive_dir: Path) -> _Log:
    directory = (archive_dir / record.path).resolve()
    if archive_dir.resolve() not in directory.parents:
        raise LogUnavailable(f"log path {record.path!r} leaves the archive directory")
    if not (directory / CHECKPOINT).is_file():
        raise LogUnavailable(f"no checkpoint for the log {record.origin} in {directory}")
    try:
        verifier = _key(record.key)
    except note.NoteError as exc:
        raise LogUnavailable(f"the archive's key for {record.origin} is unreadable") from exc
    return _Log(record, directory, verifier)


@functools.lru_cache(maxsize=64)
def _key(text: str) -> note.Verifier:
    """A log's or a witness's key as the archive states it, read once per text (a key
    the archive changes is new text; a key that cannot be read is refused every time)."""
    return note.Verifier.from_text(text)


_stores: dict[Path, TileStore] = {}
_stores_lock = threading.Lock()


def _tiles(directory: Path, size: int) -> TileStore:
    """One reader per log for the process: its tiles stay cached between verifications
    (full tiles never change). It looks at the directory again only for a checkpoint
    larger than what it has seen."""
    with _stores_lock:
        store = _stores.get(directory)
        if store is None:
            store = _stores[directory] = TileStore(directory)
    if store.size < size:
        store.refresh()
    return store


def _positions(log: _Log, digest: str) -> list[int]:
    shard = log.directory / INDEX / digest[:2]
    try:
        if os.path.getsize(shard) > MAX_SHARD:
            return []
        text = shard.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    found: list[int] = []
    for line in text.splitlines():
        name, _, position = line.partition(" ")
        if name == digest and position.isdigit():
            found.append(int(position))
    return sorted(set(found))


def _checkpoint(log: _Log, data: bytes) -> note.Checkpoint:
    return _opened_checkpoint(data, log.verifier, log.record.origin)


@functools.lru_cache(maxsize=64)
def _opened_checkpoint(data: bytes, verifier: note.Verifier, origin: str) -> note.Checkpoint:
    """A checkpoint's signature checked once per version of the file, not per statement."""
    opened = note.open_note(data, [verifier])
    checkpoint = note.Checkpoint.parse(opened.text)
    if checkpoint.origin != origin:
        raise note.NoteError("checkpoint of another log")
    return checkpoint


@functools.lru_cache(maxsize=64)
def _opened_note(data: bytes, verifiers: tuple[note.Verifier, ...]) -> note.Note:
    """The signatures on a checkpoint, the log's and the witnesses', checked once per
    version of the file and set of keys, not per statement."""
    return note.open_note(data, verifiers)


def _prove(
    log: _Log, index: int, digest: str, tsa_roots: list[bytes], witnesses: list[note.Verifier]
) -> LogProof | None:
    try:
        latest_note = (log.directory / CHECKPOINT).read_bytes()
        latest = _checkpoint(log, latest_note)
    except (OSError, note.NoteError) as exc:
        raise LogUnavailable(f"the checkpoint of {log.record.origin} is unreadable") from exc
    if index >= latest.size:
        return None
    tiles = _tiles(log.directory, latest.size)
    try:
        data = tiles.entry(index)
        entry = decode(data)
    except (OSError, ValueError, EntryError):
        return None
    if digest not in entry.seals:
        return None
    leaf = merkle.leaf_hash(data)
    chosen_note, chosen, logged_at, tsa = latest_note, latest, None, None
    stamped = _first_timestamped(log, index, tsa_roots)
    if stamped is not None:
        chosen_note, chosen, logged_at, tsa = stamped
    try:
        proof = tiles.inclusion_proof(index, chosen.size)
    except (OSError, ValueError):
        return None
    if not merkle.verify_inclusion(leaf, index, chosen.size, proof, chosen.root):
        return None
    opened = _opened_note(chosen_note, (log.verifier, *witnesses))
    cosigned = tuple(
        f"{s.name} ({_cosigned_at(s):%Y-%m-%d %H:%M:%S} UTC)"
        for s in opened.signatures
        if s.name != log.record.origin
    )
    return LogProof(
        origin=log.record.origin,
        index=index,
        entry=data.decode("ascii"),
        leaf_hash=leaf.hex(),
        tree_size=chosen.size,
        checkpoint=chosen_note.decode("utf-8"),
        proof=tuple(base64.b64encode(h).decode("ascii") for h in proof),
        logged_at=logged_at,
        tsa=tsa,
        cosigners=cosigned,
        other_signatures=tuple(s.name for s in opened.unverified),
    )


def _as_published(log: _Log, signed: bytes) -> bytes:
    """The checkpoint as the log signed and the TSA stamped it: witnesses' cosignature lines
    appended since are not part of what the token certifies."""
    opened = note.open_note(signed, [log.verifier])
    own = "".join(s.line() for s in opened.signatures if s.name == log.record.origin)
    return (opened.text + "\n" + own).encode("utf-8")


def _cosigned_at(signature: note.Signature) -> dt.datetime:
    return dt.datetime.fromtimestamp(note.cosignature_timestamp(signature), dt.UTC)


def _first_timestamped(
    log: _Log, index: int, tsa_roots: list[bytes]
) -> tuple[bytes, note.Checkpoint, dt.datetime, str] | None:
    """The first checkpoint covering `index` whose RFC 3161 token verifies."""
    if not tsa_roots:
        return None
    history = log.directory / HISTORY
    try:
        names = os.listdir(history)
    except FileNotFoundError:
        return None
    sizes = sorted(int(n[:-4]) for n in names if n.endswith(".tsr") and n[:-4].isdigit())
    for size in (s for s in sizes if s > index):
        try:
            signed = (history / str(size)).read_bytes()
            token = (history / f"{size}.tsr").read_bytes()
            checkpoint = _checkpoint(log, signed)
            info = timestamp.verify(token, _as_published(log, signed), tsa_roots)
        except (OSError, note.NoteError, timestamp.TimestampError):
            continue
        if checkpoint.size == size:
            return signed, checkpoint, info.time, info.tsa_name
    return None

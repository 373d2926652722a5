"""This node's statement log: the entries the spool committed with their messages go into
the C2SP tiles, and a signed checkpoint is published each `interval` seconds while entries
wait (gateway/log_process.py runs this in a process of its own). Their messages are
released for delivery only then, so no recipient reads a statement the log lacks.

Files, under the log's directory in the public archive (any static server can serve it):

    tile/...                  C2SP tlog-tiles: hash tiles and entry bundles
    checkpoint                the latest signed checkpoint (C2SP checkpoint, signed note)
    checkpoints/<size>        a checkpoint kept at most every `stamp_interval` seconds, for
    checkpoints/<size>.tsr    ever: a statement's time of logging is proven by the first one
                              covering it, and its RFC 3161 token
    index/<hh>                "<seal digest hex> <entry index>" lines, by first byte

Order on disk, for crashes: tiles, then the index, then the kept checkpoint with its
timestamp, then the latest checkpoint, then the spool's commit that releases the messages.
A crash between two steps is found at the next start (tiles ahead of the spool) and
finished without appending twice.
A checkpoint is never signed unless the previous one is consistent with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.spool import Spool
from keys.safeio import atomic_write
from tlog import merkle, note, timestamp
from tlog.entry import EntryError, decode
from tlog.tiles import TileStore

log = logging.getLogger("sealpost.log")

CHECKPOINT = "checkpoint"
HISTORY = "checkpoints"
INDEX = "index"
PUBLIC_FILE_MODE = 0o644
# Entries integrated in one checkpoint at most: a backlog after an outage drains in steps.
BATCH = 20_000


class LogError(Exception):
    """The log cannot go on safely (its files disagree with the spool or with themselves)."""


@dataclass(frozen=True)
class LogConfig:
    directory: Path
    signer: note.Signer
    # A checkpoint at most this often while entries wait: messages are held until then.
    interval: float = 0.25
    # A checkpoint kept in checkpoints/ (and stamped by the TSA) at most this often: the
    # proof of a statement's time, at a pace a TSA and a file system bear for years.
    stamp_interval: float = 10.0
    tsa_url: str = ""
    tsa_timeout: float = 10.0
    tsa_roots: tuple[bytes, ...] = ()

    @property
    def origin(self) -> str:
        return self.signer.name


@dataclass(frozen=True)
class Published:
    size: int
    timestamped: bool


class LogWriter:
    def __init__(
        self,
        spool: Spool,
        config: LogConfig,
    ) -> None:
        self._spool = spool
        self._config = config
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sealpost-log")
        self._tiles = TileStore(config.directory)
        self._verifier = config.signer.verifier()
        self._task: asyncio.Task[None] | None = None
        self.published_size = -1
        self._stamped_size = -1  # the size of the last checkpoint kept in checkpoints/
        self._stamped_at = -math.inf  # when (time.monotonic)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sealpost-log")

    async def stop(self) -> None:
        """Publish what the spool holds, keep the last checkpoint, then stop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        with contextlib.suppress(Exception):
            await self.integrate()
            if self.published_size > self._stamped_size:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, self._keep, self.published_size)
        self._executor.shutdown(wait=True)
        self._tiles.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.integrate()
            except Exception as exc:  # the next round tries again; messages stay held
                log.error("event=log_failed origin=%s error=%s", self._config.origin, exc)
            # A look at the spool each interval: entries arriving meanwhile share a checkpoint.
            await asyncio.sleep(max(0.0, self._config.interval - (loop.time() - started)))

    async def integrate(self) -> Published | None:
        """Integrate waiting entries and publish a checkpoint covering them."""
        spool = self._spool
        entries = await spool.log_entries(BATCH)
        known = await spool.log_size()
        loop = asyncio.get_running_loop()
        if not entries and known == self.published_size:
            if self.published_size > self._stamped_size and self._stamp_due():
                # The last checkpoint of a burst: kept and stamped once traffic pauses.
                await loop.run_in_executor(self._executor, self._keep, self.published_size)
            return None
        published = await loop.run_in_executor(
            self._executor, self._publish, [e.entry for e in entries], known
        )
        if entries:
            released = await spool.log_published(entries[-1].seq, published.size)
            log.info(
                "event=log_published origin=%s size=%d entries=%d released=%d timestamped=%s",
                self._config.origin,
                published.size,
                len(entries),
                released,
                published.timestamped,
            )
        self.published_size = published.size
        return published

    # -- in the writer's thread -------------------------------------------------------------

    def _publish(self, entries: Sequence[bytes], known: int) -> Published:
        tiles = self._tiles
        ahead = tiles.size - known
        if ahead < 0:
            raise LogError(
                f"the log in {self._config.directory} has {tiles.size} entries but the spool "
                f"saw {known} published: tiles were lost; restore them before going on"
            )
        first = tiles.size
        pending = list(entries)
        if ahead and self._written_before_a_crash(known, pending[:ahead]):
            # The tiles got these entries, then the spool's commit did not happen: they are
            # in the log already, in this order.
            first, pending = known, pending[ahead:]
        elif ahead:
            # Entries this spool never wrote (an earlier spool, set aside): ours come after.
            log.warning(
                "event=log_foreign_entries origin=%s entries=%d",
                self._config.origin,
                ahead,
            )
        size = tiles.append(pending)
        # From `first` on, the log holds exactly `entries`, whichever case this was.
        self._write_index(first, entries)
        timestamped = self._checkpoint(size)
        return Published(size, timestamped)

    def _written_before_a_crash(self, known: int, entries: Sequence[bytes]) -> bool:
        ahead = self._tiles.size - known
        return len(entries) == ahead and all(
            self._tiles.entry(known + offset) == entry for offset, entry in enumerate(entries)
        )

    def _checkpoint(self, size: int) -> bool:
        root = self._tiles.root(size)
        self._check_consistent(size, root)
        text = note.Checkpoint(self._config.origin, size, root).format()
        signed = note.sign_note(text, [self._config.signer])
        timestamped = False
        if self._stamp_due():
            timestamped = self._keep_signed(size, signed)
        atomic_write(self._config.directory / CHECKPOINT, signed, PUBLIC_FILE_MODE)
        return timestamped

    def _stamp_due(self) -> bool:
        return time.monotonic() - self._stamped_at >= self._config.stamp_interval

    def _keep(self, size: int) -> None:
        """Keeps (and stamps) the published checkpoint of `size`, as it was published."""
        signed = (self._config.directory / CHECKPOINT).read_bytes()
        if note.Checkpoint.parse(note.open_note(signed, [self._verifier]).text).size == size:
            self._keep_signed(size, signed)

    def _keep_signed(self, size: int, signed: bytes) -> bool:
        """The checkpoint goes into checkpoints/ with its TSA token (before it is published,
        so that no published checkpoint lacks the token a verifier would look for)."""
        timestamped = self._timestamp(size, signed)
        history = self._config.directory / HISTORY
        history.mkdir(parents=True, exist_ok=True)
        atomic_write(history / str(size), signed, PUBLIC_FILE_MODE)
        self._stamped_size, self._stamped_at = size, time.monotonic()
        return timestamped

    def _check_consistent(self, size: int, root: bytes) -> None:
        path = self._config.directory / CHECKPOINT
        try:
            previous_note = path.read_bytes()
        except FileNotFoundError:
            return
        previous = note.Checkpoint.parse(note.open_note(previous_note, [self._verifier]).text)
        if previous.size > size:
            raise LogError(f"the published checkpoint has {previous.size} entries, now {size}")
        proof = self._tiles.consistency_proof(previous.size, size) if previous.size else []
        if previous.size and not merkle.verify_consistency(
            previous.size, size, previous.root, root, proof
        ):
            raise LogError(f"the tree of size {size} is not consistent with the published one")
        if previous.size == size and previous.root != root:
            raise LogError(f"two different roots for size {size}")

    def _timestamp(self, size: int, signed: bytes) -> bool:
        if not self._config.tsa_url:
            return False
        try:
            token = timestamp.fetch(self._config.tsa_url, signed, self._config.tsa_timeout)
            if self._config.tsa_roots:
                timestamp.verify(token, signed, list(self._config.tsa_roots))
        except timestamp.TimestampError as exc:
            # The next checkpoint covers these entries too and is timestamped in its turn:
            # delivery does not stop because a TSA is down.
            log.warning(
                "event=timestamp_failed origin=%s size=%d error=%s", self._config.origin, size, exc
            )
            return False
        history = self._config.directory / HISTORY
        history.mkdir(parents=True, exist_ok=True)
        atomic_write(history / f"{size}.tsr", token, PUBLIC_FILE_MODE)
        return True

    def _write_index(self, first: int, entries: Sequence[bytes]) -> None:
        """Appends each seal digest's position; rebuildable from the entry bundles, so it is
        not fsynced, and a reader tolerates a torn last line or a repeated one."""
        lines: dict[str, list[str]] = {}
        for offset, data in enumerate(entries):
            try:
                entry = decode(data)
            except EntryError:
                continue
            for seal in entry.seals:
                lines.setdefault(seal[:2], []).append(f"{seal} {first + offset}\n")
        directory = self._config.directory / INDEX
        directory.mkdir(parents=True, exist_ok=True)
        for shard, found in lines.items():
            fd = os.open(
                directory / shard, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PUBLIC_FILE_MODE
            )
            try:
                os.write(fd, "".join(found).encode("ascii"))
            finally:
                os.close(fd)

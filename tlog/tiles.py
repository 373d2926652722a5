"""The statement log on disk, in the C2SP tlog-tiles layout (https://c2sp.org/tlog-tiles).

The directory is what a static web server serves as is under the log's prefix:
``tile/<L>/<N>[.p/<W>]`` (hash tiles) and ``tile/entries/<N>[.p/<W>]`` (entry bundles).

Crash safety rests on one order and one invariant. Entry bundles are written first, then
the hash tiles level by level, each file atomically (temporary file, fsync, rename, fsync
of the directory). The bundles are the log; every tile is a function of the bundles
written before it, so any file present is correct, and a writer restarted after a crash
finds its size in the bundles and rebuilds whatever tiles are missing (on its next
`append`, which may be empty). Partial tiles are deleted once their full tile is on disk,
as the spec allows; a reader then reads the full tile instead, whose first hashes are the
same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from tlog import merkle

MAX_ENTRY = 0xFFFF  # bundles prefix each entry with a big-endian uint16 length
MAX_LEVEL = 63
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
_TEMP_SUFFIX = ".tmp"
_LOCK_NAME = ".lock"
_READ_ATTEMPTS = 4  # a partial tile may vanish between listing and opening: look again


def _index_path(index: int) -> str:
    """1234067 -> x001/x234/067: three digits a directory, so no file shadows a directory."""
    if index < 0:
        raise ValueError(f"negative tile index {index}")
    parts = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        parts.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(parts))


def _path(prefix: str, index: int, width: int, full: int) -> str:
    if not 1 <= width <= full:
        raise ValueError(f"tile width {width} is not between 1 and {full}")
    suffix = "" if width == full else f".p/{width}"
    return f"{prefix}/{_index_path(index)}{suffix}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """The path of hash tile `index` at `level`; partial (``.p/<width>``) below 256 hashes."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"tile level {level} is not between 0 and {MAX_LEVEL}")
    return _path(f"tile/{level}", index, width, TILE_WIDTH)


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """The path of entry bundle `index`; partial (``.p/<width>``) below 256 entries."""
    return _path("tile/entries", index, width, TILE_WIDTH)


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY:
            raise ValueError(f"a log entry holds at most {MAX_ENTRY} bytes, not {len(entry)}")
        out += len(entry).to_bytes(2, "big")
        out += entry
    return bytes(out)


def decode_bundle(data: bytes) -> list[bytes]:
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError("entry bundle ends inside a length prefix")
        length = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if at + length > len(data):
            raise ValueError("entry bundle ends inside an entry")
        entries.append(data[at : at + length])
        at += length
    return entries


@dataclass(frozen=True)
class _Tile:
    """A tile's hashes and the perfect subtrees they make: levels[k][i] has height 8L+k."""

    levels: list[list[bytes]]

    @classmethod
    def build(cls, hashes: list[bytes], height: int) -> _Tile:
        levels = [hashes]
        for _ in range(height):
            below = levels[-1]
            levels.append(
                [merkle.node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )
        return cls(levels)

    @property
    def width(self) -> int:
        return len(self.levels[0])


K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class TileStore:
    """A tiled log in `directory`: one writer process, any number of readers.

    Readers must only rely on sizes a verified checkpoint covers: `size` may count entries
    whose tiles the writer is still writing. The writer signs a checkpoint of the size
    `append` returns, never of `size` read after a restart without an `append`.

    `tile_height` other than 8 is not C2SP; it lets tests reach multi-level boundaries
    (65,536 entries with 8) with a few dozen entries.
    """

    def __init__(
        self, directory: Path, *, tile_height: int = TILE_HEIGHT, cached_tiles: int = 256
    ) -> None:
        if not 1 <= tile_height <= TILE_HEIGHT:
            raise ValueError(f"tile height {tile_height} is not between 1 and {TILE_HEIGHT}")
        self.directory = Path(directory)
        self._height = tile_height
        self._width = 1 << tile_height
        self._lock = threading.RLock()
        self._tiles: _LRU[tuple[int, int], _Tile] = _LRU(cached_tiles)
        self._bundles: _LRU[int, list[bytes]] = _LRU(16)
        self._writer_fd: int | None = None
        self._stale = True  # whether the writer must look at the disk before writing
        self._size = self._read_size()

    # -- reading -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Entries in the bundles when last looked at (see the class note)."""
        return self._size

    def refresh(self) -> int:
        """Look at the directory again, for a reader following a live writer."""
        with self._lock:
            self._size = max(self._size, self._read_size())
            return self._size

    def hash_at(self, height: int, index: int) -> bytes:
        """The hash of the perfect subtree of `height` at `index` (a merkle.HashReader)."""
        if height < 0 or index < 0:
            raise ValueError(f"no subtree of height {height} at {index}")
        level, k = divmod(height, self._height)
        first = index << k  # the subtree's first hash in the tile level below it
        number, offset = divmod(first, self._width)
        tile = self._tile_with(level, number, offset + (1 << k))
        return tile.levels[k][offset >> k]

    def leaf_hash_at(self, index: int) -> bytes:
        self._check_index(index)
        return self.hash_at(0, index)

    def entry(self, index: int) -> bytes:
        self._check_index(index)
        number, offset = divmod(index, self._width)
        return self._bundle_with(number, offset + 1)[offset]

    def root(self, size: int) -> bytes:
        self._check_size(size)
        return merkle.root(size, self.hash_at)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        return merkle.inclusion_proof(index, size, self.hash_at)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        self._check_size(new)
        return merkle.consistency_proof(old, new, self.hash_at)

    def _check_size(self, size: int) -> None:
        if size < 0 or (size > self._size and size > self.refresh()):
            raise ValueError(f"the log at {self.directory} has no tree of size {size}")

    def _check_index(self, index: int) -> None:
        if index < 0 or (index >= self._size and index >= self.refresh()):
            raise ValueError(f"the log at {self.directory} has no entry {index}")

    def _tile_rel(self, level: int, number: int, width: int) -> str:
        return _path(f"tile/{level}", number, width, self._width)

    def _bundle_rel(self, number: int, width: int) -> str:
        return _path("tile/entries", number, width, self._width)

    def _read_size(self) -> int:
        while True:
            full = _count_present(lambda n: self._exists(self._bundle_rel(n, self._width)))
            next_full = self._bundle_rel(full, self._width)
            partial = self._widest_partial(next_full)
            # The writer deletes partial bundles once the full one exists: if it does not
            # exist now, the listing was complete; if it does, count again.
            if not self._exists(next_full):
                return full * self._width + partial

    def _exists(self, rel: str) -> bool:
        return (self.directory / rel).is_file()

    def _widest_partial(self, full_rel: str) -> int:
        try:
            names = os.listdir(self.directory / f"{full_rel}.p")
        except (FileNotFoundError, NotADirectoryError):
            return 0
        widths = [int(n) for n in names if n.isdigit() and n[0] != "0"]
        return max((w for w in widths if w < self._width), default=0)

    def _read_newest(self, full_rel: str, need: int) -> tuple[int, bytes] | None:
        """The full file, else the widest partial one, if it holds at least `need` items."""
        for _ in range(_READ_ATTEMPTS):
            width = self._width
            rel = full_rel
            if not self._exists(full_rel):
                width = self._widest_partial(full_rel)
                if width < need:
                    if self._exists(full_rel):  # completed while we looked
                        continue
                    return None
                rel = f"{full_rel}.p/{width}"
            try:
                return width, (self.directory / rel).read_bytes()
            except FileNotFoundError:
                continue  # a partial file deleted once its full tile was written
        return None

    def _try_tile(self, level: int, number: int, need: int) -> _Tile | None:
        with self._lock:
            cached = self._tiles.get((level, number))
            if cached is not None and cached.width >= need:
                return cached
            found = self._read_newest(self._tile_rel(level, number, self._width), need)
            if found is None:
                return cached
            width, data = found
            if len(data) != width * merkle.HASH_SIZE:
                raise ValueError(
                    f"tile {level}/{number} holds {len(data)} bytes, not {width} hashes"
                )
            size = merkle.HASH_SIZE
            hashes = [data[i : i + size] for i in range(0, len(data), size)]
            tile = _Tile.build(hashes, self._height)
            self._tiles.put((level, number), tile)
            return tile

    def _tile_with(self, level: int, number: int, need: int) -> _Tile:
        tile = self._try_tile(level, number, need)
        if tile is None or tile.width < need:
            raise FileNotFoundError(
                f"the log at {self.directory} has no tile {level}/{number} of width {need}"
            )
        return tile

    def _bundle_with(self, number: int, need: int) -> list[bytes]:
        with self._lock:
            cached = self._bundles.get(number)
            if cached is not None and len(cached) >= need:
                return cached
            found = self._read_newest(self._bundle_rel(number, self._width), need)
            if found is None:
                raise FileNotFoundError(
                    f"the log at {self.directory} has no entry bundle {number} of width {need}"
                )
            width, data = found
            entries = decode_bundle(data)
            if len(entries) != width:
                raise ValueError(f"entry bundle {number} holds {len(entries)} entries, not {width}")
            self._bundles.put(number, entries)
            return entries

    # -- writing -------------------------------------------------------------------------

    def append(self, entries: Sequence[bytes]) -> int:
        """Add `entries`; return the new size once every file for it is on disk.

        With no entries, finishes the files of the current size (after a crash). If it
        raises, some of `entries` may be in the log: `size` says how many.
        """
        batch = list(entries)
        for entry in batch:
            if not isinstance(entry, bytes):
                raise TypeError(f"a log entry is bytes, not {type(entry).__name__}")
            if len(entry) > MAX_ENTRY:
                raise ValueError(f"a log entry is at most {MAX_ENTRY} bytes, not {len(entry)}")
        with self._lock:
            first_tiles = self._become_writer()
            old = self._size
            new = old + len(batch)
            try:
                bundles = self._write_bundles(old, batch)
                if first_tiles is None:
                    first_tiles = self._first_tiles(old, lambda level, expected: expected)
                self._write_tiles(first_tiles, new, bundles)
            except BaseException:
                # Bundles may have reached the disk without their tiles: the next append
                # starts from the disk, never again from entry `old`.
                self._stale = True
                with contextlib.suppress(OSError):
                    self._size = self._read_size()
                raise
            self._size = new
            return new

    def close(self) -> None:
        """Let another writer take over; reading goes on working."""
        with self._lock:
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None
                self._stale = True

    def __enter__(self) -> TileStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _become_writer(self) -> list[int] | None:
        """Take the writer's lock; after a start or a failure, the tiles to rebuild from."""
        if self._writer_fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # Two writers would both write entry N and fork the log.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RuntimeError(f"another process writes the log at {self.directory}") from None
            self._writer_fd = fd
            self._stale = True
        if not self._stale:
            return None
        self._sweep()
        self._size = self._read_size()
        self._tiles = _LRU(self._tiles.capacity)  # written by someone else meanwhile
        self._bundles = _LRU(self._bundles.capacity)
        self._stale = False

        def present(level: int, expected: int) -> int:
            # Full tiles are written in order, so those present are a prefix.
            return _count_present(
                lambda n: self._exists(self._tile_rel(level, n, self._width)), expected
            )

        return self._first_tiles(self._size, present)

    def _first_tiles(self, size: int, full_tiles: Callable[[int, int], int]) -> list[int]:
        """Per level, the first tile to write: after the full ones already there."""
        first: list[int] = []
        level = 0
        while (count := size >> (self._height * level)) > 0:
            first.append(full_tiles(level, count >> self._height))
            level += 1
        return first

    def _write_bundles(self, old: int, batch: list[bytes]) -> dict[int, list[bytes]]:
        if not batch:
            return {}
        first, offset = divmod(old, self._width)
        items = self._bundle_with(first, offset)[:offset] + batch if offset else batch
        bundles: dict[int, list[bytes]] = {}
        for i in range(0, len(items), self._width):
            number = first + i // self._width
            chunk = items[i : i + self._width]
            self._write_file(self._bundle_rel(number, len(chunk)), encode_bundle(chunk))
            self._bundles.put(number, chunk)
            bundles[number] = chunk
        for number, chunk in bundles.items():
            if len(chunk) == self._width:
                self._drop_partials(self._bundle_rel(number, self._width))
        return bundles

    def _write_tiles(self, first: list[int], size: int, bundles: dict[int, list[bytes]]) -> None:
        below: dict[int, bytes] = {}  # roots of the full tiles of the level below, this pass
        level = 0
        while (count := size >> (self._height * level)) > 0:
            roots: dict[int, bytes] = {}
            start = first[level] if level < len(first) else 0
            for number in range(start, -(-count // self._width)):
                width = min(self._width, count - number * self._width)
                tile = self._make_tile(level, number, width, bundles, below)
                if width == self._width:
                    roots[number] = tile.levels[self._height][0]
                    self._drop_partials(self._tile_rel(level, number, width))
            below = roots
            level += 1

    def _make_tile(
        self,
        level: int,
        number: int,
        width: int,
        bundles: dict[int, list[bytes]],
        below: dict[int, bytes],
    ) -> _Tile:
        have = self._try_tile(level, number, width)
        if have is not None and have.width >= width:
            return have  # on disk already: any file present is correct
        # A narrower tile is a prefix to extend (after a restart, only the disk has it).
        have = have or self._try_tile(level, number, 1)
        hashes = list(have.levels[0]) if have is not None else []
        base = number * self._width
        if level == 0:
            chunk = bundles.get(number) or self._bundle_with(number, width)
            hashes += [merkle.leaf_hash(e) for e in chunk[len(hashes) : width]]
        else:
            for position in range(base + len(hashes), base + width):
                root = below.get(position)
                if root is None:
                    full = self._tile_with(level - 1, position, self._width)
                    root = full.levels[self._height][0]
                hashes.append(root)
        self._write_file(self._tile_rel(level, number, width), b"".join(hashes))
        tile = _Tile.build(hashes, self._height)
        self._tiles.put((level, number), tile)
        return tile

    def _write_file(self, rel: str, data: bytes) -> None:
        path = self.directory / rel
        _make_dirs(path.parent)
        temp = path.parent / f".{path.name}.{secrets.token_hex(8)}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                _fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def _sweep(self) -> None:
        """Remove what a crashed writer left half written (we hold the writer's lock)."""
        # Only under tile/: other writers may keep their own temporary files beside it.
        for parent, _, names in os.walk(self.directory / "tile"):
            for name in names:
                if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                    (Path(parent) / name).unlink(missing_ok=True)

    def _drop_partials(self, full_rel: str) -> None:
        partials = self.directory / f"{full_rel}.p"
        try:
            names = os.listdir(partials)
        except FileNotFoundError:
            return
        for name in names:
            (partials / name).unlink(missing_ok=True)
        partials.rmdir()
        _fsync_dir(partials.parent)


def _count_present(present: Callable[[int], bool], limit: int | None = None) -> int:
    """How many of 0, 1, 2, ... are present, when those present are a prefix (O(log n))."""
    if limit is not None and (limit == 0 or present(limit - 1)):
        return limit
    if not present(0):
        return 0
    low, high = 0, 1  # present(low), and high is the first index not yet known absent
    while (limit is None or high < limit) and present(high):
        low, high = high, high * 2
    if limit is not None:
        high = min(high, limit - 1)
    # Invariant: present(low) and not present(high).
    while high - low > 1:
        middle = (low + high) // 2
        if present(middle):
            low = middle
        else:
            high = middle
    return low + 1


def _make_dirs(directory: Path) -> None:
    """mkdir -p, each new directory made durable in its parent."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _fsync(fd: int) -> None:
    # One place for every flush to the disk, so that tests about layout can skip them.
    os.fsync(fd)

"""The statement log on disk: C2SP tlog-tiles paths, entry bundles, and a TileStore whose
trees and proofs are those of RFC 9162, whatever the batches, restarts and crashes.

Paths are checked against transparency-dev/tessera's and golang.org/x/mod's tests, trees
against transparency-dev/merkle's published hashes (tests/tlog/vectors.json). Most store
tests use small tiles (`tile_height=2`: 4 hashes a tile), so that a few dozen entries cross
the boundaries 256 and 65,536 entries cross with the real height of 8.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tlog.test_merkle import (
    LEAF_INPUTS,
    NODE_HASHES,
    ROOT_HASHES,
    VECTORS,
    ReferenceTree,
    reference_mth,
)
from tlog import merkle, tiles
from tlog.merkle import EMPTY_ROOT, leaf_hash, verify_consistency, verify_inclusion
from tlog.tiles import TileStore, decode_bundle, encode_bundle, entries_path, tile_path


@pytest.fixture(autouse=True, scope="module")
def _no_flush_to_disk() -> Iterator[None]:
    """Most tests are about what is written and in which order, not about the disk's cache:
    test_each_file_is_on_disk_before_anything_relies_on_it checks the flushes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiles, "_fsync", lambda fd: None)
        yield


def entries(start: int, count: int) -> list[bytes]:
    return [b"entry %d" % i for i in range(start, start + count)]


def files_under(directory: Path) -> set[str]:
    return {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def filled(directory: Path, batches: list[int], height: int = 2) -> TileStore:
    store = TileStore(directory, tile_height=height)
    size = 0
    for count in batches:
        size = store.append(entries(size, count))
    return store


def check_tree(store: TileStore, reference: ReferenceTree, sizes: list[int]) -> None:
    """Roots, and every inclusion and consistency proof, of the given sizes."""
    for size in sizes:
        top = reference.mth(0, size)
        assert store.root(size) == top
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            assert verify_inclusion(reference.leaves[index], index, size, proof, top)
        for old in range(1, size + 1):
            proof = store.consistency_proof(old, size)
            assert verify_consistency(old, size, reference.mth(0, old), top, proof)


def reference_of(count: int) -> ReferenceTree:
    return ReferenceTree([leaf_hash(e) for e in entries(0, count)])


# -- paths ----------------------------------------------------------------------------------


def test_paths_of_the_spec_text() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(0, 1234067, 12) == "tile/0/x001/x234/067.p/12"
    assert entries_path(1234067, 12) == "tile/entries/x001/x234/067.p/12"
    assert entries_path(0) == "tile/entries/000"


@pytest.mark.parametrize("case", VECTORS["tile_paths"]["cases"], ids=lambda c: c["path"])
def test_tile_path_is_tesseras(case: dict[str, Any]) -> None:
    assert tile_path(case["level"], case["index"], case["width"]) == case["path"]


@pytest.mark.parametrize("case", VECTORS["entries_paths"]["cases"], ids=lambda c: c["path"])
def test_entries_path_is_tesseras(case: dict[str, Any]) -> None:
    assert entries_path(case["index"], case["width"]) == case["path"]


@pytest.mark.parametrize(
    "case", VECTORS["entries_path_for_index"]["cases"], ids=lambda c: f"{c['seq']}@{c['size']}"
)
def test_the_bundle_of_an_entry_in_a_tree_is_tesseras(case: dict[str, Any]) -> None:
    number = case["seq"] // 256
    width = min(256, case["size"] - number * 256)
    assert entries_path(number, width) == case["path"]


@pytest.mark.parametrize("case", VECTORS["go_sumdb_tile_paths"]["cases"], ids=lambda c: c["path"])
def test_tile_numbers_are_written_as_go_sumdb_writes_them(case: dict[str, Any]) -> None:
    # Go's paths carry the tile height (tile/H/L/N); C2SP's drop it and keep N as is.
    go_number = case["path"].split("/", 3)[3].split(".p/")[0]
    ours = tile_path(case["level"], case["index"])
    assert ours == f"tile/{case['level']}/{go_number}"


@pytest.mark.parametrize(
    ("level", "index", "width"), [(64, 0, 256), (-1, 0, 256), (0, -1, 256), (0, 0, 0), (0, 0, 257)]
)
def test_paths_outside_the_spec_are_refused(level: int, index: int, width: int) -> None:
    with pytest.raises(ValueError, match=r"level|index|width"):
        tile_path(level, index, width)


# -- entry bundles --------------------------------------------------------------------------


def test_a_bundle_is_each_entry_after_its_big_endian_uint16_length() -> None:
    bundle = encode_bundle([b"", b"ab", b"x" * 258])
    assert bundle == b"\x00\x00" + b"\x00\x02ab" + b"\x01\x02" + b"x" * 258
    assert decode_bundle(bundle) == [b"", b"ab", b"x" * 258]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=40))
def test_bundles_round_trip(items: list[bytes]) -> None:
    assert decode_bundle(encode_bundle(items)) == items


def test_the_longest_entry_fits_and_one_byte_more_does_not() -> None:
    longest = b"\xff" * 0xFFFF
    assert decode_bundle(encode_bundle([longest])) == [longest]
    with pytest.raises(ValueError, match="at most 65535"):
        encode_bundle([longest + b"!"])


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x05abcd", b"\x00\x01a\x00"])
def test_a_truncated_bundle_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="ends inside"):
        decode_bundle(data)


# -- the tree a store serves ----------------------------------------------------------------


@pytest.mark.parametrize("height", [8, 2, 1])
@pytest.mark.parametrize("batches", [[8], [1] * 8, [3, 5], [0, 7, 0, 1]])
def test_a_store_of_the_rfc6962_leaves_serves_the_published_tree(
    tmp_path: Path, height: int, batches: list[int]
) -> None:
    store = TileStore(tmp_path, tile_height=height)
    done = 0
    for count in batches:
        done = store.append(LEAF_INPUTS[done : done + count])
    assert done == store.size == 8
    for size, expected in enumerate(ROOT_HASHES):
        assert store.root(size) == expected
    for h, level in enumerate(NODE_HASHES):
        assert [store.hash_at(h, i) for i in range(len(level))] == level
    for index, value in enumerate(LEAF_INPUTS):
        assert store.entry(index) == value
        assert store.leaf_hash_at(index) == NODE_HASHES[0][index]
    for case in VECTORS["inclusion_proofs"]["cases"]:
        proof = store.inclusion_proof(case["index"], case["size"])
        assert [p.hex() for p in proof] == case["proof"]
    for case in VECTORS["consistency_proofs"]["cases"]:
        proof = store.consistency_proof(case["old"], case["new"])
        assert [p.hex() for p in proof] == case["proof"]


def test_a_tree_of_70000_is_laid_out_as_the_spec_says(tmp_path: Path) -> None:
    # "273 full level 0 tiles, one partial level 0 tile of width 112, one full level 1
    # tile, one partial level 1 tile of width 17, and one partial level 2 tile of width 1"
    store = TileStore(tmp_path)
    assert store.append([i.to_bytes(3, "big") for i in range(70000)]) == 70000
    expected = {tile_path(0, n) for n in range(273)} | {entries_path(n) for n in range(273)}
    expected |= {tile_path(0, 273, 112), tile_path(1, 0), tile_path(1, 1, 17), tile_path(2, 0, 1)}
    expected |= {entries_path(273, 112)}
    assert files_under(tmp_path) == expected
    leaves = [leaf_hash(i.to_bytes(3, "big")) for i in range(70000)]
    for size in (70000, 65536, 65535, 256, 1):
        assert TileStore(tmp_path).root(size) == reference_mth(leaves[:size])


def test_a_tree_of_256_is_one_full_tile_and_a_level_1_tile_of_width_1(tmp_path: Path) -> None:
    TileStore(tmp_path).append(entries(0, 256))
    assert files_under(tmp_path) == {"tile/0/000", "tile/1/000.p/1", "tile/entries/000"}


@pytest.mark.parametrize(
    ("height", "batches"),
    [
        (2, [1, 2, 13, 16, 16, 22]),  # 4, 16 and 64 entries: one, two and three full levels
        (1, [1, 1, 2, 4, 9, 15, 1]),
        (3, [7, 1, 56, 1, 8]),
    ],
)
def test_every_proof_of_every_size_verifies(
    tmp_path: Path, height: int, batches: list[int]
) -> None:
    store = filled(tmp_path, batches, height)
    check_tree(store, reference_of(store.size), list(range(store.size + 1)))


def test_proofs_across_256_entry_boundaries(tmp_path: Path) -> None:
    store = filled(tmp_path, [255, 1, 256, 256, 1], height=8)
    reference = reference_of(769)
    for size in (255, 256, 257, 511, 512, 513, 768, 769):
        top = reference.mth(0, size)
        assert store.root(size) == top
        for index in [i for i in (0, 254, 255, 256, size - 1) if i < size]:
            proof = store.inclusion_proof(index, size)
            assert verify_inclusion(reference.leaves[index], index, size, proof, top)
        for old in (1, 255, 256, 257, size):
            if old <= size:
                proof = store.consistency_proof(old, size)
                assert verify_consistency(old, size, reference.mth(0, old), top, proof)


@st.composite
def heights_and_batches(draw: st.DrawFn, most: int) -> tuple[int, list[int]]:
    """A tile height and append batches: up to thousands of entries in real 256-hash tiles,
    fewer in small tiles (their many levels make many files)."""
    height = draw(st.sampled_from([1, 2, 3, 8]))
    largest = most if height == 8 else most // 8
    return height, draw(st.lists(st.integers(0, largest), min_size=1, max_size=5))


@settings(max_examples=40, deadline=None)
@given(heights_and_batches(most=1200), st.data())
def test_proofs_from_tiles_verify_and_tampering_fails(
    height_batches: tuple[int, list[int]], data: st.DataObject
) -> None:
    height, batches = height_batches
    with tempfile.TemporaryDirectory() as name:
        store = filled(Path(name), batches, height)
        total = store.size
        reference = reference_of(total)
        if total == 0:
            assert store.root(0) == EMPTY_ROOT
            return
        for _ in range(5):
            size = data.draw(st.integers(1, total), label="size")
            index = data.draw(st.integers(0, size - 1), label="index")
            old = data.draw(st.integers(1, size), label="old")
            top = reference.mth(0, size)
            assert store.root(size) == top

            proof = store.inclusion_proof(index, size)
            leaf = store.leaf_hash_at(index)
            assert leaf == reference.leaves[index]
            assert verify_inclusion(leaf, index, size, proof, top)
            assert not verify_inclusion(leaf_hash(b"forged"), index, size, proof, top)
            if proof:
                bad = [*proof[:-1], bytes(32)]
                assert not verify_inclusion(leaf, index, size, bad, top)
            assert not verify_inclusion(leaf, index + 1, size, proof, top)

            proof = store.consistency_proof(old, size)
            assert verify_consistency(old, size, reference.mth(0, old), top, proof)
            if proof:
                bad = [bytes(32), *proof[1:]]
                assert not verify_consistency(old, size, reference.mth(0, old), top, bad)
            if old < size:
                assert not verify_consistency(old, size, reference.mth(0, old + 1), top, proof)


# -- restarts, crashes, readers -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(heights_and_batches(most=600), st.lists(st.integers(0, 70), min_size=1, max_size=4))
def test_a_reopened_store_continues_where_it_stopped(
    height_first: tuple[int, list[int]], then: list[int]
) -> None:
    height, first = height_first
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        in_one_go = filled(Path(a), [sum(first) + sum(then)], height)
        store = filled(Path(b), first, height)
        checkpoints = [store.size]
        store.close()
        reopened = TileStore(Path(b), tile_height=height)
        assert reopened.size == sum(first)
        for count in then:
            checkpoints.append(reopened.append(entries(reopened.size, count)))
        for size in {0, *checkpoints}:
            assert reopened.root(size) == in_one_go.root(size)
            assert TileStore(Path(b), tile_height=height).root(size) == in_one_go.root(size)
        for index in {0, sum(first) - 1, reopened.size - 1} & set(range(reopened.size)):
            assert reopened.entry(index) == entries(index, 1)[0]


class Crash(BaseException):
    """The process dies here (BaseException: nothing on the way may catch it)."""


@pytest.fixture
def crash_after(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Let TileStore write budget[0] files, then die halfway into the next temporary file."""
    budget = [1 << 30]
    write = TileStore._write_file

    def dying_write(self: TileStore, rel: str, data: bytes) -> None:
        if budget[0] == 0:
            target = self.directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            torn = target.parent / f".{target.name}.0123456789abcdef.tmp"
            torn.write_bytes(data[: len(data) // 2])
            raise Crash
        budget[0] -= 1
        write(self, rel, data)

    monkeypatch.setattr(TileStore, "_write_file", dying_write)
    return budget


@pytest.mark.parametrize("height", [2, 8])
def test_a_crash_at_any_file_leaves_a_log_that_proves_the_past_and_resumes(
    tmp_path: Path, crash_after: list[int], height: int
) -> None:
    before, batch = (13, 40) if height == 2 else (250, 600)
    base = tmp_path / "base"
    filled(base, [before], height).close()
    reference = reference_of(before + batch)
    crash_points = 0
    while True:
        directory = tmp_path / f"crash{crash_points}"
        shutil.copytree(base, directory)
        store = TileStore(directory, tile_height=height)
        crash_after[0] = crash_points
        try:
            store.append(entries(before, batch))
        except Crash:
            crashed = True
        else:
            crashed = False
            written = crash_points - crash_after[0]
        store.close()
        crash_after[0] = 1 << 30

        # What a checkpoint signed before the crash covers is still served and provable.
        reader = TileStore(directory, tile_height=height)
        assert before <= reader.size <= before + batch
        assert reader.root(before) == reference.mth(0, before)
        proof = reader.inclusion_proof(before - 1, before)
        top = reference.mth(0, before)
        assert verify_inclusion(reference.leaves[before - 1], before - 1, before, proof, top)

        # The restarted writer finishes the tiles of the entries that reached the disk...
        writer = TileStore(directory, tile_height=height)
        resumed = writer.append([])
        assert resumed == reader.size
        for size in {before, resumed, (before + resumed) // 2}:
            assert writer.root(size) == reference.mth(0, size)
            old = reference.mth(0, before)
            proof = writer.consistency_proof(before, size)
            assert verify_consistency(before, size, old, reference.mth(0, size), proof)
        # ...and goes on with the others, leaving no half-written file behind.
        assert writer.append(entries(resumed, before + batch - resumed)) == before + batch
        assert writer.root(before + batch) == reference.mth(0, before + batch)
        assert not [p for p in directory.rglob("*.tmp")]
        writer.close()
        if not crashed:
            break
        crash_points += 1
    assert crash_points == written > 8  # every bundle and tile of the batch was a crash point


def test_after_a_failed_append_the_store_says_what_it_holds_and_goes_on(
    tmp_path: Path, crash_after: list[int]
) -> None:
    store = filled(tmp_path, [5], height=2)
    crash_after[0] = 4  # bundles 1 to 4 reach the disk, then the process dies
    with pytest.raises(Crash):
        store.append(entries(5, 40))
    crash_after[0] = 1 << 30
    assert store.size == 20  # the bundles on disk: entries 5 to 19 are in the log
    retried = [b"retried %d" % i for i in range(25)]  # not entries 20 to 44 as first sent
    assert store.append(retried) == 45
    leaves = [leaf_hash(e) for e in entries(0, 20) + retried]
    for size in (5, 20, 21, 45):
        assert store.root(size) == reference_mth(leaves[:size])
        assert TileStore(tmp_path, tile_height=2).root(size) == reference_mth(leaves[:size])


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    first = TileStore(tmp_path)
    first.append([b"one"])
    second = TileStore(tmp_path)
    with pytest.raises(RuntimeError, match="another process writes"):
        second.append([b"two"])
    first.close()
    assert second.append([b"two"]) == 2
    assert [second.entry(0), second.entry(1)] == [b"one", b"two"]


def test_partial_tiles_go_once_full_and_older_sizes_stay_provable(tmp_path: Path) -> None:
    store = filled(tmp_path, [10, 100, 300], height=8)
    names = files_under(tmp_path)
    assert not [n for n in names if n.startswith(("tile/0/000.p/", "tile/entries/000.p/"))]
    assert {"tile/0/001.p/154", "tile/entries/001.p/154", "tile/0/000"} <= names
    assert {"tile/1/000.p/1"} <= names  # level 1 is still partial: every width kept
    reference = reference_of(410)
    reader = TileStore(tmp_path)
    for old, new in ((10, 110), (110, 410), (10, 410)):
        proof = reader.consistency_proof(old, new)
        assert verify_consistency(old, new, reference.mth(0, old), reference.mth(0, new), proof)
        proof = reader.inclusion_proof(old - 1, old)
        top = reference.mth(0, old)
        assert verify_inclusion(reference.leaves[old - 1], old - 1, old, proof, top)
    store.close()


def test_stray_temporary_files_are_not_entries(tmp_path: Path) -> None:
    store = filled(tmp_path, [6], height=2)
    root = store.root(6)
    store.close()
    for rel in ("tile/entries/001.p", "tile/0/001.p", "tile/entries"):
        (tmp_path / rel / ".7.deadbeefdeadbeef.tmp").write_bytes(b"\x00\x01")
    reopened = TileStore(tmp_path, tile_height=2)
    assert reopened.size == 6
    assert reopened.root(6) == root
    assert reopened.append(entries(6, 1)) == 7
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_reader_follows_a_live_writer(tmp_path: Path) -> None:
    writer = TileStore(tmp_path, tile_height=2)
    rng = random.Random(9162)
    batches = [rng.randrange(0, 12) for _ in range(150)]
    reference = reference_of(sum(batches))
    published: list[int] = [0]  # sizes whose checkpoint the writer would sign
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for count in batches:
                published.append(writer.append(entries(writer.size, count)))
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    reader = TileStore(tmp_path, tile_height=2)
    trusted = 0
    while thread.is_alive() or trusted < published[-1]:
        size = published[-1]
        if size == trusted and trusted:
            time.sleep(0.001)  # nothing new signed yet
            continue
        top = reference.mth(0, size)
        assert reader.root(size) == top
        if trusted:
            proof = reader.consistency_proof(trusted, size)
            assert verify_consistency(trusted, size, reference.mth(0, trusted), top, proof)
        if size:
            index = rng.randrange(size)
            proof = reader.inclusion_proof(index, size)
            assert verify_inclusion(reference.leaves[index], index, size, proof, top)
            assert reader.entry(index) == entries(index, 1)[0]
        trusted = size
    thread.join()
    assert not failures
    assert trusted == sum(batches)


def test_what_is_not_in_the_log_is_refused(tmp_path: Path) -> None:
    empty = TileStore(tmp_path / "nothing yet")
    assert empty.size == 0
    assert empty.root(0) == EMPTY_ROOT
    store = filled(tmp_path / "log", [5], height=2)
    with pytest.raises(ValueError, match="no entry 5"):
        store.entry(5)
    with pytest.raises(ValueError, match="no tree of size 6"):
        store.root(6)
    with pytest.raises(ValueError, match="no tree of size 6"):
        store.inclusion_proof(0, 6)
    with pytest.raises(FileNotFoundError):
        store.hash_at(0, 5)
    before = files_under(tmp_path / "log")
    with pytest.raises(ValueError, match="at most 65535"):
        store.append([b"fine", b"x" * 65536])
    assert store.size == 5
    assert files_under(tmp_path / "log") == before


def test_files_are_readable_by_the_web_server(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        filled(tmp_path, [5], height=2)
    finally:
        os.umask(umask)
    for name in files_under(tmp_path):
        assert os.stat(tmp_path / name).st_mode & 0o644 == 0o644


def test_hash_size_is_sha256() -> None:
    assert merkle.HASH_SIZE == 32
    assert tiles.TILE_WIDTH * merkle.HASH_SIZE == 8192  # "Full tiles ... 8,192 bytes"


def test_each_file_is_on_disk_before_anything_relies_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[str] = []
    monkeypatch.setattr(
        tiles, "_fsync", lambda fd: flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
    )
    store = TileStore(tmp_path, tile_height=2)
    store.append(entries(0, 3))
    flushed.clear()
    store.append(entries(3, 11))  # bundles 0 to 3, three levels of tiles
    written = sorted(files_under(tmp_path) - {"tile/0/000.p/3", "tile/entries/000.p/3"})
    last_bundle = first_tile = -1
    for rel in written:
        path = tmp_path / rel
        # Its data flushed under a temporary name, then its directory after the rename.
        data = next(
            i
            for i, p in enumerate(flushed)
            if Path(p).parent == path.parent and Path(p).name.startswith(f".{path.name}.")
        )
        renamed = flushed.index(str(path.parent), data)
        if rel.startswith("tile/entries/"):
            last_bundle = max(last_bundle, renamed)
        elif first_tile < 0 or data < first_tile:
            first_tile = data
    # Every entry is durable before any hash of it is written: a crash never leaves a tile
    # that the bundles do not back.
    assert 0 <= last_bundle < first_tile

"""The statement log's writer: what the spool committed is published in checkpoints, once,
in order, consistent with every checkpoint before; crashes and strangers cannot fork it."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.log_writer import LogConfig, LogError, LogWriter
from gateway.spool import Envelope, Spool
from tlog import merkle, note
from tlog.entry import Entry
from tlog.tiles import TileStore

ORIGIN = "caisses.example/statements/test"


def entry(n: int) -> bytes:
    import datetime as dt

    digest = f"{n:064x}"
    return Entry(dt.datetime(2026, 11, 30, tzinfo=dt.UTC), "caisses.example", "202611", "bh",
                 (digest,), ()).encode()  # fmt: skip


@dataclasses.dataclass
class Node:
    spool: Spool
    writer: LogWriter
    directory: Path
    verifier: note.Verifier

    async def put(self, n: int) -> str:
        return await self.spool.put(
            Envelope("a@caisses.example", ["m@example.org"], b"Subject: x\r\n\r\nx\r\n",
                     log_entry=entry(n))
        )  # fmt: skip

    def checkpoint(self) -> note.Checkpoint:
        data = (self.directory / "checkpoint").read_bytes()
        return note.Checkpoint.parse(note.open_note(data, [self.verifier]).text)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    signer_text, verifier_text = note.generate_key(ORIGIN)
    spool = Spool.open(tmp_path / "spool")
    directory = tmp_path / "log"
    writer = LogWriter(spool, LogConfig(directory, note.Signer.from_text(signer_text)))
    yield Node(spool, writer, directory, note.Verifier.from_text(verifier_text))
    await writer.stop()
    await spool.close()


async def test_committed_entries_are_published_and_their_messages_released(node: Node) -> None:
    queue_ids = [await node.put(n) for n in range(3)]
    published = await node.writer.integrate()
    assert published is not None
    assert published.size == 3
    checkpoint = node.checkpoint()
    assert (checkpoint.origin, checkpoint.size) == (ORIGIN, 3)
    tiles = TileStore(node.directory)
    assert checkpoint.root == tiles.root(3)
    assert [tiles.entry(i) for i in range(3)] == [entry(n) for n in range(3)]
    loaded = [await node.spool.load(q) for q in queue_ids]
    assert all(m is not None and m.recipients[0].state == "queued" for m in loaded)
    # Nothing new: no new checkpoint.
    assert await node.writer.integrate() is None
    # The index finds each entry by its seal's digest.
    index = (node.directory / "index" / "00").read_text()
    assert f"{0:064x} 0\n{1:064x} 1\n{2:064x} 2\n" == index


async def test_a_crash_between_the_tiles_and_the_spool_appends_nothing_twice(
    node: Node,
) -> None:
    for n in range(4):
        await node.put(n)
    # As if the writer died after the tiles and before the spool's commit.
    with TileStore(node.directory) as tiles:
        tiles.append([entry(0), entry(1)])
    restarted = LogWriter(node.spool, node.writer._config)
    published = await restarted.integrate()
    await restarted.stop()
    assert published is not None
    assert published.size == 4
    tiles = TileStore(node.directory)
    assert [tiles.entry(i) for i in range(4)] == [entry(n) for n in range(4)]


async def test_a_new_spool_appends_after_entries_it_did_not_write(node: Node) -> None:
    with TileStore(node.directory) as tiles:
        tiles.append([entry(100), entry(101)])  # an earlier spool's, set aside since
    await node.put(0)
    published = await node.writer.integrate()
    assert published is not None
    tiles = TileStore(node.directory)
    assert [tiles.entry(i) for i in range(3)] == [entry(100), entry(101), entry(0)]


async def test_a_checkpoint_is_never_signed_unless_consistent_with_the_last(node: Node) -> None:
    await node.put(0)
    await node.writer.integrate()
    await node.writer.stop()
    first = node.checkpoint()
    # While the writer was stopped, someone replaced the tiles with another history.
    shutil.rmtree(node.directory / "tile")
    with TileStore(node.directory) as tiles:
        tiles.append([entry(9)])
    restarted = LogWriter(node.spool, node.writer._config)
    await node.put(1)
    with pytest.raises(LogError, match="not consistent"):
        await restarted.integrate()
    await restarted.stop()
    assert node.checkpoint() == first
    assert merkle.leaf_hash(entry(0)) == first.root  # a one-entry tree's root is its leaf

"""The spool: durable puts, group commit, per-recipient state, corrupt entries set aside."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mail_params import Body, MailParams
from gateway.spool import (
    DB_NAME,
    HELD_OVERHEAD,
    CorruptEntry,
    Envelope,
    Spool,
    SpoolError,
    Update,
)

REPO = Path(__file__).resolve().parents[2]


def envelope(n: int = 0, recipients: int = 2, size: int = 1000) -> Envelope:
    data = b"Subject: m%d\r\n\r\n" % n + b"x" * size + b"\r\n"
    rcpts = [f"r{i}@x.example" for i in range(recipients)]
    return Envelope("s@caisses.example", rcpts, data, client="test")


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = Spool.open(tmp_path / "spool")
    yield opened
    await opened.close()


async def test_put_then_load_gives_back_the_message_and_queued_recipients(spool: Spool) -> None:
    sent = envelope(recipients=3)
    queue_id = await spool.put(sent)
    loaded = await spool.load(queue_id)
    assert loaded is not None
    assert loaded.data == sent.data
    assert (loaded.sender, loaded.client, loaded.size) == (sent.sender, "test", sent.size)
    assert [r.address for r in loaded.recipients] == sent.recipients
    assert {r.state for r in loaded.recipients} == {"queued"}
    assert await spool.due(time.time() + 1, 10) == [queue_id]


async def test_null_sender_is_kept_and_an_envelope_needs_recipients(spool: Spool) -> None:
    queue_id = await spool.put(Envelope("", ["a@x.example"], b"x\r\n"))
    loaded = await spool.load(queue_id)
    assert loaded is not None
    assert loaded.sender == ""
    with pytest.raises(ValueError, match="recipient"):
        await spool.put(Envelope("s@x.example", [], b"x\r\n"))


async def test_concurrent_puts_get_distinct_ids_and_all_land(spool: Spool) -> None:
    ids = await asyncio.gather(*(spool.put(envelope(i)) for i in range(50)))
    assert len(set(ids)) == 50
    # Read back through a second connection, as another process would.
    conn = sqlite3.connect(spool.path / DB_NAME)
    try:
        stored = {row[0] for row in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()
    assert stored == set(ids)


async def test_group_commit_batches_puts(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.spool as module

    batches: list[int] = []
    real = module._commit

    def counting(conn: sqlite3.Connection, writes: list[object]) -> object:
        batches.append(len(writes))
        return real(conn, writes)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "_commit", counting)
    await asyncio.gather(*(spool.put(envelope(i)) for i in range(40)))
    assert sum(batches) == 40
    assert len(batches) < 10, batches


async def test_a_failing_write_does_not_undo_the_others_in_its_commit(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.spool as module

    ids = iter(["A", "B", "A", "C"])  # the second "A" collides with the first
    monkeypatch.setattr(module, "new_queue_id", lambda: next(ids))
    results = await asyncio.gather(
        *(spool.put(envelope(i)) for i in range(4)), return_exceptions=True
    )
    assert results[:2] == ["A", "B"]
    assert isinstance(results[2], SpoolError)
    assert results[3] == "C"
    assert sorted(m.id for m in await spool.messages()) == ["A", "B", "C"]
    loaded = await spool.load("A")
    assert loaded is not None
    assert loaded.data == envelope(0).data


async def test_record_moves_recipients_through_their_states(spool: Spool) -> None:
    queue_id = await spool.put(envelope(recipients=3))
    later = time.time() + 60
    done = await spool.record(
        queue_id,
        [
            Update(0, "delivered", "250 ok"),
            Update(1, "deferred", "451 later", next_attempt=later),
            Update(2, "bounced", "550 no"),
        ],
    )
    assert not done
    loaded = await spool.load(queue_id)
    assert loaded is not None
    states = [(r.state, r.attempts, r.last_reply) for r in loaded.recipients]
    assert states == [
        ("delivered", 1, "250 ok"),
        ("deferred", 1, "451 later"),
        ("bounced", 1, "550 no"),
    ]
    assert await spool.due(time.time(), 10) == []
    assert await spool.next_due() == pytest.approx(later)
    assert await spool.due(later, 10) == [queue_id]

    assert await spool.record(queue_id, [Update(1, "delivered", "250 ok")])
    assert await spool.load(queue_id) is None
    assert await spool.depth() == 0


async def test_a_deferral_without_a_connection_attempt_leaves_the_count_alone(
    spool: Spool,
) -> None:
    queue_id = await spool.put(envelope(recipients=1))
    later = time.time() + 60
    await spool.record(queue_id, [Update(0, "deferred", "4.4.1 refused", later)])
    held = Update(0, "deferred", "4.4.1 delivery temporarily suspended: refused", later,
                  attempted=False)  # fmt: skip
    await spool.record(queue_id, [held])
    loaded = await spool.load(queue_id)
    assert loaded is not None
    (rcpt,) = loaded.recipients
    assert (rcpt.attempts, rcpt.last_reply) == (1, held.reply)


async def test_present_names_the_ids_still_queued(spool: Spool) -> None:
    ids = [await spool.put(envelope(i)) for i in range(3)]
    assert await spool.delete(ids[1])
    assert await spool.present([*ids, "NOSUCHID"]) == {ids[0], ids[2]}
    assert await spool.present([]) == set()


async def test_due_skips_excluded_and_respects_limit(spool: Spool) -> None:
    ids = [await spool.put(envelope(i)) for i in range(5)]
    now = time.time() + 1
    assert await spool.due(now, 2) == ids[:2]
    assert await spool.due(now, 2, exclude=ids[:2]) == ids[2:4]
    assert await spool.next_due(exclude=ids) is None


async def test_retry_flush_and_delete(spool: Spool) -> None:
    first, second = await spool.put(envelope(1)), await spool.put(envelope(2))
    far = time.time() + 3600
    for queue_id in (first, second):
        await spool.record(
            queue_id, [Update(0, "deferred", "451", far), Update(1, "deferred", "451", far)]
        )
    now = time.time()
    assert await spool.due(now, 10) == []
    assert await spool.retry(first, now)
    assert await spool.due(now, 10) == [first]
    assert await spool.flush(now) == 2
    assert sorted(await spool.due(now, 10)) == sorted([first, second])
    assert await spool.delete(first)
    assert not await spool.delete(first)
    assert not await spool.retry(first)
    assert [m.id for m in await spool.messages()] == [second]


async def test_entry_with_damaged_data_is_set_aside_not_fatal(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = await spool.put(envelope(1)), await spool.put(envelope(2))
    conn = sqlite3.connect(spool.path / DB_NAME)
    try:
        conn.execute("UPDATE messages SET data = ? WHERE id = ?", (b"garbage", bad))
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(CorruptEntry):
        await spool.load(bad)
    assert await spool.load(bad) is None
    assert [m.id for m in await spool.messages()] == [good]
    (record,) = await spool.corrupt_entries()
    assert record.id == bad
    assert "SHA-256" in record.reason
    logged = [(r.name, r.levelname) for r in caplog.records if f"id={bad}" in r.getMessage()]
    assert logged[-1] == ("sealpost.spool", "ERROR")
    assert await spool.load(good) is not None


async def test_unopenable_database_is_moved_aside_and_a_new_spool_started(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.mkdir()
    (path / DB_NAME).write_bytes(b"this is not a database" * 100)
    spool = Spool.open(path)
    try:
        assert await spool.depth() == 0
        await spool.put(envelope())
    finally:
        await spool.close()
    aside = list((path / "corrupt").iterdir())
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")


async def test_messages_survive_close_and_reopen(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "s")
    ids = await asyncio.gather(*(spool.put(envelope(i)) for i in range(10)))
    await spool.close()
    reopened = Spool.open(tmp_path / "s")
    try:
        assert sorted(m.id for m in await reopened.messages()) == sorted(ids)
    finally:
        await reopened.close()


async def test_the_mail_parameters_are_kept_with_the_message(spool: Spool) -> None:
    params = MailParams(smtputf8=True, body="8BITMIME")
    queue_id = await spool.put(
        Envelope("s@caisses.example", ["jörg@x.example"], b"x\r\n", params=params)
    )
    plain_id = await spool.put(envelope())
    loaded, plain = await spool.load(queue_id), await spool.load(plain_id)
    assert loaded is not None
    assert plain is not None
    assert loaded.params == params
    assert plain.params == MailParams(smtputf8=False, body="")


# The messages table as versions before the MAIL parameters were kept wrote it.
OLD_MESSAGES = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY, sender TEXT NOT NULL, client TEXT NOT NULL,
    received_at REAL NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    data BLOB NOT NULL
);
"""


async def test_a_spool_from_before_the_mail_parameters_is_migrated(tmp_path: Path) -> None:
    # A spool written by the old version: its messages table lacks the two columns.
    spool = Spool.open(tmp_path / "s")
    ascii_id = await spool.put(envelope(1))
    utf8_id = await spool.put(Envelope("s@caisses.example", ["jörg@x.example"], b"x\r\n"))
    await spool.close()
    conn = sqlite3.connect(tmp_path / "s" / DB_NAME)
    with conn:
        conn.execute("ALTER TABLE messages RENAME TO new_messages")
        conn.executescript(OLD_MESSAGES)
        conn.execute(
            "INSERT INTO messages SELECT id, sender, client, received_at, size, sha256, data"
            " FROM new_messages"
        )
        conn.execute("DROP TABLE new_messages")
    conn.close()

    for _ in range(2):  # the second open finds it migrated already
        spool = Spool.open(tmp_path / "s")
        try:
            old_ascii, old_utf8 = await spool.load(ascii_id), await spool.load(utf8_id)
            assert old_ascii is not None
            assert old_utf8 is not None
            assert old_ascii.params == MailParams(smtputf8=False, body="")
            # A non-ASCII address cannot have come, nor go, without SMTPUTF8.
            assert old_utf8.params == MailParams(smtputf8=True, body="")
            new_id = await spool.put(envelope(2))
            assert {m.id for m in await spool.messages()} >= {ascii_id, utf8_id, new_id}
        finally:
            await spool.close()


PUTTER = """
import asyncio, sys
from pathlib import Path
from gateway.spool import Envelope, Spool

async def main() -> None:
    spool = Spool.open(Path(sys.argv[1]))
    async def putter(n: int) -> None:
        i = 0
        while True:
            i += 1
            data = b"Subject: %d-%d\\r\\n\\r\\n" % (n, i) + b"y" * 28000
            queue_id = await spool.put(Envelope("s@c.example", ["a@x.example"], data))
            print(queue_id, flush=True)
    await asyncio.gather(*(putter(n) for n in range(20)))

asyncio.run(main())
"""


def test_every_acknowledged_message_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", PUTTER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    acknowledged: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    try:
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.decode().strip())
        proc.send_signal(signal.SIGKILL)
        # Ids printed after our last read were acknowledged too: collect them.
        acknowledged += [x.decode().strip() for x in proc.stdout.read().splitlines()]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert len(acknowledged) >= 300

    async def check() -> None:
        spool = Spool.open(path)
        try:
            for queue_id in acknowledged:
                message = await spool.load(queue_id)
                assert message is not None, queue_id
                assert len(message.data) > 28000
            assert await spool.corrupt_entries() == []
        finally:
            await spool.close()

    asyncio.run(check())


# --- the statement log's entries ride in the message's own commit -------------------------


async def test_a_logged_message_waits_for_its_checkpoint_before_delivery(spool: Spool) -> None:
    import dataclasses

    first = await spool.put(dataclasses.replace(envelope(1), log_entry=b"entry one\n"))
    second = await spool.put(dataclasses.replace(envelope(2), log_entry=b"entry two\n"))
    unlogged = await spool.put(envelope(3))
    assert await spool.due(time.time() + 1, 10) == [unlogged]
    loaded = await spool.load(first)
    assert loaded is not None
    assert {r.state for r in loaded.recipients} == {"logging"}
    entries = await spool.log_entries(10)
    assert [(e.message_id, e.entry) for e in entries] == [
        (first, b"entry one\n"),
        (second, b"entry two\n"),
    ]
    # The first entry is in a published checkpoint: its message may go, not the second.
    assert await spool.log_published(entries[0].seq, size=1) == 2  # two recipients
    assert set(await spool.due(time.time() + 1, 10)) == {first, unlogged}
    assert [e.message_id for e in await spool.log_entries(10)] == [second]
    assert await spool.log_size() == 1
    # The queue tool's flush never releases a message its log has not published.
    await spool.flush()
    assert second not in await spool.due(time.time() + 1, 10)


async def test_log_entries_survive_reopen_with_their_messages(tmp_path: Path) -> None:
    import dataclasses

    spool = Spool.open(tmp_path / "spool")
    queue_id = await spool.put(dataclasses.replace(envelope(), log_entry=b"e\n"))
    await spool.close()
    reopened = Spool.open(tmp_path / "spool")
    try:
        assert [e.message_id for e in await reopened.log_entries(10)] == [queue_id]
    finally:
        await reopened.close()


# ---------------------------------------------------------------------------- the hot path


def _damage(spool: Spool, queue_id: str) -> None:
    """Overwrites a message's data on disk, behind the spool's back."""
    conn = sqlite3.connect(spool.path / DB_NAME)
    try:
        conn.execute("UPDATE messages SET data = ? WHERE id = ?", (b"damaged", queue_id))
        conn.commit()
    finally:
        conn.close()


async def test_a_first_attempt_gets_the_committed_bytes_and_later_ones_read_the_disk(
    spool: Spool,
) -> None:
    sent = envelope(recipients=2)
    queue_id = await spool.put(sent)
    # Damage on disk is the witness of where the bytes come from.
    _damage(spool, queue_id)
    now = time.time() + 1
    first = await spool.load_due(now, 10)
    assert [m.id for m in first.messages] == [queue_id]
    assert first.messages[0].data == sent.data
    assert [r.address for r in first.messages[0].recipients] == sent.recipients
    assert spool.held_bytes == 0  # taken by the first attempt
    await spool.record(queue_id, [Update(0, "deferred", "451 later", now)])
    second = await spool.load_due(now, 10)
    assert (second.messages, second.unread) == ([], [queue_id])
    with pytest.raises(CorruptEntry):
        await spool.load(queue_id)  # what the scheduler does with an unread one


async def test_the_memory_bound_holds_and_the_oldest_go_back_to_the_disk(tmp_path: Path) -> None:
    size = len(envelope().data) + HELD_OVERHEAD
    spool = Spool.open(tmp_path / "spool", held_bytes=3 * size + 100)
    try:
        ids = [await spool.put(envelope(n)) for n in range(5)]
        assert spool.held_bytes == 3 * size
        for queue_id in ids:
            _damage(spool, queue_id)
        batch = await spool.load_due(time.time() + 1, 10)
        assert [m.id for m in batch.messages] == ids[2:]  # the three newest, from memory
        assert [m.data for m in batch.messages] == [envelope(n).data for n in range(2, 5)]
        assert batch.unread == ids[:2]  # dropped from memory, read from disk: damaged
        assert spool.held_bytes == 0
    finally:
        await spool.close()


async def test_a_message_larger_than_the_bound_is_not_held(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool", held_bytes=500)
    try:
        queue_id = await spool.put(envelope(size=1000))
        assert spool.held_bytes == 0
        batch = await spool.load_due(time.time() + 1, 10)
        assert [m.id for m in batch.messages] == [queue_id]  # read from disk, checked
    finally:
        await spool.close()


async def test_after_a_restart_the_first_attempt_reads_the_disk(tmp_path: Path) -> None:
    before = Spool.open(tmp_path / "spool")
    sent = envelope()
    queue_id = await before.put(sent)
    await before.close()
    spool = Spool.open(tmp_path / "spool")
    try:
        assert spool.held_bytes == 0
        (loaded,) = (await spool.load_due(time.time() + 1, 10)).messages
        assert loaded == await spool.load(queue_id)
        assert loaded.data == sent.data
    finally:
        await spool.close()


async def test_a_message_done_or_deleted_is_dropped_from_memory(spool: Spool) -> None:
    done = await spool.put(envelope(1, recipients=1))
    deleted = await spool.put(envelope(2, recipients=1))
    assert await spool.record(done, [Update(0, "delivered", "250 ok", time.time())])
    assert await spool.delete(deleted)
    assert spool.held_bytes == 0


async def test_load_due_takes_the_due_earliest_first_and_says_when_the_next_is_due(
    spool: Spool,
) -> None:
    now = time.time()
    ids = [await spool.put(envelope(n)) for n in range(4)]
    later = now + 600
    await spool.record(
        ids[3], [Update(0, "deferred", "451", later), Update(1, "deferred", "451", later)]
    )
    batch = await spool.load_due(now + 1, 2, exclude=[ids[0]])
    assert [m.id for m in batch.messages] == ids[1:3]
    assert batch.next_due == pytest.approx(later)
    batch = await spool.load_due(now + 1, 1)
    assert [m.id for m in batch.messages] == [ids[0]]
    assert batch.next_due is not None
    assert batch.next_due <= now + 1  # more were due than the limit let in
    assert (await spool.load_due(now + 1, 2, exclude=ids)).next_due is None


async def test_a_held_message_waiting_for_its_log_entry_is_not_due(spool: Spool) -> None:
    queue_id = await spool.put(
        Envelope("s@caisses.example", ["a@x.example"], b"x\r\n", log_entry=b"entry")
    )
    assert (await spool.load_due(time.time() + 1, 10)).messages == []
    assert await spool.log_published(1, 1) == 1
    (released,) = (await spool.load_due(time.time() + 1, 10)).messages
    assert (released.id, released.data, released.recipients[0].state) == (
        queue_id,
        b"x\r\n",
        "queued",
    )


async def test_put_logs_queued_unless_its_caller_does(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealpost.spool")
    logged = await spool.put(envelope(1))
    quiet = await spool.put(envelope(2), log_queued=False)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[0] for line in lines if f"id={logged}" in line] == ["event=queued"]
    assert not [line for line in lines if quiet in line]


addresses = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sender=addresses,
    recipients=st.lists(addresses, min_size=1, max_size=4),
    data=st.binary(max_size=5000),
    client=addresses,
    received_at=st.floats(min_value=0, max_value=4e9),
    smtputf8=st.booleans(),
    body=st.sampled_from(["", "7BIT", "8BITMIME"]),
)
def test_a_message_from_memory_equals_the_same_message_read_from_disk(
    tmp_path_factory: pytest.TempPathFactory,
    sender: str,
    recipients: list[str],
    data: bytes,
    client: str,
    received_at: float,
    smtputf8: bool,
    body: Body,
) -> None:
    sent = Envelope(
        sender, recipients, data, client, received_at, params=MailParams(smtputf8, body)
    )

    async def both() -> tuple[object, object]:
        spool = Spool.open(tmp_path_factory.mktemp("spool"))
        try:
            queue_id = await spool.put(sent)
            (held,) = (await spool.load_due(4e9 + 1, 10)).messages
            assert spool.held_bytes == 0  # so it did come from memory
            return held, await spool.load(queue_id)
        finally:
            await spool.close()

    held, from_disk = asyncio.run(both())
    assert held == from_disk


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["queued", "deferred", "delivered", "logging"]),
                st.integers(min_value=0, max_value=6),  # next attempt, in steps from now
            ),
            min_size=1,
            max_size=3,
        ),
        min_size=0,
        max_size=8,
    ),
    limit=st.integers(min_value=1, max_value=5),
    excluded=st.sets(st.integers(min_value=0, max_value=7), max_size=3),
)
def test_load_due_picks_what_due_and_next_due_pick(
    tmp_path_factory: pytest.TempPathFactory,
    schedule: list[list[tuple[str, int]]],
    limit: int,
    excluded: set[int],
) -> None:
    now = 1_000_000.0

    async def both() -> None:
        spool = Spool.open(tmp_path_factory.mktemp("spool"))
        try:
            ids = []
            for n, recipients in enumerate(schedule):
                queue_id = await spool.put(envelope(n, recipients=len(recipients), size=10))
                updates = [
                    Update(i, state, "", now + step - 3)  # type: ignore[arg-type]
                    for i, (state, step) in enumerate(recipients)
                ]
                await spool.record(queue_id, updates)
                ids.append(queue_id)
            exclude = [ids[i] for i in excluded if i < len(ids)]
            expected = await spool.due(now, limit, exclude=exclude)
            batch = await spool.load_due(now, limit, exclude=exclude)
            picked = [m.id for m in batch.messages] + batch.unread
            assert picked == expected
            assert batch.unread == []
            assert batch.next_due == await spool.next_due(exclude=exclude + expected)
        finally:
            await spool.close()

    asyncio.run(both())

"""The queue tool, run as ops would: in its own process, against the spool directory."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import queue_cli
from gateway.spool import Envelope, Spool, Update
from orgs.registry import Registry

REPO = Path(__file__).resolve().parents[2]
DATA = b"From: s@caisses.example\r\nSubject: statement 7\r\n\r\nsecret body\r\n"


def fill(path: Path) -> tuple[str, str]:
    """Two messages: one with a delivered and a deferred recipient, one just queued."""

    async def go() -> tuple[str, str]:
        spool = Spool.open(path)
        try:
            first = await spool.put(
                Envelope("s@caisses.example", ["a@x.example", "b@y.example"], DATA, "batch")
            )
            second = await spool.put(Envelope("", ["c@z.example"], DATA, "dsn"))
            await spool.record(
                first,
                [
                    Update(0, "delivered", "250 2.0.0 ok", time.time()),
                    Update(1, "deferred", "451 4.2.1 busy", time.time() + 3600),
                ],
            )
            return first, second
        finally:
            await spool.close()

    return asyncio.run(go())


def run(path: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = queue_cli.main(list(argv), path, out=out)
    return code, out.getvalue()


def due_ids(path: Path) -> list[str]:
    async def go() -> list[str]:
        spool = Spool.open(path)
        try:
            return await spool.due(time.time() + 1, 10)
        finally:
            await spool.close()

    return asyncio.run(go())


def test_list_shows_each_message_and_each_recipient_state(tmp_path: Path) -> None:
    first, second = fill(tmp_path)
    code, out = run(tmp_path, "list")
    assert code == 0
    assert out.index(first) < out.index(second)
    assert "<s@caisses.example>" in out
    assert "<>" in out
    assert "a@x.example  delivered  attempts=1  last='250 2.0.0 ok'" in out
    assert "b@y.example  deferred  attempts=1  next=" in out
    assert "last='451 4.2.1 busy'" in out
    assert "c@z.example  queued  attempts=0" in out
    assert "-- 2 message(s) in queue" in out
    assert "secret body" not in out


def test_show_prints_the_headers_but_not_the_body(tmp_path: Path) -> None:
    first, _ = fill(tmp_path)
    code, out = run(tmp_path, "show", first)
    assert code == 0
    assert "Subject: statement 7" in out
    assert "secret body" not in out
    assert run(tmp_path, "show", "NOPE") == (1, "NOPE: no such message\n")


def test_retry_and_flush_make_recipients_due_now(tmp_path: Path) -> None:
    first, second = fill(tmp_path)
    assert due_ids(tmp_path) == [second]
    assert run(tmp_path, "retry", first) == (0, f"{first}: due now\n")
    assert sorted(due_ids(tmp_path)) == sorted([first, second])
    assert run(tmp_path, "flush") == (0, "2 message(s) due now\n")
    assert run(tmp_path, "retry", "NOPE")[0] == 1


def test_delete_removes_a_message(tmp_path: Path) -> None:
    first, second = fill(tmp_path)
    assert run(tmp_path, "delete", first) == (0, f"{first}: deleted\n")
    assert run(tmp_path, "delete", first)[0] == 1
    _, out = run(tmp_path, "list")
    assert first not in out
    assert second in out


def test_list_org_shows_only_that_insurers_mailboxes(tmp_path: Path) -> None:
    first, second = fill(tmp_path / "spool")
    registry = tmp_path / "registry.sqlite"
    with Registry(registry) as opened:
        opened.add("MUTY", "Mutuelle Y")
        opened.add_mailbox("MUTY", "B@Y.example", "Décomptes")
        opened.add("MUTZ", "Mutuelle Z")
        opened.add_mailbox("MUTZ", "other@z.example", "Décomptes")
    out = io.StringIO()
    assert (
        queue_cli.main(["list", "--org", "muty"], tmp_path / "spool", out, registry=registry) == 0
    )
    listed = out.getvalue()
    assert first in listed
    assert "b@y.example  deferred  attempts=1" in listed
    assert "a@x.example" not in listed  # the same message's other recipient
    assert second not in listed
    assert listed.endswith(
        "-- 1 message(s) in queue for MUTY (Mutuelle Y, active): "
        "0 queued, 1 deferred, 0 delivered, 0 bounced\n"
    )
    out = io.StringIO()
    assert (
        queue_cli.main(["list", "--org", "MUTZ"], tmp_path / "spool", out, registry=registry) == 0
    )
    assert "-- 0 message(s) in queue for MUTZ" in out.getvalue()


def test_list_org_needs_a_known_organisation_and_a_registry(tmp_path: Path) -> None:
    fill(tmp_path / "spool")
    registry = tmp_path / "registry.sqlite"
    Registry(registry).close()
    out = io.StringIO()
    assert (
        queue_cli.main(["list", "--org", "NOPE"], tmp_path / "spool", out, registry=registry) == 1
    )
    assert "NOPE: no such organisation" in out.getvalue()
    out = io.StringIO()
    missing = tmp_path / "none.sqlite"
    assert queue_cli.main(["list", "--org", "X"], tmp_path / "spool", out, registry=missing) == 2
    assert "no registry of insurers at" in out.getvalue()
    assert not missing.exists()


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "frobnicate")[0] == 2
    assert run(tmp_path, "show")[0] == 2
    assert "usage" in capsys.readouterr().err


SCRIPT = "import sys; from pathlib import Path; from gateway import queue_cli; " \
    "sys.exit(queue_cli.main(sys.argv[2:], Path(sys.argv[1])))"  # fmt: skip


async def test_works_from_another_process_while_the_spool_is_open(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path)
    try:
        queue_id = await spool.put(Envelope("s@caisses.example", ["a@x.example"], DATA))
        await spool.record(queue_id, [Update(0, "deferred", "451 later", time.time() + 3600)])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SCRIPT, str(tmp_path), "retry", queue_id,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            stdout, _ = await proc.communicate()
        assert proc.returncode == 0
        assert stdout.decode() == f"{queue_id}: due now\n"
        assert await spool.due(time.time(), 10) == [queue_id]
        await spool.put(Envelope("s@caisses.example", ["b@x.example"], DATA))  # still writable
    finally:
        await spool.close()

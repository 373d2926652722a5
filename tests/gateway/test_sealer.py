"""The Sealer: sealing with a real key store, inline and in worker processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.seal import DocumentRules, SealError, UnsealableMessage
from gateway.sealer import Sealer
from keys import store
from keys.signing import SigningKeys, SigningMaterial
from tests.checks import REFERENCE, crlf, dkimpy_results, dns_records, openssl_verifies, root_pem
from tests.gateway.test_seal import parsed, payload, signed_pairs

DOMAIN = "caisses.example"
STATEMENT = crlf(REFERENCE.read_bytes())


@pytest.fixture(scope="module")
def key_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("keys")
    store.init_domain(base / "store", base / "public", DOMAIN)
    return base / "store"


@pytest.fixture(scope="module")
def material(key_store: Path) -> SigningMaterial:
    return SigningKeys(key_store).material(DOMAIN)


@pytest.fixture(scope="module")
def pool(key_store: Path) -> Iterator[Sealer]:
    sealer = Sealer(key_store, DocumentRules(), workers=2)
    yield sealer
    sealer.close()


def assert_sealed(data: bytes, material: SigningMaterial, tmp_path: Path) -> None:
    assert dkimpy_results(data, dns_records(material)) == [True, True]
    [(document, signature)] = signed_pairs(parsed(data))
    assert openssl_verifies(payload(signature), payload(document), root_pem(material), tmp_path)


async def test_inline_sealing_uses_the_store(
    key_store: Path, material: SigningMaterial, tmp_path: Path
) -> None:
    sealer = Sealer(key_store, DocumentRules(), workers=0)
    try:
        sealed = await sealer.seal(STATEMENT, DOMAIN)
    finally:
        sealer.close()
    assert sealed.documents == ("releve-2026-02.pdf",)
    assert_sealed(sealed.data, material, tmp_path)


async def test_workers_seal_concurrent_messages(
    pool: Sealer, material: SigningMaterial, tmp_path: Path
) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(*(pool.seal(STATEMENT, DOMAIN) for _ in range(8))), timeout=60
    )
    assert len(pool.worker_pids()) == 2
    assert all(os.getpid() != pid for pid in pool.worker_pids())
    for sealed in results:
        assert_sealed(sealed.data, material, tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
async def test_a_domain_without_keys_is_a_seal_error(
    key_store: Path, pool: Sealer, workers: int
) -> None:
    sealer = pool if workers else Sealer(key_store, DocumentRules(), workers=0)
    with pytest.raises(SealError, match=r"no signing key for other\.example"):
        await asyncio.wait_for(sealer.seal(STATEMENT, "other.example"), timeout=60)


async def test_an_unsealable_message_is_a_seal_error_from_a_worker(pool: Sealer) -> None:
    broken = STATEMENT.replace(b"JVBERi0xLjQKJeLjz9MK", b"JVBERi0xLjQKJeLjz9M!")
    # Still the message's fault once back from the worker: refused for good, not retried.
    with pytest.raises(UnsealableMessage, match="not valid base64"):
        await asyncio.wait_for(pool.seal(broken, DOMAIN), timeout=60)


async def test_a_missing_store_is_a_seal_error(tmp_path: Path) -> None:
    sealer = Sealer(tmp_path / "nowhere", DocumentRules(), workers=0)
    with pytest.raises(SealError, match="no key store"):
        await sealer.seal(STATEMENT, DOMAIN)


async def test_a_dead_worker_costs_one_message_not_the_gateway(
    key_store: Path, material: SigningMaterial, tmp_path: Path
) -> None:
    sealer = Sealer(key_store, DocumentRules(), workers=1)
    try:
        await asyncio.wait_for(sealer.seal(STATEMENT, DOMAIN), timeout=60)
        [pid] = sealer.worker_pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SealError, match="stopped unexpectedly"):
            await asyncio.wait_for(sealer.seal(STATEMENT, DOMAIN), timeout=60)
        sealed = await asyncio.wait_for(sealer.seal(STATEMENT, DOMAIN), timeout=60)
        assert_sealed(sealed.data, material, tmp_path)
        assert sealer.worker_pids() != (pid,)
    finally:
        sealer.close()


async def test_a_closed_sealer_refuses_politely(key_store: Path) -> None:
    sealer = Sealer(key_store, DocumentRules(), workers=1)
    sealer.close()
    sealer.close()
    with pytest.raises(SealError, match="shutting down"):
        await sealer.seal(STATEMENT, DOMAIN)


GATEWAY_STAND_IN = """
import sys, time
from pathlib import Path
from gateway.seal import DocumentRules
from gateway.sealer import Sealer

if __name__ == "__main__":
    sealer = Sealer(Path(sys.argv[1]), DocumentRules(), workers=2)
    while len(sealer.worker_pids()) < 2:
        time.sleep(0.05)
    print(*sealer.worker_pids(), flush=True)
    time.sleep(60)
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


async def test_workers_do_not_outlive_a_killed_gateway(key_store: Path, tmp_path: Path) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(GATEWAY_STAND_IN)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(key_store),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        workers = [int(pid) for pid in line.split()]
        assert len(workers) == 2
    finally:
        process.kill()
        await process.wait()
    for _ in range(50):  # they look for the gateway once a second
        if all(gone(pid) for pid in workers):
            break
        await asyncio.sleep(0.1)
    assert all(gone(pid) for pid in workers)


async def test_workers_follow_a_key_rotation_without_restart(tmp_path: Path) -> None:
    keys_dir, public = tmp_path / "store", tmp_path / "public"
    store.init_domain(keys_dir, public, DOMAIN)
    sealer = Sealer(keys_dir, DocumentRules(), workers=2)
    try:
        before = await asyncio.wait_for(sealer.seal(STATEMENT, DOMAIN), timeout=60)
        store.rotate(keys_dir, public, DOMAIN)
        activated = store.activate(keys_dir, public, DOMAIN, force=True).activated
        wanted = {activated.rsa.selector, activated.ed25519.selector}
        assert not wanted & selectors(before.data)
        # Workers re-read the store at most once a second; every one must switch.
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            batch = await asyncio.wait_for(
                asyncio.gather(*(sealer.seal(STATEMENT, DOMAIN) for _ in range(4))), timeout=60
            )
            if all(selectors(sealed.data) == wanted for sealed in batch):
                break
            assert asyncio.get_running_loop().time() < deadline, "workers kept the old keys"
            await asyncio.sleep(0.2)
        new_material = SigningKeys(keys_dir).material(DOMAIN)
        assert dkimpy_results(batch[0].data, dns_records(new_material)) == [True, True]
    finally:
        sealer.close()


def selectors(data: bytes) -> set[str]:
    header_block = data[: data.index(b"\r\n\r\n")]
    return {s.decode() for s in re.findall(rb"\bs=([^;\s]+);", header_block)}

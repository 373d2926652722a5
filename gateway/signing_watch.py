"""Which key generation each domain signs with, for the log and the metrics.

The sealing code (in workers, or inline) follows the key store on its own within about a
second of an activation (keys/signing.py). This watch reads the same store from the
gateway's event loop: at start and then every few seconds (only when the store's state
file has changed), it logs one line per domain whose signing generation is new, and
keeps what the metrics show: the generation and its certificate's expiry. It reads
public material only (``state.json``), never a private key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from keys import store as key_store
from keys.lifecycle import StoreState

log = logging.getLogger("sealpost.gateway.signing")

CHECK_INTERVAL = 5.0  # seconds; an activation is an operator's act, a few seconds is fine


@dataclass(frozen=True)
class Signing:
    domain: str
    generation: str
    certificate_serial: str
    certificate_expiry: dt.datetime


def active_signing(state: StoreState) -> dict[str, Signing]:
    """Each domain's active generation; a domain with none (revoked, not yet activated)
    is left out, which the metrics show as its series going away."""
    found: dict[str, Signing] = {}
    for domain in state.domains:
        generation = domain.active
        if generation is None:
            continue
        certificate = x509.load_pem_x509_certificate(generation.certificate.pem.encode("ascii"))
        found[domain.name] = Signing(
            domain.name,
            generation.id,
            generation.certificate.serial,
            certificate.not_valid_after_utc,
        )
    return found


class SigningWatch:
    def series(self) -> list[tuple[str, str, float]]:
        """(domain, generation, certificate expiry as POSIX seconds), for the metrics."""
        return [
            (s.domain, s.generation, s.certificate_expiry.timestamp())
            for _, s in sorted(self.current.items())
        ]

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.current: dict[str, Signing] = {}
        self._stamp: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Read the store if its state changed; log each domain's new generation."""
        path = key_store.state_path(self.store_dir)
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            state = key_store.load_state(self.store_dir)
        except (OSError, key_store.StoreError) as error:
            # The sealing side answers 451 for this itself; the metrics keep the last
            # known generation rather than flap while an operator repairs the store.
            log.warning("event=signing_unknown store=%s error=%s", self.store_dir, error)
            return
        found = active_signing(state)
        for name, signing in sorted(found.items()):
            previous = self.current.get(name)
            if previous is None or previous.generation != signing.generation:
                log.info(
                    "event=signing_generation domain=%s generation=%s previous=%s "
                    "certificate=%s certificate_expires=%s",
                    name,
                    signing.generation,
                    previous.generation if previous else "-",
                    signing.certificate_serial,
                    signing.certificate_expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
        for name in sorted(set(self.current) - set(found)):
            log.warning("event=signing_generation domain=%s generation=- (no active key)", name)
        self.current = found
        self._stamp = stamp

    def start(self, interval: float = CHECK_INTERVAL) -> None:
        self.check()
        self._task = asyncio.get_running_loop().create_task(
            self._run(interval), name="sealpost-signing-watch"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # a fault of ours: logged, and the watch goes on
                log.exception("event=signing_watch_failed")

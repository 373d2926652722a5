"""What to try when: picks due messages from the spool, delivers them, records outcomes.

- Each attempt covers the recipients of one message that are due; their outcomes are
  recorded per recipient. Delivered is final. A transient failure (4xx, connection,
  TLS) is retried after an exponential back-off with jitter (first ~1 min, ceiling ~1 h),
  so that a restart does not retry everything at the same instant. A permanent failure
  (5xx), or a transient one once the message has outlived its lifetime (5 days by
  default), bounces: one DSN per attempt naming only the recipients that failed, sealed
  by the injected ``seal`` callable and put back into the spool as a new message from
  the null sender. No DSN is ever sent for a message whose own sender is null.
- The DSN is committed before the failures are recorded: a crash in between repeats the
  attempt (and perhaps the DSN), it never loses it. Delivery is at-least-once.
- Waking: ``notify()`` after a put gets new mail out at once; the spool is also polled
  every ``poll_interval`` seconds so the queue tool's changes (made from another
  process) are seen. Concurrency is bounded by ``concurrency`` messages in flight.
- A destination that is down (gateway.destinations) holds its recipients without a
  connection attempt: they are deferred until after its next probe, and such a deferral
  is not counted as an attempt, so it does not stretch their back-off; the lifetime
  still ends on time (a held recipient past it bounces like any other). When the
  destination answers again, the messages held for it are made due at once.
- ``stop()`` lets in-flight attempts finish for up to ``grace`` seconds, then cancels
  them; an attempt cut short was never recorded and is simply retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.delivery import Outcome
from gateway.destinations import Destinations
from gateway.dsn import Failure, build_dsn
from gateway.mail_params import MailParams
from gateway.spool import (
    CorruptEntry,
    Envelope,
    Recipient,
    Spool,
    SpoolError,
    StoredMessage,
    Update,
)

log = logging.getLogger("sealpost.delivery")


class SealedLike(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def entry(self) -> bytes: ...


# Seals a bounce; a result with a statement-log entry (gateway.seal.Sealed) has it logged.
Seal = Callable[[bytes, str], Awaitable["bytes | SealedLike"]]
# Told, after each recorded attempt, how many recipients became delivered / deferred /
# bounced: the states as stored, which is what the metrics must count.
OnRecorded = Callable[[Mapping[str, int]], None]
# Told the same per recipient: (address, delivered | deferred | bounced), for the metrics
# per insurer.
OnRecipients = Callable[[Sequence[tuple[str, str]]], None]


class Deliverer(Protocol):
    async def deliver(
        self, sender: str, recipients: Sequence[str], data: bytes, params: MailParams
    ) -> list[Outcome]: ...


@dataclass(frozen=True)
class RetryPolicy:
    first: float = 60.0
    ceiling: float = 3600.0
    lifetime: float = 5 * 86400.0
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Wait before the next try, after ``attempts`` failed ones (1 for the first)."""
        base = min(self.ceiling, self.first * 2.0 ** max(0, attempts - 1))
        return base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        delivery: Deliverer,
        seal: Seal,
        *,
        reporting_mta: str,
        policy: RetryPolicy | None = None,
        concurrency: int = 20,
        poll_interval: float = 5.0,
        grace: float = 10.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_recorded: OnRecorded | None = None,
        on_recipients: OnRecipients | None = None,
        destinations: Destinations | None = None,
        prune_interval: float = 60.0,
    ) -> None:
        self._spool = spool
        self._delivery = delivery
        self._seal = seal
        self._mta = reporting_mta
        self._policy = policy or RetryPolicy()
        self._concurrency = concurrency
        self._poll = poll_interval
        self._grace = grace
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._on_recorded = on_recorded
        self._on_recipients = on_recipients
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # Messages whose outcome could not be recorded: left alone for a poll interval, so
        # a failing spool (disk full) does not turn into a tight redelivery loop.
        self._cooldown: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._destinations = destinations
        # How often the destinations' counts drop messages that left the spool by another
        # way than an attempt (the queue tool's delete, from another process).
        self._prune_interval = prune_interval
        self._next_prune = 0.0
        self._releasing: set[asyncio.Task[None]] = set()
        if destinations is not None:
            destinations.subscribe(self._destination_up)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="sealpost-scheduler"
            )

    def notify(self) -> None:
        """New mail (or a changed schedule): look at the spool now rather than at the poll."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            # asyncio.wait, not `await task` under suppress(CancelledError): that would
            # also swallow a cancellation of stop()'s own caller.
            await asyncio.wait([task])
        attempts = list(self._in_flight.values())
        if attempts:
            _, pending = await asyncio.wait(attempts, timeout=self._grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                log.info("event=shutdown abandoned=%d (retried on restart)", len(pending))
        for release in list(self._releasing):
            release.cancel()
        await asyncio.gather(*self._releasing, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self._start_due()
                await self._prune()
            except Exception as exc:
                log.error("event=scheduler_error error=%r", exc)
                wait = self._poll
            if wait > 0:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a
                # cancellation that lands as the wait ends, and stop() then waits forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _start_due(self) -> float:
        """Starts an attempt for each due message there is room for; returns how long
        until the next look (an attempt that ends wakes the loop sooner)."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return self._poll
        now = self._clock()
        self._cooldown = {q: t for q, t in self._cooldown.items() if t > now}
        # One call reads the due messages whole, and when the next one is due.
        batch = await self._spool.load_due(now, free, exclude=self._busy())
        loop = asyncio.get_running_loop()
        started = [(m.id, self._attempt(m.id, m)) for m in batch.messages]
        started += [(queue_id, self._attempt(queue_id)) for queue_id in batch.unread]
        for queue_id, attempt in started:
            task = loop.create_task(attempt)
            self._in_flight[queue_id] = task
            task.add_done_callback(functools.partial(self._finished, queue_id))
        if len(self._in_flight) >= self._concurrency or batch.next_due is None:
            return self._poll
        return min(self._poll, max(0.0, batch.next_due - self._clock()))

    def _busy(self) -> set[str]:
        return set(self._in_flight) | set(self._cooldown)

    def _finished(self, queue_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(queue_id, None)
        self._wake.set()

    async def _attempt(self, queue_id: str, message: StoredMessage | None = None) -> None:
        """One attempt at ``queue_id``: ``message`` as ``Spool.load_due`` read it, or
        None to load it here (which sets a corrupt entry aside)."""
        try:
            if message is None:
                message = await self._spool.load(queue_id)
            if message is not None:
                await self.attempt(message)
        except CorruptEntry:
            pass  # set aside and logged by the spool
        except SpoolError as exc:
            log.error("event=spool_error id=%s error=%s", queue_id, exc)
            self._cooldown[queue_id] = self._clock() + self._poll
        except Exception:
            log.exception("event=attempt_failed id=%s", queue_id)
            if message is not None:
                await self._defer_all(message, "4.3.0 internal error in delivery")

    async def _defer_all(self, message: StoredMessage, reply: str) -> None:
        # Otherwise the message would stay due and be picked up again at once, forever.
        now = self._clock()
        updates = [self._deferral(r, reply, now, message) for r in message.due(now)]
        try:
            await self._spool.record(message.id, updates)
        except SpoolError:
            self._cooldown[message.id] = now + self._poll

    async def attempt(self, message: StoredMessage) -> None:
        """Deliver the due recipients of ``message`` once and record what happened."""
        due = message.due(self._clock())
        if not due:
            return
        outcomes = await self._delivery.deliver(
            message.sender, [r.address for r in due], message.data, message.params
        )
        now = self._clock()
        expired = now - message.received_at >= self._policy.lifetime
        updates: list[Update] = []
        failures: list[Failure] = []
        counts = {"delivered": 0, "deferred": 0, "bounced": 0}
        for rcpt, outcome in zip(due, outcomes, strict=True):
            update = self._update(rcpt, outcome, now, message, expired)
            updates.append(update)
            # A recipient held for a failing destination was not tried: counting it at
            # every probe interval would make the deferral rate say nothing.
            if update.attempted:
                counts[update.state] += 1
            if update.state == "bounced":
                failures.append(Failure(rcpt.address, outcome.reply, expired=expired))
        if failures and message.sender:
            try:
                await self._send_dsn(message, failures)
            except Exception as exc:
                # No bounce without its DSN: keep those recipients for a later attempt.
                log.error("event=dsn_failed id=%s error=%s", message.id, exc)
                bounced = {u.idx for u in updates if u.state == "bounced"}
                updates = [
                    self._deferral(r, f"4.3.0 DSN not sent ({exc}); last: {u.reply}", now, message)
                    if u.idx in bounced
                    else u
                    for r, u in zip(due, updates, strict=True)
                ]
                counts["deferred"] += counts["bounced"]
                counts["bounced"] = 0
        done = await self._spool.record(message.id, updates)
        self._track(message, outcomes, updates)
        if self._on_recorded is not None:
            self._on_recorded(counts)
        if self._on_recipients is not None:
            self._on_recipients([(r.address, u.state) for r, u in zip(due, updates, strict=True)])
        log.info(
            "event=attempt id=%s nrcpt=%d delivered=%d deferred=%d bounced=%d done=%s"
            " reply=%s",
            message.id, len(due), counts["delivered"], counts["deferred"], counts["bounced"],
            done, _last_failure(outcomes),
        )  # fmt: skip

    def _update(
        self, rcpt: Recipient, outcome: Outcome, now: float, message: StoredMessage, expired: bool
    ) -> Update:
        if outcome.status == "delivered":
            return Update(rcpt.idx, "delivered", outcome.reply, now)
        if outcome.status == "permanent" or expired:
            return Update(rcpt.idx, "bounced", outcome.reply, now)
        if outcome.hold is not None:
            deadline = message.received_at + self._policy.lifetime
            at = min(outcome.hold.until, deadline)
            return Update(rcpt.idx, "deferred", outcome.reply, at, outcome.hold.attempted)
        return self._deferral(rcpt, outcome.reply, now, message)

    def _deferral(self, rcpt: Recipient, reply: str, now: float, message: StoredMessage) -> Update:
        at = now + self._policy.delay(rcpt.attempts + 1, self._rng)
        deadline = message.received_at + self._policy.lifetime
        if now < deadline:
            at = min(at, deadline)  # the last try falls on the deadline, not up to 1 h after
        return Update(rcpt.idx, "deferred", reply, at)

    # -- destinations ---------------------------------------------------------------

    def _track(
        self, message: StoredMessage, outcomes: Sequence[Outcome], updates: Sequence[Update]
    ) -> None:
        """Tell the destination cache which destinations this message still waits for."""
        if self._destinations is None:
            return
        deferred: dict[str, bool] = {}
        held: dict[str, bool] = {}
        for outcome, update in zip(outcomes, updates, strict=True):
            if outcome.destination:
                d = outcome.destination
                deferred[d] = deferred.get(d, False) or update.state == "deferred"
                held[d] = held.get(d, False) or outcome.hold is not None
        # Held for a destination that answered while this attempt was being recorded.
        late = False
        for d in deferred:
            late |= self._destinations.recorded(
                message.id, message.received_at, d, deferred=deferred[d], held=held[d]
            )
        if late:
            self._release([message.id])

    async def _prune(self) -> None:
        now = self._clock()
        if self._destinations is None or now < self._next_prune:
            return
        self._next_prune = now + self._prune_interval
        tracked = self._destinations.tracked() - set(self._in_flight)
        if tracked:
            for gone in tracked - await self._spool.present(tracked):
                self._destinations.forget_message(gone)

    def _destination_up(self, destination: str, queue_ids: list[str]) -> None:
        log.info("event=destination_released destination=%s messages=%d",
                 destination, len(queue_ids))  # fmt: skip
        if queue_ids:
            self._release(queue_ids)

    def _release(self, queue_ids: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._make_due(queue_ids))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _make_due(self, queue_ids: list[str]) -> None:
        for queue_id in dict.fromkeys(queue_ids):
            try:
                found = await self._spool.retry(queue_id, self._clock())
            except SpoolError as exc:
                log.error("event=spool_error id=%s error=%s", queue_id, exc)
                continue  # it stays due after the probe time it was given
            if not found and self._destinations is not None:
                self._destinations.forget_message(queue_id)
        self.notify()

    async def _send_dsn(self, message: StoredMessage, failures: list[Failure]) -> None:
        domain = message.sender.rpartition("@")[2] or self._mta
        raw = build_dsn(
            original=message.data,
            sender=message.sender,
            failures=failures,
            reporting_mta=self._mta,
            mailer_domain=domain,
            queue_id=message.id,
            arrival=datetime.fromtimestamp(message.received_at, UTC),
            international=message.params.smtputf8,
        )
        sealed = await self._seal(raw, domain)
        data, entry = (sealed, None) if isinstance(sealed, bytes) else (sealed.data, sealed.entry)
        params = MailParams(message.params.smtputf8, "" if data.isascii() else "8BITMIME")
        dsn_id = await self._spool.put(
            Envelope("", [message.sender], data, "dsn", log_entry=entry or None, params=params)
        )
        log.info(
            "event=dsn id=%s dsn_id=%s nrcpt=%d", message.id, dsn_id, len(failures)
        )  # fmt: skip
        self.notify()


def _last_failure(outcomes: Sequence[Outcome]) -> str:
    failed = [o.reply for o in outcomes if o.status != "delivered"]
    return repr(failed[-1][:200]) if failed else "-"

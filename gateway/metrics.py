"""Prometheus metrics in the text exposition format, served by a tiny asyncio HTTP responder.

Counters are plain integers touched from the event loop only, so no locks. The queue
depth is read from the spool when scraped rather than tracked, so it is never wrong
after a restart. The per-destination gauges come from the dead-destination cache
(gateway.destinations), labelled by next hop only: never a recipient, and only the
destinations that are failing or have deferred mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from gateway.destinations import DestinationView

log = logging.getLogger("sealpost.gateway.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Sealing takes a few milliseconds; the upper buckets catch a starved process pool.
SIGNING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_TIMEOUT = 5.0
_MAX_REQUEST = 8192


class Counter:
    def __init__(self, name: str, help_text: str, label: str | None = None) -> None:
        self.name = name
        self.help_text = help_text
        self.label = label
        self._values: dict[str, int] = {} if label else {"": 0}

    def inc(self, label_value: str = "", amount: int = 1) -> None:
        self._values[label_value] = self._values.get(label_value, 0) + amount

    def value(self, label_value: str = "") -> int:
        return self._values.get(label_value, 0)

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help_text}"
        yield f"# TYPE {self.name} counter"
        for label_value, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.label, label_value)} {value}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.help_text = help_text
        self.buckets = buckets
        self._counts = [0] * len(buckets)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self._counts[i] += 1

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help_text}"
        yield f"# TYPE {self.name} histogram"
        for bound, count in zip(self.buckets, self._counts, strict=True):
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {count}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_number(self.total)}"
        yield f"{self.name}_count {self.count}"


class LabelledCounter:
    """A counter with several labels, e.g. ``{policy="dane",result="ok"}``."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help_text = help_text
        self.labels = labels
        self._values: dict[tuple[str, ...], int] = {}

    def inc(self, *label_values: str) -> None:
        assert len(label_values) == len(self.labels)
        self._values[label_values] = self._values.get(label_values, 0) + 1

    def value(self, *label_values: str) -> int:
        return self._values.get(label_values, 0)

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help_text}"
        yield f"# TYPE {self.name} counter"
        for values, count in sorted(self._values.items()):
            pairs = ",".join(
                _labels(label, value)[1:-1]
                for label, value in zip(self.labels, values, strict=True)
            )
            yield f"{self.name}{{{pairs}}} {count}"


class Metrics:
    def __init__(self) -> None:
        self.received = Counter(
            "sealpost_messages_received_total", "Messages accepted and queued (250 sent)."
        )
        self.rejected = Counter(
            "sealpost_messages_rejected_total", "Messages or commands refused, by reason.", "reason"
        )
        self.sealed = Counter("sealpost_messages_sealed_total", "Messages sealed (DKIM + CMS).")
        self.documents = Counter(
            "sealpost_documents_sealed_total", "Statement documents given a CMS signature."
        )
        self.delivered = Counter(
            "sealpost_recipients_delivered_total", "Recipients delivered successfully."
        )
        self.deferred = Counter(
            "sealpost_recipients_deferred_total", "Delivery attempts deferred for a retry."
        )
        self.bounced = Counter(
            "sealpost_recipients_bounced_total", "Recipients given up on (a DSN was sent)."
        )
        # Per insurer (orgs/): a full or unreachable insurer mailbox is what the fund's staff
        # must see first. Labelled by organisation code, so bounded by the registry.
        self.org_delivered = Counter(
            "sealpost_org_recipients_delivered_total",
            "Registered insurer mailboxes delivered successfully, by organisation.",
            "org",
        )
        self.org_deferred = Counter(
            "sealpost_org_recipients_deferred_total",
            "Delivery attempts to registered insurer mailboxes deferred, by organisation.",
            "org",
        )
        self.org_bounced = Counter(
            "sealpost_org_recipients_bounced_total",
            "Registered insurer mailboxes given up on (a DSN was sent), by organisation.",
            "org",
        )
        self.org_warnings = Counter(
            "sealpost_org_policy_warnings_total",
            "Mail delivered under orgs.unregistered = warn that refuse would have refused, "
            "by rule.",
            "rule",
        )
        self.signing_seconds = Histogram(
            "sealpost_signing_seconds", "Time to seal one message.", SIGNING_BUCKETS
        )
        self.mta_sts_fetches = Counter(
            "sealpost_mta_sts_fetches_total", "MTA-STS policy fetches, by result.", "result"
        )
        self.tls_policy = LabelledCounter(
            "sealpost_tls_policy_total",
            "Outcomes of MX hosts' DANE and MTA-STS requirements, by policy and result.",
            ("policy", "result"),
        )
        # Set by the wiring once the spool is open.
        self.queue_depth: Callable[[], Awaitable[int]] | None = None
        # Set by the wiring: (domain, generation, certificate expiry in POSIX seconds) of
        # each domain's signing generation (gateway/signing_watch.py).
        self.signing: Callable[[], Iterable[tuple[str, str, float]]] | None = None
        self.destinations: Callable[[], Sequence[DestinationView]] | None = None

    async def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.received,
            self.rejected,
            self.sealed,
            self.documents,
            self.delivered,
            self.deferred,
            self.bounced,
            self.org_delivered,
            self.org_deferred,
            self.org_bounced,
            self.org_warnings,
            self.signing_seconds,
            self.mta_sts_fetches,
            self.tls_policy,
        ):
            lines.extend(metric.lines())
        if self.queue_depth is not None:
            depth = await self.queue_depth()
            lines += [
                "# HELP sealpost_queue_depth Messages in the spool with recipients to deliver.",
                "# TYPE sealpost_queue_depth gauge",
                f"sealpost_queue_depth {depth}",
            ]
        if self.signing is not None:
            lines += _signing_lines(list(self.signing()))
        if self.destinations is not None:
            lines.extend(destination_lines(self.destinations(), time.time()))
        return "\n".join(lines) + "\n"


def _signing_lines(series: list[tuple[str, str, float]]) -> list[str]:
    lines = [
        "# HELP sealpost_signing_generation The key generation each domain signs with (1).",
        "# TYPE sealpost_signing_generation gauge",
    ]
    lines += [
        f"sealpost_signing_generation{_two_labels(domain, generation)} 1"
        for domain, generation, _ in series
    ]
    lines += [
        "# HELP sealpost_signing_certificate_expiry_timestamp_seconds When the signing "
        "certificate of each domain's generation expires (Unix time).",
        "# TYPE sealpost_signing_certificate_expiry_timestamp_seconds gauge",
    ]
    lines += [
        f"sealpost_signing_certificate_expiry_timestamp_seconds"
        f"{_two_labels(domain, generation)} {_number(expiry)}"
        for domain, generation, expiry in series
    ]
    return lines


def _two_labels(domain: str, generation: str) -> str:
    return _labels("domain", domain)[:-1] + "," + _labels("generation", generation)[1:]


def destination_lines(views: Sequence[DestinationView], now: float) -> Iterable[str]:
    gauges: tuple[tuple[str, str, Callable[[DestinationView], float | None]], ...] = (
        (
            "sealpost_destination_up",
            "1 while the next hop answers, 0 while it fails at the connection level"
            " (one probe at a time, the rest of its queue waits).",
            lambda v: 1.0 if v.state == "up" else 0.0,
        ),
        (
            "sealpost_destination_failing_since_timestamp_seconds",
            "When the next hop started failing (Unix time).",
            lambda v: v.failing_since,
        ),
        (
            "sealpost_destination_consecutive_failures",
            "Connection-level failures of the next hop since it last answered.",
            lambda v: float(v.failures),
        ),
        (
            "sealpost_destination_deferred_messages",
            "Messages deferred for the next hop.",
            lambda v: float(v.deferred),
        ),
        (
            "sealpost_destination_oldest_deferred_age_seconds",
            "Age of the oldest message deferred for the next hop.",
            lambda v: None if v.oldest_received_at is None else now - v.oldest_received_at,
        ),
    )
    for name, help_text, value_of in gauges:
        yield f"# HELP {name} {help_text}"
        yield f"# TYPE {name} gauge"
        for view in views:
            value = value_of(view)
            if value is not None:
                yield f"{name}{_labels('destination', view.destination)} {_number(value)}"


def _labels(label: str | None, value: str) -> str:
    if not label:
        return ""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'{{{label}="{escaped}"}}'


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value))


async def serve(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Answer ``GET /metrics``; everything else gets a 404 or 405."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                status, body = await _answer(metrics, head)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
                    + body
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(respond, host, port, limit=_MAX_REQUEST)


async def _answer(metrics: Metrics, head: bytes) -> tuple[str, bytes]:
    method, _, rest = head.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if path != b"/metrics":
        return "404 Not Found", b"not found; try /metrics\n"
    if method != b"GET":
        return "405 Method Not Allowed", b"GET only\n"
    try:
        text = await metrics.render()
    except Exception:
        log.exception("metrics: rendering failed")
        return "500 Internal Server Error", b"metrics unavailable\n"
    return "200 OK", text.encode("utf-8")

"""Prometheus metrics, summed over every gunicorn worker (prometheus_client's multiprocess mode).

The metrics are made on first use, in the worker (never at import time): in
multiprocess mode their values live in files under ``PROMETHEUS_MULTIPROC_DIR``,
which gunicorn's configuration sets up before any worker starts and cleans when a
worker dies. Without that directory (``bridge serve``, tests) they live in this
process's registry. Ledger rows are read at scrape time, cached for a few seconds; they
describe the whole database, so every instance sharing it reports the same figures, under
the same ``ledger`` label: a query takes ``max by (ledger, ...)`` of them, never a sum over
instances. A scrape while the ledger cannot be read still serves every counter: the ledger
gauges are left out and ``bridge_ledger_up`` says 0.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROWS_CACHE_SECONDS = 5.0
# Dub answers in tens of milliseconds; its timeouts are seconds.
DUB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Segment gives up after 5 s; the bridge answers within BRIDGE_DEADLINE_SECONDS (4 s).
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0)
log = logging.getLogger("bridge.core.metrics")


@dataclass(frozen=True)
class Metrics:
    events: Counter
    dub_requests: Counter
    dub_seconds: Histogram
    retries: Counter
    rate_limit_waits: Counter
    webhook_requests: Counter
    webhook_seconds: Histogram
    reloads: Counter
    mappings_info: Gauge
    mappings_degraded: Gauge
    dub_source: Counter
    queued: Counter
    outbox_sent: Counter


_made: Metrics | None = None
_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's metrics, made on first use."""
    global _made
    if _made is None:
        with _lock:
            if _made is None:
                _made = Metrics(
                    Counter(
                        "bridge_events_total",
                        "Results per (event, mapping), by mapping and final outcome.",
                        ["mapping", "outcome"],
                    ),
                    Counter(
                        "bridge_dub_requests_total",
                        "Calls to Dub, by endpoint and HTTP status (or the network failure).",
                        ["endpoint", "status"],
                    ),
                    Histogram(
                        "bridge_dub_request_seconds",
                        "How long Dub took to answer a call, by endpoint.",
                        ["endpoint"],
                        buckets=DUB_BUCKETS,
                    ),
                    Counter("bridge_retries_total", "Calls to Dub made again after a failure."),
                    Counter(
                        "bridge_rate_limit_waits_total",
                        "Calls that waited for, or were refused by, the shared Dub rate limit.",
                    ),
                    Counter(
                        "bridge_webhook_requests_total",
                        "Requests to POST /segment, by the status answered (and, for a 503,"
                        " the reason).",
                        ["status", "reason"],
                    ),
                    Histogram(
                        "bridge_webhook_request_seconds",
                        "How long POST /segment took to answer, from the request to its answer.",
                        buckets=WEBHOOK_BUCKETS,
                    ),
                    Counter(
                        "bridge_mappings_reloads_total",
                        "Mapping reloads, by result (loaded, rejected).",
                        ["result"],
                    ),
                    Gauge(
                        "bridge_mappings_info",
                        "1 for the mapping version each worker runs (label pid in multiprocess).",
                        ["version"],
                        multiprocess_mode="liveall",
                    ),
                    Gauge(
                        "bridge_mappings_degraded",
                        "1 while a worker runs a fallback mapping set because its source could "
                        "not be loaded, by cause (files_rejected, published_unloadable); the "
                        "reason is on /healthz and /readyz (label pid in multiprocess).",
                        ["cause"],
                        multiprocess_mode="liveall",
                    ),
                    Counter(
                        "bridge_dub_source_events_total",
                        "Events of Dub's own Segment source, skipped so no conversion is tracked"
                        " twice (none when BRIDGE_ACCEPT_DUB_SOURCE=1).",
                    ),
                    Counter(
                        "bridge_queued_total",
                        "Events given to the outbox's queue because Dub's rate limit could not"
                        " serve them within the request's time budget.",
                    ),
                    Counter(
                        "bridge_outbox_sent_total",
                        "Calls to Dub made by the outbox's senders, by outcome: its rate is"
                        " the queue's send rate.",
                        ["outcome"],
                    ),
                )
    return _made


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}
MAX_CHILDREN = 10_000  # label values come from the configuration; this bounds a surprise


def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: labels() checks and locks on every call,
    and the events counter is counted once per event and mapping."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = metric.labels(*values)
        if len(_children) < MAX_CHILDREN:
            _children[key] = child
    return child


def set_mapping_version(version: str, previous: str | None) -> None:
    info = metrics().mappings_info
    if previous is not None and previous != version:
        info.labels(previous).set(0)
    info.labels(version).set(1)


class LedgerRows(Collector):
    """``bridge_ledger_rows{ledger,state}`` and the age of the oldest unsettled row, read from
    the ledger at scrape time and cached, so scrapes stay cheap; ``bridge_ledger_up`` says
    whether that read worked. A failed read is cached as long, so an outage does not make
    every scrape wait on the database."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        oldest: Callable[[], float | None],
        now: Callable[[], float] = time.time,
        *,
        ledger: str = "",
        queue: Callable[[], tuple[int, float | None, int]] | None = None,
    ):
        self.counts = counts
        self.oldest = oldest
        self.queue = queue
        self.now = now
        self.ledger = ledger
        self._cached: _Read | None = None
        self._lock = threading.Lock()

    def _read(self) -> _Read:
        with self._lock:
            if self._cached is None or self.now() - self._cached[0] > ROWS_CACHE_SECONDS:
                try:
                    queue = self.queue() if self.queue is not None else None
                    read = _Read(self.now(), self.counts(), self.oldest(), queue)
                except Exception as exc:  # the counters are served whatever the ledger does
                    log.warning(
                        "ledger rows not read for /metrics",
                        extra={"ledger": self.ledger, "error": _why(exc)},
                    )
                    read = _Read(self.now(), None, None, None)
                self._cached = read
            return self._cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        _, counts, oldest, queue = self._read()
        up = GaugeMetricFamily(
            "bridge_ledger_up",
            "1 when this process read the ledger's rows for this scrape, else 0 (then the"
            " ledger gauges are left out).",
            labels=["ledger"],
        )
        up.add_metric([self.ledger], 0.0 if counts is None else 1.0)
        yield up
        if counts is None:
            return
        rows = GaugeMetricFamily(
            "bridge_ledger_rows",
            "Ledger rows by state (read every few seconds); the whole database's, the same from"
            " every instance: take max by (ledger, state), never a sum.",
            labels=["ledger", "state"],
        )
        for state, count in sorted(counts.items()):
            rows.add_metric([self.ledger, state], count)
        yield rows
        age = GaugeMetricFamily(
            "bridge_ledger_oldest_unsettled_seconds",
            "Age of the oldest row still pending or in flight (0 when none); the whole database's.",
            labels=["ledger"],
        )
        age.add_metric([self.ledger], 0.0 if oldest is None else max(0.0, self.now() - oldest))
        yield age
        if queue is None:
            return
        depth, first, sent = queue
        queued = GaugeMetricFamily(
            "bridge_outbox_queue_depth",
            "Rows waiting in the outbox's queue (Dub's rate limit was full); the whole database's.",
            labels=["ledger"],
        )
        queued.add_metric([self.ledger], depth)
        yield queued
        waited = GaugeMetricFamily(
            "bridge_outbox_queue_oldest_seconds",
            "How long the oldest row of the outbox's queue has waited (0 when none).",
            labels=["ledger"],
        )
        waited.add_metric([self.ledger], 0.0 if first is None else max(0.0, self.now() - first))
        yield waited
        rate = GaugeMetricFamily(
            "bridge_outbox_sent_last_minute",
            "Queued rows settled in the last minute, by every instance (the queue's send rate);"
            " the whole database's.",
            labels=["ledger"],
        )
        rate.add_metric([self.ledger], sent)
        yield rate


class _Read(NamedTuple):
    at: float
    counts: dict[str, int] | None
    oldest: float | None
    queue: tuple[int, float | None, int] | None


def _why(exc: Exception) -> str:
    """A ledger error's own message (it never holds a secret); else only the error's kind."""
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else type(exc).__name__


def exposition(extra: Collector | None = None) -> tuple[bytes, str]:
    """The text a scrape gets: every worker's figures, and the ledger's."""
    if os.environ.get(MULTIPROC_ENV):
        registry: Any = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    if extra is not None:
        registry.register(extra)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward(Collector):
    """This process's default registry, inside a registry of one scrape."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()

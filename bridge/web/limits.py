"""What a worker may hold, per process: its connection and buffered-byte caps, the file
descriptors the connection cap needs, and the metrics that show the most it has held.

Standard library only at import: gunicorn's master imports this through the worker class,
before the metrics directory that prometheus_client reads once is set up.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FD_SPARE = 64  # descriptors beside client sockets: listeners, the ledger, Dub, logs, metrics


@dataclass
class Bounds:
    """What a worker holds, against its caps; the peaks are exported as metrics."""

    max_connections: int = 1000
    max_buffered: int = 32 * 1024 * 1024
    buffered: int = 0  # bytes read and not yet answered: being read, or handed to a thread
    peak_buffered: int = 0
    peak_connections: int = 0
    gauges: Any = None  # (buffered peak, connections peak, shed counter), made in the worker

    def note(self, connections: int) -> None:
        if self.buffered > self.peak_buffered:
            self.peak_buffered = self.buffered
            if self.gauges is not None:
                self.gauges[0].set(self.buffered)
        if connections > self.peak_connections:
            self.peak_connections = connections
            if self.gauges is not None:
                self.gauges[1].set(connections)

    def shed(self, reason: str) -> None:
        if self.gauges is not None:
            self.gauges[2].labels(reason).inc()


def make_gauges() -> tuple[Any, Any, Any]:
    from prometheus_client import Counter, Gauge

    return (
        Gauge("bridge_worker_buffered_bytes_peak", "Most request bytes a worker has held "
              "read and unanswered.", multiprocess_mode="livemax"),
        Gauge("bridge_worker_connections_peak", "Most connections a worker has held open.",
              multiprocess_mode="livemax"),
        Counter("bridge_worker_shed_total", "Connections answered 503 and closed to stay within "
                "a cap, or because the worker is stopping.", ["reason"]),
    )  # fmt: skip


def connection_cap(connections: int, warn: Callable[[str], Any]) -> int:
    """The connection cap the open files limit allows: the soft limit raised as far as
    needed and allowed, else the cap lowered, with a warning. Past the limit gunicorn's
    accept would raise EMFILE and end the worker."""
    wanted = connections + FD_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return connections
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft >= wanted:
        return connections
    allowed = max(1, soft - FD_SPARE)
    warn(f"BRIDGE_MAX_CONNECTIONS {connections} lowered to {allowed}: open files limit {soft}")
    return allowed

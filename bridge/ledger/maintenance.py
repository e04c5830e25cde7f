"""Ledger housekeeping off the request path: the backend's upkeep every second, a sweep hourly.

The sweep gives up on rows too old to send (dead letters) and prunes settled rows
and dead letters past their retention, a batch at a time, in one process at a
time across all instances (a cluster-wide lock). It runs in a ``Poller`` that the
wiring stops when a worker exits.
"""

from __future__ import annotations

import logging

from ..core.clock import SYSTEM, Clock
from ..core.poller import Poller
from .base import Ledger, Retention

log = logging.getLogger("bridge.ledger")

SWEEP_SECONDS = 3600.0
TICK_SECONDS = 1.0


class Maintenance:
    def __init__(self, ledger: Ledger, retention: Retention, *, clock: Clock = SYSTEM):
        self.ledger = ledger
        self.retention = retention
        self.clock = clock
        self._next_sweep = clock.monotonic()
        self.poller = Poller("ledger-maintenance", TICK_SECONDS, self.tick)

    def tick(self) -> None:
        self.ledger.maintain()
        if self.clock.monotonic() >= self._next_sweep:
            self._next_sweep = self.clock.monotonic() + SWEEP_SECONDS
            self.sweep()

    def sweep(self) -> dict[str, int]:
        with self.ledger.exclusive("housekeeping") as mine:
            if not mine:
                return {}
            counts = self.ledger.sweep(self.retention)
        if any(counts.values()):
            log.info("ledger swept", extra=counts)
        return counts

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

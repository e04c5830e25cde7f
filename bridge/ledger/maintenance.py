"""Ledger housekeeping off the request path: the backend's upkeep every second, a sweep hourly.

The sweep gives up on rows Segment stopped retrying (about four hours) and prunes
settled rows past the retention period. It runs in a ``Poller`` that the wiring
stops when a worker exits.
"""

from __future__ import annotations

import logging

from ..clock import SYSTEM, Clock
from ..poller import Poller
from .base import Ledger

log = logging.getLogger("bridge.ledger")

SEGMENT_RETRY_WINDOW = 4 * 3600.0  # Segment stops retrying after about four hours
SWEEP_SECONDS = 3600.0
TICK_SECONDS = 1.0


class Maintenance:
    def __init__(self, ledger: Ledger, *, retention_days: float, clock: Clock = SYSTEM):
        self.ledger = ledger
        self.retention_seconds = retention_days * 86400
        self.clock = clock
        self._next_sweep = clock.monotonic()
        self.poller = Poller("ledger-maintenance", TICK_SECONDS, self.tick)

    def tick(self) -> None:
        self.ledger.maintain()
        if self.clock.monotonic() >= self._next_sweep:
            self._next_sweep = self.clock.monotonic() + SWEEP_SECONDS
            counts = self.ledger.sweep(
                retention_seconds=self.retention_seconds, give_up_seconds=SEGMENT_RETRY_WINDOW
            )
            if any(counts.values()):
                log.info("ledger swept", extra=counts)

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

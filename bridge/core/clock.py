"""Time, injected: wherever the bridge reads the time or waits, it asks a ``Clock``.

Production uses ``SYSTEM``; tests pass a manual clock whose ``sleep`` moves time
forward at once, so that retries, leases, Retry-After waits and rate limits are
tested without waiting and without depending on how busy the machine is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent import futures
from typing import Any, Protocol

Futures = tuple[set["futures.Future[Any]"], set["futures.Future[Any]"]]


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (what the ledger stores)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (what budgets are measured on)."""

    def sleep(self, seconds: float) -> None:
        """Wait this long."""

    def wait(self, pending: Iterable[futures.Future[Any]], timeout: float) -> Futures:
        """Wait for the futures, ``timeout`` seconds at most: (done, not done)."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, pending: Iterable[futures.Future[Any]], timeout: float) -> Futures:
        done, not_done = futures.wait(list(pending), timeout=max(0.0, timeout))
        return set(done), set(not_done)


SYSTEM: Clock = SystemClock()

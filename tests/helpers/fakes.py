"""Test doubles the bridge accepts by injection: a manual clock."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent import futures
from typing import Any

# However long a test's budget, no future may take this long in real time: a test that
# blocks a call for ever fails instead of hanging the suite.
REAL_TIME_LIMIT = 60.0


class ManualClock:
    """A clock that moves only when told to, or when code sleeps on it (at once).

    Thread-safe: sleeps from several threads add up, so tests that depend on how
    concurrent sleeps overlap must not use it. ``wait`` waits for futures to finish
    whatever their (fake) timeout: in fake time a call never hangs, it only sleeps.
    """

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        return self.time()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            if seconds > 0:
                self._now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def wait(
        self, pending: Iterable[futures.Future[Any]], timeout: float
    ) -> tuple[set[futures.Future[Any]], set[futures.Future[Any]]]:
        done, not_done = futures.wait(list(pending), timeout=REAL_TIME_LIMIT)
        assert not not_done, "a future blocked in real time under a manual clock"
        return set(done), set()

"""Client-side rate limiting, shaped like Dub's per-key limit: a sliding one-minute window.

``SharedWindow`` keeps the window in the ledger's database, so every worker and
instance together stay under Dub's limit, and a 429 pauses them all; ``SlidingWindow``
is one process's own window, used only without a ledger (benchmarks).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from ..clock import SYSTEM, Clock
from ..ledger.base import USE_WITHIN, Ledger
from ..metrics import metrics

WINDOW = 60.0


class RateLimiter(Protocol):
    def acquire(self, deadline: float) -> float:
        """Take one slot, waiting until ``deadline`` (monotonic) at most: 0 when taken, else
        the seconds until one frees (then no call is made, and none is counted)."""

    def pause(self, seconds: float) -> None:
        """Give no slot for this long (Dub answered 429 with a Retry-After)."""


class SlidingWindow:
    """Within one process: at most ``per_minute`` slots in any ``window`` seconds."""

    def __init__(self, per_minute: int, *, window: float = WINDOW, clock: Clock = SYSTEM):
        self.per_minute = max(1, per_minute)
        self.window = window
        self.clock = clock
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, deadline: float) -> float:
        while True:
            with self._lock:
                now = self.clock.monotonic()
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                full = len(self._sent) >= self.per_minute
                if now >= self._paused_until and not full:
                    self._sent.append(now)
                    return 0.0
                free_at = max(self._paused_until, self._sent[0] + self.window if full else now)
            metrics().rate_limit_waits.inc()
            if free_at > deadline:
                return free_at - now
            self.clock.sleep(min(free_at - now, 0.5))

    def pause(self, seconds: float) -> None:
        with self._lock:
            until = self.clock.monotonic() + seconds
            self._paused_until = max(self._paused_until, until)


class SharedWindow:
    """Every process's calls with one API key, counted in the ledger's database.

    Slots are taken a few at a time (one database transaction for several calls) and
    kept here for ``USE_WITHIN`` at most; the ledger counts each slot for a minute and
    that second, so the calls of any minute never exceed the limit, whoever makes them.
    """

    def __init__(
        self,
        ledger: Ledger,
        key: str,
        per_minute: int,
        *,
        clock: Clock = SYSTEM,
        batch: int | None = None,
    ):
        self.ledger = ledger
        self.key = key  # a hash of the API key, never the key
        self.per_minute = max(1, per_minute)
        self.clock = clock
        # Few enough that no worker sits on a share the others would need.
        self.batch = batch or max(1, min(8, self.per_minute // 100))
        self._stash: deque[float] = deque()  # when each slot kept here was taken
        self._lock = threading.Lock()

    def acquire(self, deadline: float) -> float:
        while True:
            with self._lock:
                now = self.clock.monotonic()
                while self._stash and self._stash[0] < now - USE_WITHIN:
                    self._stash.popleft()  # unused in time: it lapses
                if self._stash:
                    self._stash.popleft()
                    return 0.0
            granted, wait = self.ledger.take_slots(self.key, self.per_minute, self.batch)
            if granted:
                if granted > 1:
                    with self._lock:
                        self._stash.extend([self.clock.monotonic()] * (granted - 1))
                return 0.0
            metrics().rate_limit_waits.inc()
            if self.clock.monotonic() + wait > deadline:
                return wait
            self.clock.sleep(wait)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._stash.clear()
        self.ledger.pause(self.key, self.clock.time() + seconds)

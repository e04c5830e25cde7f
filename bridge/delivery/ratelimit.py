"""Client-side rate limiting, shaped like Dub's per-key limit: a sliding one-minute window."""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from ..clock import SYSTEM, Clock


class RateLimiter(Protocol):
    def acquire(self, deadline: float) -> bool:
        """Take one slot, waiting until ``deadline`` (monotonic) at most; False if none freed."""


class SlidingWindow:
    """Within one process: at most ``per_minute`` slots in any ``window`` seconds."""

    def __init__(self, per_minute: int, *, window: float = 60.0, clock: Clock = SYSTEM):
        self.per_minute = max(1, per_minute)
        self.window = window
        self.clock = clock
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self, deadline: float) -> bool:
        while True:
            with self._lock:
                now = self.clock.monotonic()
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                if len(self._sent) < self.per_minute:
                    self._sent.append(now)
                    return True
                free_at = self._sent[0] + self.window
            if free_at > deadline:
                return False
            self.clock.sleep(min(free_at - now, 0.5))

"""When to try a call again: Retry-After in every form Dub and others send, backoff, the budget."""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass, field

MAX_RETRY_AFTER = 300.0  # seconds; a longer wait is treated as this
MIN_CALL_SECONDS = 0.25  # no point starting a call with less budget than this


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header in any form a server sends.

    Delta seconds ("120"), an HTTP date, or Dub's absolute Unix time in
    milliseconds ("1732400000000"); an absolute time in seconds is read too.
    Clamped to 0..MAX_RETRY_AFTER; None when the header is absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        wait = when.timestamp() - now
    else:
        if number != number or number in (float("inf"), float("-inf")):
            return None
        if number >= 1e11:  # milliseconds since the epoch (Dub)
            wait = number / 1000.0 - now
        elif number >= 1e9:  # seconds since the epoch
            wait = number - now
        else:
            wait = number
    return min(max(wait, 0.0), MAX_RETRY_AFTER)


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, unless the server said how long to wait."""

    base: float = 0.1
    cap: float = 2.0
    rng: random.Random = field(default_factory=random.Random)

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after the ``attempt``-th call failed."""
        if retry_after is not None:
            return retry_after
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))

    @staticmethod
    def fits(now: float, wait: float, guard: float, deadline: float) -> bool:
        """Whether waiting ``wait`` still leaves ``guard`` seconds for a call."""
        return now + wait + guard <= deadline

"""A body that holds the same event twice: it is sent once, and both copies settle as one.

Each copy is claimed like any event would be, so without this the second copy found
the first one's claim and was answered ``pending`` (503) on every retry of Segment's,
until the outbox took over hours later.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.eventlog import log_result
from ..core.outcomes import RETRY, Outcome
from ..core.results import Result


def repeats(results: Sequence[Result]) -> dict[int, int]:
    """Each ready result that repeats an earlier one (same messageId and mapping): its
    index, and the index of the first."""
    firsts: dict[tuple[str, str], int] = {}
    found: dict[int, int] = {}
    for index, result in enumerate(results):
        if result.outcome is Outcome.READY:
            first = firsts.setdefault(result.key, index)
            if first != index:
                found[index] = first
    return found


def settle(final: list[Result], copies: dict[int, int]) -> list[Result]:
    """Each copy comes to what its first came to: ``duplicate`` once that is settled,
    ``pending`` while it is not (Segment retries the body, never for the copy alone)."""
    for index, first in copies.items():
        settled = final[first].outcome not in RETRY
        outcome = Outcome.DUPLICATE if settled else Outcome.PENDING
        reason = f"the same event is earlier in this body, and {final[first].outcome}"
        final[index] = final[index].finish(outcome, reason=reason)
        log_result(final[index])
    return final

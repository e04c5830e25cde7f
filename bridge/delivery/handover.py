"""When an unsettled row stops waiting for its sender's retry and becomes the outbox's."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..core.errors import LedgerError
from ..core.outcomes import RETRY, Outcome
from ..core.results import Result
from ..ledger.base import Claim

if TYPE_CHECKING:
    from .deliverer import Deliverer

log = logging.getLogger("bridge.delivery")


def handed_to_outbox(
    deliverer: Deliverer, result: Result, claim: Claim | None, *, now: bool
) -> Result:
    """An unsettled row in the outbox's queue, or older than Segment's retry window, is the
    outbox's: no 503 for it.

    ``now``, for a sender that retries only a few times within seconds (the SDKs): any
    unsettled row is the outbox's at once, its next try due now, when the ledger takes it;
    else it stays unsettled and the request asks for a retry."""
    if result.outcome not in RETRY or claim is None:
        return result
    ledger, clock, after = deliverer.ledger, deliverer.clock, deliverer.outbox_after
    if claim.queued:
        # The queue has it whatever this request came to, at its own backoff: nothing for
        # the sender to retry, and no hand-over to move its next try.
        taken = True
    elif now and ledger is not None:
        try:
            taken = ledger.defer(*result.key, clock.time())
        except LedgerError as exc:
            log.warning("could not hand a row to the outbox", extra={"error": exc.message})
            taken = False
    else:
        taken = after is not None and 0 < claim.created_at < clock.time() - after
    if not taken:
        return result
    return result.finish(
        Outcome.QUEUED, reason=f"{result.reason}; the bridge's outbox has it from now on"
    )

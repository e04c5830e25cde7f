"""The outbox: a queue every instance sends from, at Dub's shared rate.

Two kinds of rows are its: events queued because Dub's rate limit could not serve them
within their request's budget (answered ``queued``, 200), and rows still unsettled after
``BRIDGE_OUTBOX_AFTER_HOURS`` (Segment stopped retrying). A sender runs in every instance:
it takes a few rows at a time in one statement (each row by one sender: PostgreSQL skips
the rows another sender holds, SQLite has one writer), sends each once through the shared
rate limit (a 429's Retry-After pauses every instance), and gives a row Dub failed its own
growing backoff, until housekeeping gives it up at ``BRIDGE_OUTBOX_MAX_AGE_HOURS``. A sale
is never taken while its customer's lead is unsettled. Taking is claiming: a sender killed
mid-call leaves a claim whose lease ends, and nothing is lost or sent twice; a graceful stop
finishes the calls under way and leaves the rest to the other instances.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter

from ..core.clock import SYSTEM, Clock
from ..core.metrics import labelled, metrics
from ..core.outcomes import RETRY, Outcome
from ..ledger.base import Ledger, Row
from .deliverer import Deliverer

log = logging.getLogger("bridge.outbox")

PASS_BUDGET = 10.0  # seconds per pass: how long a stop may wait for the calls under way
# The first pause after Dub failed a row, doubled per call made for it, to the cap: a
# queued row Dub failed once is tried again within seconds; a row past Segment's window,
# which had many calls already, waits up to the cap.
BACKOFF_BASE = 5.0
BACKOFF_CAP = 3600.0


class Outbox:
    def __init__(
        self,
        ledger: Ledger,
        deliverer: Deliverer,
        *,
        after_seconds: float,
        clock: Clock = SYSTEM,
        rng: random.Random | None = None,
        batch: int | None = None,
    ):
        self.ledger = ledger
        self.deliverer = deliverer
        self.after_seconds = after_seconds
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        # Rows per pass: as many as the delivery pool sends at once, so a pass is about
        # one call long and a stop waits for little.
        self.batch = batch or deliverer.concurrency
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Start no further call: the pass under way finishes its calls and gives back the
        rows it took but did not send."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def drain(self) -> Counter[str]:
        """Send passes while rows are due and calls go out; the background job's work."""
        total: Counter[str] = Counter()
        while not self.stopping:
            counts, called = self._pass()
            total += counts
            if not called:  # nothing due, or Dub's limit is full: the job's interval passes
                break
        return total

    def run_once(self) -> Counter[str]:
        """One pass: take what is due and send it; outcomes counted."""
        return self._pass()[0]

    def _pass(self) -> tuple[Counter[str], bool]:
        if self.stopping:
            return Counter(), False
        lease = PASS_BUDGET + self.deliverer.client.longest_call + 1.0
        taken = self.ledger.take(
            first_seen_before=self.clock.time() - self.after_seconds, limit=self.batch, lease=lease
        )
        if not taken:
            return Counter(), False
        results = self.deliverer.send_taken(taken, PASS_BUDGET, stopping=self._stopping.is_set)
        called = False
        for t, result in zip(taken, results, strict=True):
            if not result.attempts:
                if t.row.attempts >= self.deliverer.max_attempts:
                    # No call is left for it: out of the queue's way until housekeeping
                    # gives it up at the outbox's age.
                    self.ledger.defer(t.row.message_id, t.row.mapping, self._next_try(t.row))
                continue  # queued again, or given back: the row waits for nothing of its own
            called = True
            labelled(metrics().outbox_sent, str(result.outcome)).inc()
            unsettled = result.outcome in RETRY or result.outcome is Outcome.QUEUED
            if unsettled and result.status != 429:  # a 429 paused every instance instead
                self.ledger.defer(t.row.message_id, t.row.mapping, self._next_try(t.row))
        counts = Counter(str(r.outcome) for r in results)
        log.info("outbox pass", extra={"rows": len(taken), "outcomes": dict(counts)})
        return counts, called

    def _next_try(self, row: Row) -> float:
        pause = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(row.attempts, 12))
        return self.clock.time() + self.rng.uniform(pause / 2, pause)

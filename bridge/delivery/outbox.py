"""The outbox: what Segment stopped retrying, the bridge retries itself.

Segment retries a request for about four hours. A row still unsettled after
``BRIDGE_OUTBOX_AFTER_HOURS`` is sent again from the request body stored with its
claim, with growing pauses between tries, until housekeeping gives it up at
``BRIDGE_OUTBOX_MAX_AGE_HOURS`` (a dead letter). One process works at a time (a
cluster-wide lock); each row is claimed like any other, so a worker killed
mid-sweep leaves a claim whose lease ends, and nothing is lost or sent twice.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from ..core.clock import SYSTEM, Clock
from ..core.outcomes import RETRY, Outcome
from ..core.results import Result
from ..dub.endpoints import ENDPOINTS
from ..ledger.base import Ledger, Row
from .deliverer import Deliverer

log = logging.getLogger("bridge.outbox")

BATCH = 50  # rows per pass
PASS_BUDGET = 30.0  # seconds per pass
BACKOFF_BASE = 60.0  # the first pause; doubled per call made, up to BACKOFF_CAP
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
    ):
        self.ledger = ledger
        self.deliverer = deliverer
        self.after_seconds = after_seconds
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy

    def run_once(self) -> Counter[str]:
        """One pass: send what is due, if no other process is doing it; outcomes counted."""
        with self.ledger.exclusive("outbox") as mine:
            if not mine:
                return Counter()
            now = self.clock.time()
            rows = self.ledger.due(first_seen_before=now - self.after_seconds, limit=BATCH)
            if not rows:
                return Counter()
            # Leads before sales, so a sale finds its customer.
            rows.sort(key=lambda r: (r.action != "lead", r.created_at))
            results = self.deliverer.deliver(
                [_ready(row) for row in rows],
                PASS_BUDGET,
                {row.message_id: row.payload for row in rows if row.payload is not None},
                once=True,
            )
            for row, result in zip(rows, results, strict=True):
                if result.outcome in RETRY or result.outcome is Outcome.QUEUED:
                    self.ledger.defer(row.message_id, row.mapping, self._next_try(row))
            counts = Counter(str(r.outcome) for r in results)
            log.info("outbox pass", extra={"rows": len(rows), "outcomes": dict(counts)})
            return counts

    def _next_try(self, row: Row) -> float:
        pause = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(row.attempts, 12))
        return self.clock.time() + self.rng.uniform(pause / 2, pause)


def _ready(row: Row) -> Result:
    endpoint = ENDPOINTS[row.action or ""]
    return Result(
        message_id=row.message_id,
        event=row.event,
        mapping=row.mapping,
        action=endpoint.action,
        request_method=endpoint.method,
        request_path=endpoint.path,
        body=row.request_body,
    )

"""The in-memory ledger: the contract in plain Python, for tests and benchmarks.

One process only (each gunicorn worker would have its own), so never for a
service with several workers; ``BRIDGE_LEDGER=memory`` says so at start-up.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..clock import SYSTEM, Clock
from ..jsoncodec import loads
from ..outcomes import (
    ACTIVE,
    CLAIMABLE,
    DEAD,
    FINAL,
    RECORDABLE,
    REDRIVABLE,
    RELEASABLE,
    SWEEPABLE,
    State,
)
from .base import Claim, ClaimRequest, LeadStatus, Row, check_finish
from .codec import stored


class MemoryLedger:
    kind = "memory"
    shared_across_processes = False

    def __init__(self, *, lease_seconds: float = 30.0, clock: Clock = SYSTEM):
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._rows: dict[tuple[str, str], Row] = {}
        self._leases: dict[tuple[str, str], float] = {}
        self._tainted: set[tuple[str, str]] = set()
        self._before: dict[tuple[str, str], State] = {}  # the state before the current claim
        self._lock = threading.Lock()

    def claim_many(self, wanted: Sequence[ClaimRequest], *, redrive: bool = False) -> list[Claim]:
        with self._lock:
            return [self._claim(w, redrive) for w in wanted]

    def _claim(self, w: ClaimRequest, redrive: bool) -> Claim:
        now = self.clock.time()
        key = (w.message_id, w.mapping)
        row = self._rows.get(key)
        tainted = key in self._tainted
        if row is not None:
            expired = row.state is State.IN_FLIGHT and self._leases.get(key, 0.0) <= now
            if not (row.state in CLAIMABLE or expired or (redrive and row.state in REDRIVABLE)):
                return Claim(False, row.state, row.attempts, tainted)
        body = _roundtrip(w.body)
        self._leases[key] = now + self.lease_seconds
        self._before.pop(key, None)
        if row is not None:
            self._before[key] = row.state
        if row is None:
            self._rows[key] = Row(
                w.message_id,
                w.mapping,
                w.action,
                w.event,
                w.customer,
                State.IN_FLIGHT,
                1,
                body,
                None,
                None,
                None,
                now,
                now,
            )
            return Claim(True, None, 0, False)
        self._rows[key] = replace(
            row,
            state=State.IN_FLIGHT,
            attempts=row.attempts + 1,
            request_body=body,
            customer=w.customer,
            action=row.action or w.action,
            updated_at=now,
        )
        return Claim(True, row.state, row.attempts, tainted)

    def finish(
        self,
        message_id: str,
        mapping: str,
        state: State,
        *,
        status: int | None = None,
        error: Any = None,
        payload: Any = None,
        tainted: bool = False,
    ) -> bool:
        key = (message_id, mapping)
        state = check_finish(state)
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.state is not State.IN_FLIGHT:
                return False
            self._rows[key] = replace(
                row,
                state=state,
                status=status,
                error=_roundtrip(error),
                payload=_roundtrip(payload) if payload is not None else row.payload,
                updated_at=self.clock.time(),
            )
            self._leases.pop(key, None)
            if tainted:
                self._tainted.add(key)
            return True

    def release(self, message_id: str, mapping: str) -> bool:
        key = (message_id, mapping)
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.state is not State.IN_FLIGHT:
                return False
            before = self._before.pop(key, State.PENDING)
            self._rows[key] = replace(
                row,
                state=before if before in RELEASABLE else State.PENDING,
                attempts=row.attempts - 1,
                updated_at=self.clock.time(),
            )
            self._leases.pop(key, None)
            return True

    def record(
        self,
        message_id: str,
        mapping: str,
        state: State,
        *,
        action: str | None,
        event: str | None,
        errors: Any,
        payload: Any,
    ) -> bool:
        key = (message_id, mapping)
        now = self.clock.time()
        with self._lock:
            row = self._rows.get(key)
            if row is not None and row.state not in RECORDABLE:
                return False
            if row is None:
                row = Row(
                    message_id,
                    mapping,
                    action,
                    event,
                    None,
                    state,
                    0,
                    None,
                    None,
                    None,
                    None,
                    now,
                    now,
                )
            self._rows[key] = replace(
                row,
                state=State(state),
                error=_roundtrip(errors),
                payload=_roundtrip(payload),
                updated_at=now,
            )
            return True

    def supersede(self, message_id: str, mapping: str) -> bool:
        key = (message_id, mapping)
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.state not in DEAD:
                return False
            self._rows[key] = replace(row, state=State.SUPERSEDED, updated_at=self.clock.time())
            return True

    def lead_status(self, customer: str, within_seconds: float) -> LeadStatus | None:
        since = self.clock.time() - within_seconds
        with self._lock:
            states = {
                r.state
                for r in self._rows.values()
                if r.customer == customer and r.action == "lead" and r.updated_at > since
            }
        if states & {State.DELIVERED, State.DEDUPLICATED}:
            return LeadStatus.SETTLED
        if states & ACTIVE:
            return LeadStatus.UNSETTLED
        return None

    def get(self, message_id: str, mapping: str) -> Row | None:
        with self._lock:
            return self._rows.get((message_id, mapping))

    def dead_letters(self, *, mapping: str | None = None, since: float | None = None) -> list[Row]:
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.state in DEAD
                and (mapping is None or r.mapping == mapping)
                and (since is None or r.updated_at >= since)
            ]
        return sorted(rows, key=lambda r: (r.created_at, r.message_id))

    def counts(self) -> dict[State, int]:
        counts: dict[State, int] = {}
        with self._lock:
            for row in self._rows.values():
                counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    def sweep(self, *, retention_seconds: float, give_up_seconds: float) -> dict[str, int]:
        now = self.clock.time()
        gave_up = pruned = 0
        with self._lock:
            for key, row in list(self._rows.items()):
                leased = self._leases.get(key, 0.0) > now
                if row.state in SWEEPABLE and row.updated_at < now - give_up_seconds and not leased:
                    self._rows[key] = replace(row, state=State.GAVE_UP, updated_at=now)
                    self._leases.pop(key, None)
                    gave_up += 1
                elif row.state in FINAL and row.updated_at < now - retention_seconds:
                    del self._rows[key]
                    self._tainted.discard(key)
                    pruned += 1
        return {"gave_up": gave_up, "pruned": pruned}

    def maintain(self) -> None:
        """Nothing to maintain in memory."""

    def close(self) -> None:
        """Nothing to close."""


def _roundtrip(value: Any) -> Any:
    """Store what a database would: JSON text, read back (so NaN or sets behave alike)."""
    text = stored(value)
    return None if text is None else loads(text)

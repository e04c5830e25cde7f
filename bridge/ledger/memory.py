"""The in-memory ledger: the contract in plain Python, for tests and benchmarks.

One process only (each gunicorn worker would have its own), so never for a
service with several workers; ``BRIDGE_LEDGER=memory`` says so in the README.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..core.clock import SYSTEM, Clock
from ..core.jsoncodec import loads
from ..core.outcomes import (
    ACTIVE,
    CLAIMABLE,
    DEAD,
    FINAL,
    REDRIVABLE,
    RELEASABLE,
    SWEEPABLE,
    UNPROVEN,
    State,
    Via,
    states_before,
)
from . import migrations
from .base import (
    COUNTED_FOR,
    KEPT_ATTEMPTS,
    Activation,
    Attempt,
    Browse,
    Claim,
    ClaimRequest,
    Finish,
    LeadStatus,
    MappingSet,
    QueueStatus,
    Retention,
    Row,
    Sighting,
    Slots,
    Taken,
    check_finish,
    check_record,
    clip,
    kept,
    of_user,
    pins_invoice,
    room,
)
from .codec import stored


@dataclass
class _Extra:
    """What a row keeps besides its public fields."""

    lease_until: float = 0.0
    before: State | None = None  # the state before the current claim
    tainted: bool = False
    not_before: float = 0.0
    queued_at: float | None = None  # in the outbox's queue since


class MemoryLedger:
    kind = "memory"
    shared_across_processes = False

    def __init__(self, *, lease_seconds: float = 30.0, clock: Clock = SYSTEM):
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._rows: dict[tuple[str, str], Row] = {}
        self._extra: dict[tuple[str, str], _Extra] = {}
        self._slots: dict[str, dict[int, int]] = {}
        self._pauses: dict[str, float] = {}
        self._locks: set[str] = set()
        self._sets: dict[str, MappingSet] = {}
        self._signatures: dict[str, Sighting] = {}
        self._activations: list[Activation] = []
        self._attempts: dict[tuple[str, str], dict[int, Attempt]] = {}
        self._lock = threading.RLock()  # re-entrant: finish_many holds it around finish

    # --- claims and outcomes ----------------------------------------------------------------

    def claim_many(
        self, wanted: Sequence[ClaimRequest], *, redrive: bool = False, lease: float | None = None
    ) -> list[Claim]:
        with self._lock:
            return [self._claim(w, redrive, max(lease or 0.0, self.lease_seconds)) for w in wanted]

    def _claim(self, w: ClaimRequest, redrive: bool, lease: float) -> Claim:
        now = self.clock.time()
        key = (w.message_id, w.mapping)
        row, extra = self._rows.get(key), self._extra.setdefault(key, _Extra())
        if row is not None:
            expired = row.state is State.IN_FLIGHT and extra.lease_until <= now
            if not (row.state in CLAIMABLE or expired or (redrive and row.state in REDRIVABLE)):
                queued = extra.queued_at is not None
                return Claim(
                    False, row.state, row.attempts, extra.tainted, row.created_at, queued=queued
                )
        body = _roundtrip(w.body)
        extra.lease_until = now + lease
        extra.before = None if row is None else row.state
        if row is None:
            self._rows[key] = Row(w.message_id, w.mapping, w.action, w.event, w.customer,
                                  State.IN_FLIGHT, 0, body, None, None, None, now, now,
                                  w.source)  # fmt: skip
            return Claim(True, None, 0, False, now, body)
        if row.state in UNPROVEN:
            row = replace(row, payload=None, error=None, created_at=now)
        if w.keep and row.state in ACTIVE and row.request_body is not None:
            body = row.request_body
        self._rows[key] = replace(
            row,
            state=State.IN_FLIGHT,
            request_body=body,
            customer=w.customer,
            action=row.action or w.action,
            updated_at=now,
            source=row.source or w.source,
        )
        queued = extra.queued_at is not None
        return Claim(
            True, row.state, row.attempts, extra.tainted, row.created_at, body, queued=queued
        )

    def finish(
        self,
        message_id: str,
        mapping: str,
        state: State,
        *,
        calls: int = 0,
        status: int | None = None,
        error: Any = None,
        payload: Any = None,
        tainted: bool = False,
        not_before: float | None = None,
        queued: bool = False,
        answers: Sequence[Attempt] = (),
    ) -> bool:
        key, state = (message_id, mapping), check_finish(state)
        with self._lock:
            row = self._in_flight(key)
            if row is None:
                return False
            self._rows[key] = replace(
                row,
                state=state,
                status=status,
                error=_roundtrip(error),
                payload=_roundtrip(payload) if payload is not None else row.payload,
                attempts=row.attempts + calls,
                updated_at=self.clock.time(),
            )
            extra = self._extra[key]
            extra.lease_until, extra.not_before = 0.0, not_before or 0.0
            extra.tainted = extra.tainted or tainted
            if queued and extra.queued_at is None:
                extra.queued_at = self.clock.time()
            if answers:
                after = row.attempts + calls
                calls_of = self._attempts.setdefault(key, {})
                for number, answer in kept(answers, after):
                    calls_of[number] = replace(
                        answer, answer=clip(answer.answer), mapping=mapping, number=number
                    )
                for number in [n for n in calls_of if n <= after - KEPT_ATTEMPTS]:
                    del calls_of[number]
            return True

    def finish_many(self, finishes: Sequence[Finish]) -> list[bool]:
        for f in finishes:
            check_finish(f.state)
        with self._lock:  # all at once, as one statement (the lock is re-entrant)
            return [self._finish_one(f) for f in finishes]

    def _finish_one(self, f: Finish) -> bool:
        return self.finish(
            f.message_id, f.mapping, f.state, calls=f.calls, status=f.status, error=f.error,
            payload=f.payload, tainted=f.tainted, not_before=f.not_before, queued=f.queued,
            answers=f.answers,
        )  # fmt: skip

    def defer(self, message_id: str, mapping: str, until: float) -> bool:
        key = (message_id, mapping)
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.state is not State.PENDING:
                return False
            self._extra[key].not_before = until
            return True

    def release(self, message_id: str, mapping: str, *, payload: Any = None) -> bool:
        key = (message_id, mapping)
        with self._lock:
            row = self._in_flight(key)
            if row is None:
                return False
            extra = self._extra[key]
            before = extra.before if extra.before in RELEASABLE else State.PENDING
            self._rows[key] = replace(
                row,
                state=before or State.PENDING,
                payload=_roundtrip(payload) if payload is not None else row.payload,
                updated_at=self.clock.time(),
            )
            extra.lease_until = 0.0
            return True

    def _in_flight(self, key: tuple[str, str]) -> Row | None:
        row = self._rows.get(key)
        return row if row is not None and row.state is State.IN_FLIGHT else None

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
        source: str | None = None,
    ) -> bool:
        key, now = (message_id, mapping), self.clock.time()
        with self._lock:
            row = self._rows.get(key)
            target = check_record(state)
            if row is not None and row.state not in states_before(target, Via.RECORD):
                return False
            if row is None:
                row = Row(message_id, mapping, action, event, None, State(state), 0, None, None,
                          None, None, now, now, source)  # fmt: skip
                self._extra[key] = _Extra()
            self._rows[key] = replace(
                row,
                state=State(state),
                error=_roundtrip(errors),
                payload=_roundtrip(payload),
                updated_at=now,
                source=row.source or source,
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

    def pin(
        self, message_id: str, mapping: str, body: dict[str, Any], *, invoice: str | None = None
    ) -> bool:
        key = (message_id, mapping)
        with self._lock:
            row = self._in_flight(key)
            if row is None:
                return False
            if invoice is not None and any(
                k != key and pins_invoice(r, invoice) for k, r in self._rows.items()
            ):
                return False
            self._rows[key] = replace(row, request_body=_roundtrip(body))
            return True

    def invoice_rows(self, invoice_id: str) -> list[Row]:
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.state is State.DELIVERED
                and isinstance(r.request_body, dict)
                and r.request_body.get("invoiceId") == invoice_id
            ]
        return sorted(rows, key=lambda r: (r.updated_at, r.message_id))

    def erase(self, customer: str, note: dict[str, Any]) -> int:
        changed = 0
        with self._lock:
            for key, row in list(self._rows.items()):
                if row.customer == customer or of_user(row.payload, customer):
                    self._rows[key] = replace(
                        row,
                        payload=None if row.payload is None else _roundtrip(note),
                        request_body=None if row.request_body is None else _roundtrip(note),
                    )
                    calls_of = self._attempts.get(key, {})
                    for number, answer in calls_of.items():
                        if answer.answer is not None:
                            calls_of[number] = replace(answer, answer=stored(note))
                    changed += 1
        return changed

    # --- reading ----------------------------------------------------------------------------

    def lead_status(self, customer: str, within_seconds: float) -> LeadStatus | None:
        since = self.clock.time() - within_seconds
        with self._lock:
            found = {
                r.state
                for r in self._rows.values()
                if r.customer == customer and r.action == "lead" and r.updated_at > since
            }
        if found & {State.DELIVERED, State.DEDUPLICATED}:
            return LeadStatus.SETTLED
        if found & ACTIVE:
            return LeadStatus.UNSETTLED
        return None

    def get(self, message_id: str, mapping: str) -> Row | None:
        with self._lock:
            return self._rows.get((message_id, mapping))

    def rows_of(self, message_id: str) -> list[Row]:
        return self.rows_of_many([message_id]).get(message_id, [])

    def attempts_of(self, message_id: str) -> list[Attempt]:
        with self._lock:
            found = [
                answer
                for (m, _), calls_of in self._attempts.items()
                if m == message_id
                for answer in calls_of.values()
            ]
        return sorted(found, key=lambda a: (a.mapping, a.number))

    def rows_of_many(self, message_ids: Collection[str]) -> dict[str, list[Row]]:
        wanted = set(message_ids)
        found: dict[str, list[Row]] = {}
        with self._lock:
            for (message_id, _), row in self._rows.items():
                if message_id in wanted:
                    found.setdefault(message_id, []).append(row)
        # As rows_of orders them: by mapping (only the rows found are sorted).
        return {m: sorted(rows, key=lambda r: r.mapping) for m, rows in found.items()}

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

    def counts(self, cap: int | None = None) -> dict[State, int]:
        counts: dict[State, int] = {}
        with self._lock:
            for row in self._rows.values():
                counts[row.state] = counts.get(row.state, 0) + 1
        return counts if cap is None else {s: min(n, cap) for s, n in counts.items()}

    def browse(self, query: Browse) -> list[Row]:
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if (query.states is None or r.state in query.states)
                and (query.mapping is None or r.mapping == query.mapping)
                and (query.since is None or r.created_at >= query.since)
                and (query.search is None or query.search in (r.message_id, r.customer))
                and (query.after is None or Browse.key(r) < query.after)
            ]
        rows.sort(key=Browse.key, reverse=True)
        return rows[: query.limit]

    def oldest_unsettled(self) -> float | None:
        with self._lock:
            found = [r.created_at for r in self._rows.values() if r.state in ACTIVE]
        return min(found, default=None)

    def due(self, *, first_seen_before: float, limit: int) -> list[Row]:
        now = self.clock.time()
        with self._lock:
            rows = [
                r
                for key, r in self._rows.items()
                if (r.created_at < first_seen_before or self._extra[key].not_before > 0)
                and r.request_body is not None
                and self._extra[key].not_before <= now
                and (
                    r.state is State.PENDING
                    or (r.state is State.IN_FLIGHT and self._extra[key].lease_until <= now)
                )
            ]
        return sorted(rows, key=lambda r: r.created_at)[:limit]

    def take(self, *, first_seen_before: float, limit: int, lease: float) -> list[Taken]:
        now = self.clock.time()
        with self._lock:
            unsettled_leads = {
                r.customer
                for r in self._rows.values()
                if r.action == "lead" and r.customer is not None and r.state in ACTIVE
            }
            found = [
                (key, r)
                for key, r in self._rows.items()
                if self._sendable(key, r, first_seen_before, now)
                and (r.action == "lead" or r.customer not in unsettled_leads)
            ]
            found.sort(key=lambda kr: (self._queue_order(*kr), kr[0]))
            taken = []
            for key, row in found[:limit]:
                extra = self._extra[key]
                claim = Claim(True, row.state, row.attempts, extra.tainted, row.created_at,
                              row.request_body, queued=extra.queued_at is not None)  # fmt: skip
                extra.before, extra.lease_until = row.state, now + lease
                row = replace(row, state=State.IN_FLIGHT, updated_at=now)
                self._rows[key] = row
                taken.append(Taken(row, claim))
            return taken

    def _sendable(self, key: tuple[str, str], row: Row, before: float, now: float) -> bool:
        extra = self._extra[key]
        return (
            row.request_body is not None
            and extra.not_before <= now
            and (extra.queued_at is not None or extra.not_before > 0 or row.created_at < before)
            and (
                row.state is State.PENDING
                or (row.state is State.IN_FLIGHT and extra.lease_until <= now)
            )
        )

    def _queue_order(self, key: tuple[str, str], row: Row) -> float:
        queued = self._extra[key].queued_at
        return row.created_at if queued is None else queued

    def queue_status(self) -> QueueStatus:
        since = self.clock.time() - 60.0
        with self._lock:
            queued = [
                (self._rows[key], extra.queued_at)
                for key, extra in self._extra.items()
                if extra.queued_at is not None and key in self._rows
            ]
        times = [at for row, at in queued if row.state in ACTIVE]
        sent = sum(1 for row, _ in queued if row.state in FINAL and row.updated_at >= since)
        return QueueStatus(len(times), min(times, default=None), sent)

    # --- across instances (here: threads) ----------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        with self._lock:
            taken = name not in self._locks
            self._locks.add(name)
        try:
            yield taken
        finally:
            if taken:
                with self._lock:
                    self._locks.discard(name)

    def take_slots(
        self, key: str, per_minute: int, count: int, *, per_second: int | None = None,
        spare: int = 0,
    ) -> Slots:  # fmt: skip
        now = self.clock.time()
        second = math.floor(now)
        with self._lock:
            if self._pauses.get(key, 0.0) > now:
                return Slots(0, self._pauses[key] - now, second)
            seconds = self._slots.setdefault(key, {})  # second -> slots taken
            for old in [s for s in seconds if s <= now - COUNTED_FOR or not seconds[s]]:
                del seconds[old]
            used, oldest = sum(seconds.values()), min(seconds, default=None)
            this_second = seconds.get(second, 0)
            granted, wait = room(
                now, count, per_minute, per_second, used, oldest, this_second, spare
            )
            if granted:
                seconds[second] = seconds.get(second, 0) + granted
            return Slots(granted, wait, second)

    def give_back_slots(self, key: str, second: int, count: int) -> None:
        with self._lock:
            seconds = self._slots.get(key, {})
            if seconds.get(second, 0) >= count:
                seconds[second] -= count

    def vouch(self, key: str, sighting: Sighting) -> Sighting:
        with self._lock:
            return self._signatures.setdefault(key, sighting)

    def pause(self, key: str, until: float) -> None:
        with self._lock:
            self._pauses[key] = max(self._pauses.get(key, 0.0), until)

    # --- housekeeping -----------------------------------------------------------------------

    def sweep(self, retention: Retention) -> dict[str, int]:
        now = self.clock.time()
        gave_up = pruned = 0
        with self._lock:
            for key, row in list(self._rows.items()):
                extra = self._extra[key]
                if (
                    row.state in SWEEPABLE
                    and row.created_at < now - retention.give_up_after
                    and extra.lease_until < now
                ):
                    self._rows[key] = replace(row, state=State.GAVE_UP, updated_at=now)
                    extra.lease_until = 0.0
                    gave_up += 1
                elif (row.state in FINAL and row.updated_at < now - retention.settled) or (
                    row.state in DEAD and row.updated_at < now - retention.dead
                ):
                    del self._rows[key], self._extra[key]
                    self._attempts.pop(key, None)
                    pruned += 1
            for signature, sighting in list(self._signatures.items()):
                if sighting.keep_until < now:
                    del self._signatures[signature]
        return {"gave_up": gave_up, "pruned": pruned}

    def maintain(self) -> None:
        """Nothing to maintain in memory."""

    def ping(self) -> None:
        """Memory always answers."""

    def probe_write(self) -> None:
        """Memory always takes writes."""

    # --- mapping sets -------------------------------------------------------------------------

    def keep_mapping_set(self, version: str, files: Sequence[tuple[str, str]], origin: str) -> None:
        now = self.clock.time()
        with self._lock:
            kept = self._sets.get(version)
            if kept is None:
                self._sets[version] = MappingSet(version, tuple(files), origin, now, now)
            else:
                self._sets[version] = replace(kept, loaded_at=now)

    def mapping_set(self, version: str) -> MappingSet | None:
        with self._lock:
            return self._sets.get(version)

    def last_good_mapping_set(self) -> MappingSet | None:
        ranked = self.mapping_sets(1)
        return ranked[0] if ranked else None

    def mapping_sets(self, limit: int = 20) -> list[MappingSet]:
        with self._lock:
            ranked = sorted(self._sets.values(), key=lambda s: (-s.loaded_at, s.version))
        return ranked[:limit]

    def activate_mapping_set(
        self, version: str, origin: str, *, author: str | None = None, message: str | None = None
    ) -> None:
        # The list's order is the order taken: the clock's time is only shown.
        with self._lock:
            self._activations.append(
                Activation(version, origin, self.clock.time(), author, message)
            )

    def active_mapping_set(self) -> MappingSet | None:
        with self._lock:
            if not self._activations:
                return None
            return self._sets.get(self._activations[-1].version)

    def activations(self, limit: int = 20) -> list[Activation]:
        with self._lock:
            return list(reversed(self._activations))[:limit]

    def schema(self) -> migrations.SchemaStatus:
        return migrations.status(m.version for m in migrations.MIGRATIONS)

    def upgrade(self) -> list[migrations.Migration]:
        return []

    def close(self) -> None:
        """Nothing to close."""


def _roundtrip(value: Any) -> Any:
    """Store what a database would: JSON text, read back (so NaN or sets behave alike)."""
    text = stored(value)
    return None if text is None else loads(text)

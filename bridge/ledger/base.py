"""The ledger's contract: every operation the application uses, and the values they exchange.

A backend (SQLite, PostgreSQL, in-memory) implements ``Ledger`` and passes the one
backend contract test suite. Every move of a row follows ``outcomes.TRANSITIONS``;
an operation that the table does not allow from a row's current state changes
nothing. Times are the injected clock's, never the database's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ..outcomes import FINISHED, TRANSITIONS, State, Via
from .migrations import Migration, SchemaStatus

USE_WITHIN = 1.0  # a slot taken is used within this, or not at all
HELD_SECONDS = 60.0 + USE_WITHIN  # so calls in any minute never exceed the limit
# Slots are counted per second (a window is at most 62 rows, however high the limit): a
# slot taken within second s counts until s + COUNTED_FOR, at least HELD_SECONDS after it.
COUNTED_FOR = HELD_SECONDS + 1.0


class LeadStatus(StrEnum):
    SETTLED = "settled"  # a lead of this customer reached Dub lately
    UNSETTLED = "unsettled"  # one is still pending or in flight


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A row to claim before its Dub call."""

    message_id: str
    mapping: str
    action: str
    event: str | None
    customer: str | None
    body: dict[str, Any] | None
    source: str | None = None  # the way in (a write key's name); None: Segment's webhook


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to 'may I send this now?'."""

    granted: bool
    # Granted: the state before this claim (None: new). Refused: the row's state read just
    # after the refusal (its holder may have finished in between; None: the row is gone).
    state: State | None = None
    attempts: int = 0  # Dub calls made for this row before
    tainted: bool = False  # an earlier lead attempt may have reached Dub
    created_at: float = 0.0  # when the row was first seen


@dataclass(frozen=True, slots=True)
class Row:
    message_id: str
    mapping: str
    action: str | None
    event: str | None
    customer: str | None
    state: State
    attempts: int
    request_body: dict[str, Any] | None
    payload: dict[str, Any] | None
    status: int | None
    error: Any
    created_at: float
    updated_at: float
    source: str | None = None  # the way in it first came by; None: Segment's webhook

    def to_dict(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "mapping": self.mapping,
            "action": self.action,
            "event": self.event,
            "state": self.state,
            "attempts": self.attempts,
            "status": self.status,
            "error": self.error,
            "requestBody": self.request_body,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class MappingSet:
    """A set of mapping files that loaded cleanly, kept by version."""

    version: str
    files: tuple[tuple[str, str], ...]  # (file name, its text)
    origin: str  # files | publish | rollback
    created_at: float
    loaded_at: float  # the last time an instance loaded it


@dataclass(frozen=True, slots=True)
class Activation:
    """A mapping set made the one every instance follows."""

    version: str
    origin: str  # publish | rollback
    activated_at: float


@dataclass(frozen=True, slots=True)
class Retention:
    """How long rows are kept, and how much one housekeeping statement may delete."""

    give_up_after: float  # an unsettled row this old (from its first sighting) is given up
    settled: float  # settled rows are pruned this long after they settled
    dead: float  # dead letters are pruned this long after their last change
    batch: int = 500


class Ledger(Protocol):
    """Where every (messageId, mapping) stands; safe across threads, and across processes
    and instances where ``shared_across_processes``."""

    kind: str
    shared_across_processes: bool

    # --- claims and outcomes ----------------------------------------------------------------

    def claim_many(
        self, wanted: Sequence[ClaimRequest], *, redrive: bool = False, lease: float | None = None
    ) -> list[Claim]:
        """Claim rows before their calls, in order, in one transaction; a claim holds for
        ``lease`` seconds (default: the ledger's), then another process may take it over."""

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
    ) -> bool:
        """Record what a claimed (in-flight) row came to, and the ``calls`` made for it;
        False when it was not in flight. ``not_before``: the outbox waits until then.

        ``ValueError`` for a state no call can end in (see ``outcomes.FINISHED``)."""

    def defer(self, message_id: str, mapping: str, until: float) -> bool:
        """The outbox tries this pending row again no sooner than ``until``."""

    def release(self, message_id: str, mapping: str, *, payload: Any = None) -> bool:
        """Give back a claim no call was made for: the row returns to its state before."""

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
        """Note an event that was never sent (invalid), unless the row already went further."""

    def supersede(self, message_id: str, mapping: str) -> bool:
        """A dead letter no current mapping sends: settle it, so it leaves the list."""

    # --- reading ----------------------------------------------------------------------------

    def lead_status(self, customer: str, within_seconds: float) -> LeadStatus | None: ...

    def get(self, message_id: str, mapping: str) -> Row | None: ...

    def dead_letters(
        self, *, mapping: str | None = None, since: float | None = None
    ) -> list[Row]: ...

    def counts(self) -> dict[State, int]: ...

    def oldest_unsettled(self) -> float | None:
        """When the oldest row still pending or in flight was first seen, if any."""

    def due(self, *, first_seen_before: float, limit: int) -> list[Row]:
        """Unsettled rows first seen before then (or handed to the outbox with ``defer``),
        whose backoff has passed, that nobody holds: what the outbox sends now, oldest first."""

    # --- across instances -------------------------------------------------------------------

    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """Hold the named lock across every instance for the block: True when held, False
        when another process has it (then do nothing)."""

    def take_slots(self, key: str, per_minute: int, count: int) -> tuple[int, float]:
        """Take up to ``count`` calls of ``key``'s sliding window, shared by every process:
        (how many were taken, and when none was: the seconds until one may free up, or a
        pause ends). A slot counts for ``HELD_SECONDS`` at least (a minute, and the second
        within which its taker must use it): its whole second counts ``COUNTED_FOR``."""

    def pause(self, key: str, until: float) -> None:
        """No slot of ``key`` is given before ``until`` (Dub said so, with a 429)."""

    # --- signatures -------------------------------------------------------------------------

    def vouch(self, key: str, message_ids: Sequence[str]) -> frozenset[str]:
        """The messageIds a signature vouches for: those it came with the first time it was
        seen (these, when it is new), whichever instance saw it."""

    # --- mapping sets -----------------------------------------------------------------------

    def keep_mapping_set(self, version: str, files: Sequence[tuple[str, str]], origin: str) -> None:
        """Remember a set that loaded cleanly (again): the last good one survives restarts."""

    def mapping_set(self, version: str) -> MappingSet | None: ...

    def last_good_mapping_set(self) -> MappingSet | None:
        """The set most recently loaded cleanly, by any instance."""

    def activate_mapping_set(self, version: str, origin: str) -> None:
        """Make a kept set the one every instance that follows the database uses."""

    def active_mapping_set(self) -> MappingSet | None: ...

    def activations(self, limit: int = 20) -> list[Activation]:
        """The latest activations, newest first."""

    # --- housekeeping -----------------------------------------------------------------------

    def ping(self) -> None:
        """Raise ``LedgerError`` unless the ledger answers now."""

    def sweep(self, retention: Retention) -> dict[str, int]:
        """Give up on rows too old to send; prune settled rows and dead letters past their
        retention, a batch at a time."""

    def maintain(self) -> None:
        """The backend's own upkeep, every second off the request path."""

    def schema(self) -> SchemaStatus: ...

    def upgrade(self) -> list[Migration]: ...

    def close(self) -> None: ...


def check_finish(state: State) -> State:
    """The state a finish() may set, or ``ValueError``: a bug, not a row's situation."""
    state = State(state)
    if state not in FINISHED:
        raise ValueError(f"a call cannot end in {state!r} (allowed: {sorted(FINISHED)})")
    return state


# What record() may note: events never sent, invalid or with an unproven signature.
RECORDED = frozenset(t.target for t in TRANSITIONS if t.via is Via.RECORD)


def check_record(state: State) -> State:
    state = State(state)
    if state not in RECORDED:
        raise ValueError(f"record() notes only {sorted(RECORDED)}, not {state!r}")
    return state

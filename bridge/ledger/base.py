"""The ledger's contract: every operation the application uses, and the values they exchange.

A backend (SQLite, in-memory, and a server database for several instances)
implements ``Ledger`` and passes the one backend contract test suite. Every move
of a row follows ``outcomes.TRANSITIONS``; an operation that the table does not
allow from a row's current state changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ..outcomes import FINISHED, State


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


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to 'may I send this now?'."""

    granted: bool
    state: State | None = None  # before this claim when granted (None: new); else the row's
    attempts: int = 0  # attempts before this one
    tainted: bool = False  # an earlier lead attempt may have reached Dub


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
        }


class Ledger(Protocol):
    """Where every (messageId, mapping) stands; safe across threads (and processes, where
    ``shared_across_processes``)."""

    kind: str
    shared_across_processes: bool

    def claim_many(self, wanted: Sequence[ClaimRequest], *, redrive: bool = False) -> list[Claim]:
        """Claim rows before their calls, in order, in one transaction."""

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
        """Record what a claimed (in-flight) row came to; False when it was not in flight.

        ``ValueError`` for a state no call can end in (see ``outcomes.FINISHED``)."""

    def release(self, message_id: str, mapping: str) -> bool:
        """Give back a claim no call was made for: the row returns to its state before the
        claim, and the claim does not count as an attempt."""

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
        """Note an event that was never sent (invalid), unless the row already went further."""

    def supersede(self, message_id: str, mapping: str) -> bool:
        """A dead letter no current mapping sends: settle it, so it leaves the list."""

    def lead_status(self, customer: str, within_seconds: float) -> LeadStatus | None: ...

    def get(self, message_id: str, mapping: str) -> Row | None: ...

    def dead_letters(
        self, *, mapping: str | None = None, since: float | None = None
    ) -> list[Row]: ...

    def counts(self) -> dict[State, int]: ...

    def sweep(self, *, retention_seconds: float, give_up_seconds: float) -> dict[str, int]:
        """Give up on rows Segment stopped retrying; prune settled rows past retention."""

    def maintain(self) -> None:
        """The backend's own housekeeping, called every second off the request path."""

    def close(self) -> None: ...


def check_finish(state: State) -> State:
    """The state a finish() may set, or ``ValueError``: a bug, not a row's situation."""
    state = State(state)
    if state not in FINISHED:
        raise ValueError(f"a call cannot end in {state!r} (allowed: {sorted(FINISHED)})")
    return state

"""The ledger's contract: every operation the application uses, and the values they exchange.

A backend (SQLite, PostgreSQL, in-memory) implements ``Ledger`` and passes the one
backend contract test suite. Every move of a row follows ``outcomes.TRANSITIONS``;
an operation that the table does not allow from a row's current state changes
nothing. Times are the injected clock's, never the database's own, except for mapping-set
activations: the active set is chosen by the order the database recorded them, and the time
shown is its clock's (one clock for every publisher).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from ..core.outcomes import ACTIVE, FINISHED, TRANSITIONS, State, Via
from .migrations import Migration, SchemaStatus

# A slot is taken right before its call, or a few ahead that serve only calls made within
# the second they count in; a call reaches Dub within this (the connect timeout's default)
# or never (then the slot is given back).
USE_WITHIN = 1.0
HELD_SECONDS = 60.0 + USE_WITHIN  # so calls in any minute never exceed the limit
# Slots are counted per second (a window is at most 62 rows, however high the limit): a
# slot taken within second s counts until s + COUNTED_FOR, at least HELD_SECONDS after it.
COUNTED_FOR = HELD_SECONDS + 1.0


class Slots(NamedTuple):
    """What ``take_slots`` came to."""

    granted: int  # how many were taken
    wait: float  # when none was: the seconds until one may free up, or a pause ends
    second: int  # the second they count in: what ``give_back_slots`` returns them to


def room(
    now: float,
    count: int,
    per_minute: int,
    per_second: int | None,
    used: int,
    oldest: int | None,
    this_second: int,
    spare: int = 0,
) -> tuple[int, float]:
    """The one rule of the shared window, for every backend: of ``count`` slots wanted
    ``now``, with ``used`` counting (the oldest in second ``oldest``) and ``this_second``
    of them taken in this second, how many may be taken (beyond the first, only while
    ``spare`` stay free); when none, how long until one may (the oldest second leaves the
    window, or the next second starts)."""
    free = per_minute - used
    if per_second is not None:
        free = min(free, per_second - this_second)
    if free > 0:
        return min(count, max(1, free - spare)), 0.0
    waits = [0.001]  # never a busy loop, whatever the clock says
    if used >= per_minute and oldest is not None:
        waits.append(oldest + COUNTED_FOR - now)
    if per_second is not None and this_second >= per_second:
        waits.append(math.floor(now) + 1 - now)
    return 0, max(waits)


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
    # An unsettled row keeps the body it holds (a call computed from what Dub said, pinned
    # with ``pin``, may already have reached Dub: its retries must send the same).
    keep: bool = False


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
    body: dict[str, Any] | None = None  # granted: the request body the row holds now
    # The row is in the outbox's queue: whatever this claim (or, refused, its holder)
    # comes to, the outbox sends it until it is settled, so Segment need not retry it.
    queued: bool = False


@dataclass(frozen=True, slots=True)
class Finish:
    """What a claimed (in-flight) row came to: ``Deliveries.finish``'s arguments, for
    ``finish_many``."""

    message_id: str
    mapping: str
    state: State
    calls: int = 0
    status: int | None = None
    error: Any = None
    payload: Any = None
    tainted: bool = False
    not_before: float | None = None
    queued: bool = False
    answers: Sequence[Attempt] = ()  # Dub's answer to each call made, oldest first

    @property
    def key(self) -> tuple[str, str]:
        return (self.message_id, self.mapping)


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


# What the ledger keeps of each Dub call: the last KEPT_ATTEMPTS calls of a row, each
# answer cut at ANSWER_LIMIT characters.
KEPT_ATTEMPTS = 20
ANSWER_LIMIT = 2048


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call to Dub made for a row, and Dub's answer to it."""

    at: float  # when the answer came (the injected clock's time)
    method: str
    path: str
    status: int | None  # None: no HTTP answer (the answer says why)
    answer: str | None  # Dub's answer as JSON text, at most ANSWER_LIMIT characters
    retry_after: float | None = None  # Dub's Retry-After as applied, in seconds
    # Set by the ledger when read: the row's mapping and the call's number (its first is 1).
    mapping: str = ""
    number: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "answer": self.answer,
            "retryAfter": self.retry_after,
        }


def clip(text: str | None) -> str | None:
    """An answer as kept: its first ANSWER_LIMIT characters, marked when cut."""
    if text is None or len(text) <= ANSWER_LIMIT:
        return text
    return text[: ANSWER_LIMIT - 1] + "\u2026"


def kept(answers: Sequence[Attempt], attempts_after: int) -> list[tuple[int, Attempt]]:
    """The calls of a finish to keep, numbered: the last of them is call ``attempts_after``
    of the row, and only the last KEPT_ATTEMPTS are kept."""
    last = list(answers)[-KEPT_ATTEMPTS:]
    first = attempts_after - len(last) + 1
    return [(first + i, a) for i, a in enumerate(last)]


@dataclass(frozen=True, slots=True)
class Browse:
    """Which rows the console's events list shows: newest first (by first sighting), a page
    at a time, each page starting after the last row of the one before (keyset)."""

    states: frozenset[State] | None = None  # None: every state
    mapping: str | None = None
    since: float | None = None  # first seen at or after
    search: str | None = None  # a messageId or a customer id, exactly
    after: tuple[float, str, str] | None = None  # (created_at, message_id, mapping) of the last
    limit: int = 50

    @staticmethod
    def key(row: Row) -> tuple[float, str, str]:
        """Where a page ends: what the next page's ``after`` is."""
        return (row.created_at, row.message_id, row.mapping)


@dataclass(frozen=True, slots=True)
class Taken:
    """A row the outbox took to send now: claimed (in flight) until its lease ends."""

    row: Row
    claim: Claim


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The outbox's queue: rows queued and not settled yet, the oldest one's queue time, and
    how many queued rows settled in the last minute (its send rate, every instance's)."""

    depth: int
    oldest: float | None
    sent_last_minute: int = 0


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
    activated_at: float  # the database's time (memory: the process's), for people to read
    author: str | None = None  # who (None: recorded by a release that did not ask)
    message: str | None = None  # why


@dataclass(frozen=True, slots=True)
class Sighting:
    """What a signature came with: the messageIds and content digests of its body's events;
    ``keep_until``: when no event it could carry can be accepted any more."""

    message_ids: frozenset[str]
    digests: frozenset[str]
    keep_until: float = 0.0  # 0: recorded by the release before, which kept no content

    @property
    def knows_content(self) -> bool:
        return self.keep_until > 0


# A signature is kept this long past the last moment its first event can be accepted, so
# instances whose clocks differ by less never forget it while it still matters.
VOUCH_MARGIN = 86400.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How long rows are kept, and how much one housekeeping statement may delete."""

    give_up_after: float  # an unsettled row this old (from its first sighting) is given up
    settled: float  # settled rows are pruned this long after they settled
    dead: float  # dead letters are pruned this long after their last change
    batch: int = 500
    # A signature the release before recorded (it knew no keep_until) is kept this long
    # after its first sighting (the service: BRIDGE_MAX_EVENT_AGE_DAYS and the margin).
    signatures: float = math.inf


class Deliveries(Protocol):
    """Where every (messageId, mapping) stands: claims before calls, outcomes after, and
    what the outbox, redrive and people read."""

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
        queued: bool = False,
        answers: Sequence[Attempt] = (),
    ) -> bool:
        """Record what a claimed (in-flight) row came to, and the ``calls`` made for it;
        False when it was not in flight. ``not_before``: the outbox waits until then.
        ``queued`` (with ``pending``): the outbox's queue has it from now on, in the order
        first queued. ``answers``: the calls made, oldest first (at most ``calls``), kept
        with the row in the same write: numbered on from the row's calls before, the last
        KEPT_ATTEMPTS of the row kept.

        ``ValueError`` for a state no call can end in (see ``outcomes.FINISHED``)."""

    def finish_many(self, finishes: Sequence[Finish]) -> list[bool]:
        """``finish`` for several rows (a request's outcomes, written once its calls are
        done), one statement per few hundred rows, in one transaction: all of them or,
        raising, none. For each, in order, whether it
        was in flight (a row given twice is finished by its first).

        ``ValueError`` for a state no call can end in, before anything is written."""

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

    def pin(
        self, message_id: str, mapping: str, body: dict[str, Any], *, invoice: str | None = None
    ) -> bool:
        """Keep ``body`` as the request body of a row its holder has in flight; False when
        it is not in flight. A claim with ``keep`` then leaves it as it is. With ``invoice``:
        False too while another unsettled row of that invoice holds a pinned body (one
        change of an invoice's commission at a time, across instances)."""

    def invoice_rows(self, invoice_id: str) -> list[Row]:
        """Delivered rows whose request body carries this ``invoiceId`` (the sale sent for
        an invoice, its refunds), oldest first."""

    def erase(self, customer: str, note: dict[str, Any]) -> int:
        """Replace the payload and request body of every row of this customer (its
        ``customer``, or a payload whose ``userId`` is it), and Dub's answers to its calls,
        with ``note``; ids, states and counts stay. The number of rows changed."""

    # --- reading ----------------------------------------------------------------------------

    def lead_status(self, customer: str, within_seconds: float) -> LeadStatus | None: ...

    def get(self, message_id: str, mapping: str) -> Row | None: ...

    def rows_of(self, message_id: str) -> list[Row]:
        """Every row of a messageId, whatever its mapping (redrive compares the copies)."""

    def attempts_of(self, message_id: str) -> list[Attempt]:
        """The calls kept for every row of a messageId, by mapping, then oldest first; they
        go when their row is pruned."""

    def rows_of_many(self, message_ids: Collection[str]) -> dict[str, list[Row]]:
        """``rows_of`` for many messageIds in one look-up (redrive asks per chunk): each
        messageId that has rows, with its rows by mapping."""

    def dead_letters(
        self, *, mapping: str | None = None, since: float | None = None
    ) -> list[Row]: ...

    def counts(self, cap: int | None = None) -> dict[State, int]:
        """Rows by state (states without rows left out); with ``cap``, each count stops
        there (a page's figure: its cost is bounded however big the table)."""

    def browse(self, query: Browse) -> list[Row]:
        """Rows that match, newest first (created_at, then messageId and mapping, all
        descending), at most ``query.limit``, after ``query.after`` when given."""

    def oldest_unsettled(self) -> float | None:
        """When the oldest row still pending or in flight was first seen, if any."""

    def due(self, *, first_seen_before: float, limit: int) -> list[Row]:
        """Unsettled rows first seen before then (or handed to the outbox with ``defer``),
        whose backoff has passed, that nobody holds: what the outbox sends now, oldest first."""

    def take(self, *, first_seen_before: float, limit: int, lease: float) -> list[Taken]:
        """Claim, in one statement, up to ``limit`` rows the outbox sends now: queued rows in
        the order queued, then unsettled rows first seen before ``first_seen_before``; only
        rows whose backoff has passed and that nobody holds, and never a sale whose
        customer has a lead still unsettled. Each row is taken by one caller, whichever
        instance it runs in; a claim holds for ``lease`` seconds."""

    def queue_status(self) -> QueueStatus:
        """How many rows the outbox's queue holds, and since when the oldest waits."""


class RateWindow(Protocol):
    """Dub's per-key rate limit, one window shared by every process and instance."""

    def take_slots(
        self, key: str, per_minute: int, count: int, *, per_second: int | None = None,
        spare: int = 0,
    ) -> Slots:  # fmt: skip
        """Take up to ``count`` calls of ``key``'s sliding window, shared by every process,
        and at most ``per_second`` in this second of the clock, when given; beyond the
        first, only as many as leave ``spare`` of them free (``room``). A slot counts
        for ``HELD_SECONDS`` at least (a minute, and the time its call may take to reach
        Dub): its whole second counts ``COUNTED_FOR``."""

    def give_back_slots(self, key: str, second: int, count: int) -> None:
        """Slots taken in ``second`` whose calls were not made: they no longer count."""

    def pause(self, key: str, until: float) -> None:
        """No slot of ``key`` is given before ``until`` (Dub said so, with a 429)."""


class Signatures(Protocol):
    """What each batch signature vouched for when any instance first saw it."""

    def vouch(self, key: str, sighting: Sighting) -> Sighting:
        """What a signature vouches for: what it came with the first time any instance saw
        it (this sighting, when it is new). A signature first seen by the release before
        (which kept messageIds only) vouches for no content: ``digests`` is empty."""


class MappingSets(Protocol):
    """Mapping sets kept by version: the last good one, and the one published to all."""

    def keep_mapping_set(self, version: str, files: Sequence[tuple[str, str]], origin: str) -> None:
        """Remember a set that loaded cleanly (again): the last good one survives restarts."""

    def mapping_set(self, version: str) -> MappingSet | None: ...

    def last_good_mapping_set(self) -> MappingSet | None:
        """The set most recently loaded cleanly, by any instance."""

    def mapping_sets(self, limit: int = 20) -> list[MappingSet]:
        """The kept sets, the most recently loaded first (a release that cannot load the
        newest falls back to the next)."""

    def activate_mapping_set(
        self, version: str, origin: str, *, author: str | None = None, message: str | None = None
    ) -> None:
        """Make a kept set the one every instance that follows the database uses: the latest
        activation in the order the ledger took them, whatever any client's clock says."""

    def active_mapping_set(self) -> MappingSet | None: ...

    def activations(self, limit: int = 20) -> list[Activation]:
        """The latest activations, newest first."""


class Ledger(Deliveries, RateWindow, Signatures, MappingSets, Protocol):
    """The four roles in one store; safe across threads, and across processes and
    instances where ``shared_across_processes``."""

    kind: str
    shared_across_processes: bool

    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """Hold the named lock across every instance for the block: True when held, False
        when another process has it (then do nothing)."""

    # --- housekeeping -----------------------------------------------------------------------

    def ping(self) -> None:
        """Raise ``LedgerError`` unless the ledger answers now."""

    def probe_write(self) -> None:
        """Raise ``LedgerError`` unless a write is committed now (a full disk answers reads)."""

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


ERASED = "erased"


def erasure_note(message_id: str | None) -> dict[str, Any]:
    """What ``erase`` leaves in place of a deleted user's payloads and requests."""
    return {ERASED: f"personal data erased by deletion {message_id}"}


def is_erased(body: Any) -> bool:
    return isinstance(body, dict) and set(body) == {ERASED}


PINNED = "pin"  # the key of a request body that holds a call worked out from Dub's answer


def pins_invoice(row: Row, invoice: str) -> bool:
    """Whether an unsettled row holds a pinned body for this invoice (``pin``'s check)."""
    body = row.request_body
    return (
        row.state in ACTIVE
        and isinstance(body, dict)
        and body.get("invoiceId") == invoice
        and PINNED in body
    )


def of_user(payload: Any, user: str) -> bool:
    """Whether a stored Segment payload is this user's (its ``userId``), for ``erase``."""
    return isinstance(payload, dict) and str(payload.get("userId")) == user and user != ""

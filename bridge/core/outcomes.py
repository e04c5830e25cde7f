"""Every word the bridge uses for where a conversion stands, and the one table of its moves.

Two vocabularies, kept apart on purpose:

* ``Outcome``: what one (event, mapping) came to in one request or replay line.
  ``failed`` means one thing only: Dub could not take it now, Segment retries.
* ``State``: where a ledger row stands across requests. A row given up on is
  ``gave_up``, never ``failed``.

``TRANSITIONS`` is the only list of which state may follow which and through
which operation; the ledger backends build their SQL state sets from it, and a
test walks it against every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """What one (event, mapping) came to; the strings are the replay line's and the log's."""

    READY = "ready"  # planned, not sent yet: never leaves the process
    DRY_RUN = "dry_run"
    DELIVERED = "delivered"
    DEDUPLICATED = "deduplicated"  # Dub answered a lead with link: null
    NOT_RECORDED = "not_recorded"  # Dub answered a sale with sale: null
    REFUNDED = "refunded"  # a refund reached the invoice's commission
    DUPLICATE = "duplicate"  # already handled by the ledger: not sent again
    REJECTED = "rejected"  # Dub answered a final 4xx
    FAILED = "failed"  # unreachable, timeout, 408/429/5xx: Segment retries
    PENDING = "pending"  # not sent within the time budget: Segment retries
    QUEUED = "queued"  # older than Segment's retry window: the bridge's outbox retries it
    UNCERTAIN = "uncertain"  # Dub's lead trap: was the first attempt recorded?
    GAVE_UP = "gave_up"
    SKIPPED = "skipped"
    INVALID = "invalid"
    SUPERSEDED = "superseded"  # redrive: no current mapping sends it any more
    UNVERIFIED = "unverified"  # a batch's signature did not vouch for it: kept for review
    TOO_OLD = "too_old"  # older than the ledger remembers: sending it could send it twice


class State(StrEnum):
    """Where a ledger row stands; the strings are what the database stores."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEDUPLICATED = "deduplicated"
    NOT_RECORDED = "not_recorded"
    SUPERSEDED = "superseded"
    INVALID = "invalid"
    REJECTED = "rejected"
    UNCERTAIN = "uncertain"
    GAVE_UP = "gave_up"
    UNVERIFIED = "unverified"


class Via(StrEnum):
    """The ledger operation that moves a row."""

    CLAIM = "claim"  # taken before a Dub call
    TAKEOVER = "takeover"  # an in-flight claim whose lease ran out, taken by another worker
    REDRIVE = "redrive"  # taken by redrive, after a person looked at it
    FINISH = "finish"  # the call's outcome
    RELEASE = "release"  # a claim given back unused: the row returns to where it was
    RECORD = "record"  # planning found the event invalid, or its signature unproven
    SWEEP = "sweep"  # given up after Segment stopped retrying
    SUPERSEDE = "supersede"  # redrive found no current mapping that sends it


@dataclass(frozen=True, slots=True)
class Transition:
    before: State | None  # None: no row yet
    target: State
    via: Via


_S = State
_AFTER_CALL = (_S.DELIVERED, _S.DEDUPLICATED, _S.NOT_RECORDED, _S.REJECTED, _S.UNCERTAIN)
TRANSITIONS: tuple[Transition, ...] = (
    Transition(None, _S.IN_FLIGHT, Via.CLAIM),
    Transition(None, _S.INVALID, Via.RECORD),
    Transition(None, _S.UNVERIFIED, Via.RECORD),
    Transition(_S.UNVERIFIED, _S.UNVERIFIED, Via.RECORD),
    Transition(_S.PENDING, _S.IN_FLIGHT, Via.CLAIM),
    Transition(_S.INVALID, _S.IN_FLIGHT, Via.CLAIM),  # a fixed mapping may send it now
    # A verified arrival takes over from a copy no signature vouched for: a forged event
    # planted under a predictable messageId never shadows the real one.
    Transition(_S.UNVERIFIED, _S.IN_FLIGHT, Via.CLAIM),
    Transition(_S.IN_FLIGHT, _S.IN_FLIGHT, Via.TAKEOVER),
    *(Transition(_S.IN_FLIGHT, target, Via.FINISH) for target in _AFTER_CALL),
    Transition(_S.IN_FLIGHT, _S.PENDING, Via.FINISH),  # transient: Segment retries
    Transition(_S.IN_FLIGHT, _S.GAVE_UP, Via.FINISH),  # too many attempts
    # What Dub answered shows the call cannot be made as it stands (a refund larger than
    # its sale, or one whose absolute amount cannot be known): a person must decide.
    Transition(_S.IN_FLIGHT, _S.INVALID, Via.FINISH),
    *(
        Transition(_S.IN_FLIGHT, target, Via.RELEASE)
        for target in (_S.PENDING, _S.INVALID, _S.REJECTED, _S.UNCERTAIN, _S.GAVE_UP)
    ),
    Transition(_S.PENDING, _S.INVALID, Via.RECORD),  # an edited mapping now refuses it
    Transition(_S.INVALID, _S.INVALID, Via.RECORD),
    Transition(_S.PENDING, _S.GAVE_UP, Via.SWEEP),
    Transition(_S.IN_FLIGHT, _S.GAVE_UP, Via.SWEEP),  # only once its lease ran out
    *(
        Transition(before, _S.IN_FLIGHT, Via.REDRIVE)
        for before in (_S.PENDING, _S.INVALID, _S.REJECTED, _S.UNCERTAIN, _S.GAVE_UP, _S.UNVERIFIED)
    ),
    *(
        Transition(before, _S.SUPERSEDED, Via.SUPERSEDE)
        for before in (_S.INVALID, _S.REJECTED, _S.UNCERTAIN, _S.GAVE_UP, _S.UNVERIFIED)
    ),
)


def states_before(target: State, via: Via) -> frozenset[State]:
    """The states a row may be in for ``via`` to move it to ``target``."""
    return frozenset(
        t.before
        for t in TRANSITIONS
        if t.target is target and t.via is via and t.before is not None
    )


def allowed(before: State | None, target: State, via: Via) -> bool:
    return Transition(before, target, via) in _ALL


_ALL = frozenset(TRANSITIONS)
# Settled: never sent again; pruned after the retention period.
FINAL = frozenset({_S.DELIVERED, _S.DEDUPLICATED, _S.NOT_RECORDED, _S.SUPERSEDED})
# Dead letters: need a person; kept (with the payload) until redriven or their own retention.
DEAD = frozenset({_S.INVALID, _S.REJECTED, _S.UNCERTAIN, _S.GAVE_UP, _S.UNVERIFIED})
# Not settled: the claim or a retry is still to come.
ACTIVE = frozenset({_S.PENDING, _S.IN_FLIGHT})
CLAIMABLE = states_before(_S.IN_FLIGHT, Via.CLAIM)
# Rows a claim takes over as new: their payload, error and first sighting came from a
# sender nobody vouched for, not from the event now claimed.
UNPROVEN = frozenset({_S.UNVERIFIED})
REDRIVABLE = states_before(_S.IN_FLIGHT, Via.REDRIVE)
SWEEPABLE = states_before(_S.GAVE_UP, Via.SWEEP)
# What a call's outcome may leave a claimed row in.
FINISHED = frozenset(t.target for t in TRANSITIONS if t.via is Via.FINISH)
# The states a released claim may return to (anything else returns to pending).
RELEASABLE = frozenset(t.target for t in TRANSITIONS if t.via is Via.RELEASE)

# What the ledger keeps for each outcome a call (or its absence) comes to.
STATE_AFTER: dict[Outcome, State] = {
    Outcome.DELIVERED: _S.DELIVERED,
    Outcome.DEDUPLICATED: _S.DEDUPLICATED,
    Outcome.NOT_RECORDED: _S.NOT_RECORDED,
    Outcome.REFUNDED: _S.DELIVERED,
    # Settled after asking Dub: nothing there to change (no commission for the invoice,
    # not a Dub customer). Skipped before any call, an event leaves no row at all.
    Outcome.SKIPPED: _S.NOT_RECORDED,
    Outcome.REJECTED: _S.REJECTED,
    Outcome.UNCERTAIN: _S.UNCERTAIN,
    Outcome.FAILED: _S.PENDING,
    Outcome.PENDING: _S.PENDING,
    Outcome.QUEUED: _S.PENDING,
    Outcome.GAVE_UP: _S.GAVE_UP,
    Outcome.INVALID: _S.INVALID,
    Outcome.SUPERSEDED: _S.SUPERSEDED,
    Outcome.UNVERIFIED: _S.UNVERIFIED,
}

# Outcomes of a result that a person must look at (replay and redrive exit 1).
NEEDS_PERSON = frozenset(
    {
        Outcome.INVALID,
        Outcome.REJECTED,
        Outcome.FAILED,
        Outcome.UNCERTAIN,
        Outcome.GAVE_UP,
        Outcome.UNVERIFIED,
        Outcome.TOO_OLD,
    }
)
# Segment must retry the request when any result ends in one of these.
RETRY = frozenset({Outcome.FAILED, Outcome.PENDING})
# Sent, or rightly not sent: nothing for anyone to do (left out of the webhook's answer).
QUIET = frozenset(
    {
        Outcome.DELIVERED,
        Outcome.REFUNDED,
        Outcome.DEDUPLICATED,
        Outcome.DUPLICATE,
        Outcome.SKIPPED,
        Outcome.DRY_RUN,
    }
)
# Logged as warnings.
WARN = NEEDS_PERSON

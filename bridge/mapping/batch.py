"""A batch of events planned together: what each causes, what is kept, what is held back.

Pure, like the engine: the caller says what time it is, when "too old" begins and which
events a signature does not vouch for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..core.items import Item
from ..core.outcomes import Outcome
from ..core.results import Result
from .engine import Engine

# Where an event says when it happened, most trusted first: Segment's own clock when it
# received the event, its corrected time, then the sender's device clock.
TIME_KEYS = ("receivedAt", "timestamp", "originalTimestamp", "sentAt")
# Clocks differ a little: a time this far ahead of ours still counts (as now); one further
# ahead is not believed, and the next time of TIME_KEYS is read instead.
CLOCK_SKEW = 300.0
# An epoch number this large is milliseconds: as seconds it would be past the year 5000.
_MILLISECONDS_FROM = 1e11
_EPOCH_MIN, _EPOCH_MAX = -62135596800.0, 253402300799.0  # years 1 to 9999, as ISO can write
NO_TIME = (
    "no readable time: its age cannot be checked (receivedAt, timestamp, originalTimestamp "
    "or sentAt, as ISO 8601 or epoch seconds or milliseconds)"
)


def plan_all(
    engine: Engine,
    items: Iterable[Item],
    *,
    not_before: float | None = None,
    now: float | None = None,
    unvouched: Mapping[int, str] | None = None,
    accept_dub_source: bool = False,
) -> tuple[list[Result], dict[str, Any]]:
    """Plan a batch: every result in order, and the payload of each event that may be kept.

    An item's notes (text repaired while reading) become warnings on its results. When
    ``not_before`` (epoch seconds) is given, every event's age is checked against it, as
    of ``now``: an event whose time (``event_time``) is before it is ``too_old``, older
    than the ledger's memory, it might have been sent already; an event a mapping would
    send but whose time cannot be read is ``invalid``, as its age cannot be checked. The
    events at the indexes in ``unvouched`` are ``unverified`` (for the reason given
    there): their batch's signature does not vouch for them; nothing is sent.
    """
    unvouched = unvouched or {}
    results: list[Result] = []
    payloads: dict[str, Any] = {}
    for index, item in enumerate(items):
        event = item.event
        received = None
        if not_before is not None:
            if now is None:
                raise ValueError("plan_all: an age limit (not_before) needs the time (now)")
            received = event_time(event, now)
            if received is not None and received < not_before:
                results.append(_too_old(event, received, not_before))
                continue
        planned = engine.plan(event, accept_dub_source=accept_dub_source)
        if item.notes:
            planned = [r.with_warnings(item.notes) for r in planned]
        if index in unvouched:  # first: a forged event stays `unverified`, whatever its time
            planned = [_unverified(r, unvouched[index]) for r in planned]
        if not_before is not None and received is None:
            planned = [_timeless(r) for r in planned]
        results += planned
        first = planned[0]
        if first.message_id and first.outcome is not Outcome.SKIPPED:
            payloads[first.message_id] = event
    return results, payloads


def event_time(event: Any, now: float) -> float | None:
    """The time an event's age counts from (epoch seconds), or None when none is readable.

    The first of ``TIME_KEYS`` that reads as a time (``read_time``) and is not more than
    ``CLOCK_SKEW`` ahead of ``now``; a time ahead of ``now`` counts as ``now``. When every
    readable time is further ahead, ``now``: an event cannot be older than the present.
    So a forged or wrong ``receivedAt`` in the future cannot make an old event new when
    its ``timestamp`` says when it was.
    """
    if type(event) is not dict:
        return None
    ahead = False
    for key in TIME_KEYS:
        when = read_time(event.get(key))
        if when is None:
            continue
        if when <= now + CLOCK_SKEW:
            return min(when, now)
        ahead = True
    return now if ahead else None


def read_time(value: Any) -> float | None:
    """A time as Segment or a sender writes it, in epoch seconds; None when unreadable.

    ISO 8601 text (without an offset: UTC), or a JSON number of epoch seconds, or of
    milliseconds when it is past 1e11 (as seconds: the year 5138). Anything else (RFC 2822
    text, numeric text, a boolean, NaN, a time outside the years 1 to 9999) is unreadable.
    """
    if type(value) is str:
        try:
            when = datetime.fromisoformat(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.timestamp()
        except (ValueError, OverflowError):
            return None
    if type(value) is int or isinstance(value, float):
        # Compared before dividing: an integer of 400 digits has no float. NaN compares false.
        if not _EPOCH_MIN * 1000 <= value <= _EPOCH_MAX * 1000:
            return None
        seconds = value / 1000 if abs(value) >= _MILLISECONDS_FROM else float(value)
        return seconds if _EPOCH_MIN <= seconds <= _EPOCH_MAX else None
    return None


def _too_old(event: Any, received: float, not_before: float) -> Result:
    message_id = event.get("messageId") if isinstance(event.get("messageId"), str) else None
    name = event.get("event") if isinstance(event.get("event"), str) else None
    days = (not_before - received) / 86400
    reason = (
        f"received {days:.1f} day(s) before the oldest time the ledger remembers: not sent, as "
        "it may have been sent already (replay --send --accept-old sends it, for a backfill)"
    )
    return Result(message_id=message_id, event=name).finish(Outcome.TOO_OLD, reason=reason)


def _timeless(result: Result) -> Result:
    if result.outcome is not Outcome.READY:
        return result
    return result.finish(Outcome.INVALID, errors=(NO_TIME,))


def _unverified(result: Result, why: str) -> Result:
    if result.outcome is not Outcome.READY:
        return result
    # The reason is kept as the dead letter's error too: `bridge deadletters` shows why.
    reason = f"{why}: not sent; kept as a dead letter to review (redrive --include-unverified)"
    return result.finish(Outcome.UNVERIFIED, reason=reason, errors=(why,))

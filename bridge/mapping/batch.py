"""A batch of events planned together: what each causes, what is kept, what is held back.

Pure, like the engine: the caller says when "too old" begins and which events a
signature does not vouch for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..items import Item
from ..outcomes import Outcome
from ..results import Result
from .engine import Engine


def plan_all(
    engine: Engine,
    items: Iterable[Item],
    *,
    not_before: float | None = None,
    unvouched: Mapping[int, str] | None = None,
    accept_dub_source: bool = False,
) -> tuple[list[Result], dict[str, Any]]:
    """Plan a batch: every result in order, and the payload of each event that may be kept.

    An item's notes (text repaired while reading) become warnings on its results. An event
    received before ``not_before`` (epoch seconds) is ``too_old``: older than the ledger's
    memory, it might have been sent already. The events at the indexes in ``unvouched`` are
    ``unverified`` (for the reason given there): their batch's signature does not vouch for
    them; nothing is sent.
    """
    unvouched = unvouched or {}
    results: list[Result] = []
    payloads: dict[str, Any] = {}
    for index, item in enumerate(items):
        event = item.event
        received = event_time(event) if not_before is not None else None
        if received is not None and not_before is not None and received < not_before:
            results.append(_too_old(event, received, not_before))
            continue
        planned = engine.plan(event, accept_dub_source=accept_dub_source)
        if item.notes:
            planned = [r.with_warnings(item.notes) for r in planned]
        if index in unvouched:
            planned = [_unverified(r, unvouched[index]) for r in planned]
        results += planned
        first = planned[0]
        if first.message_id and first.outcome is not Outcome.SKIPPED:
            payloads[first.message_id] = event
    return results, payloads


def event_time(event: Any) -> float | None:
    """When Segment received the event (``receivedAt``, else ``timestamp``), if readable."""
    if type(event) is not dict:
        return None
    for key in ("receivedAt", "timestamp"):
        text = event.get(key)
        if isinstance(text, str):
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.timestamp()
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


def _unverified(result: Result, why: str) -> Result:
    if result.outcome is not Outcome.READY:
        return result
    # The reason is kept as the dead letter's error too: `bridge deadletters` shows why.
    reason = f"{why}: not sent; kept as a dead letter to review (redrive --include-unverified)"
    return result.finish(Outcome.UNVERIFIED, reason=reason, errors=(why,))

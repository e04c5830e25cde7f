"""Redrive: run dead letters again through the current mappings.

Used after ops fixed a mapping (or Dub's trouble passed). The stored Segment
payloads are planned again; sends keep their idempotency (the ledger row of each
messageId and mapping, and the sale's invoiceId at Dub), leads go before sales,
and a second redrive finds nothing left to send. A dead letter whose mapping no
longer applies to its event is marked ``superseded`` so it leaves the list.

``unverified`` dead letters (events no signature vouched for, perhaps forged) are
left alone unless asked for by name: then each is sent with its own payload, and
its line says what differs from any verified copy of its messageId the ledger kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.masking import mask_value
from ..core.outcomes import DEAD, Outcome, State
from ..core.results import Result
from ..delivery.deliverer import Deliverer
from ..ledger.base import Ledger, Row
from ..mapping.engine import Engine

CHUNK = 100  # events sent together, within one budget, as `replay --send` sends them


def redrive(
    engine: Engine,
    ledger: Ledger,
    deliverer: Deliverer | None,
    *,
    mapping: str | None,
    since: float | None,
    budget: float,
    include_unverified: bool = False,
) -> list[dict[str, Any]]:
    """Redrive the dead letters that match; ``deliverer`` None is a dry run."""
    rows = ledger.dead_letters(mapping=mapping, since=since)
    return redrive_rows(
        engine, ledger, deliverer, rows, budget=budget, include_unverified=include_unverified
    )


def redrive_rows(
    engine: Engine,
    ledger: Ledger,
    deliverer: Deliverer | None,
    rows: list[Row],
    *,
    budget: float,
    include_unverified: bool = False,
) -> list[dict[str, Any]]:
    """Redrive these dead letters (chosen by the caller: a filter, or one messageId)."""
    rows = [r for r in rows if r.state in DEAD]
    verified = [r for r in rows if r.state is not State.UNVERIFIED]
    lines = _redrive(engine, ledger, deliverer, verified, budget, adds=True)
    if include_unverified:
        held = sorted(
            (r for r in rows if r.state is State.UNVERIFIED), key=lambda r: r.action != "lead"
        )
        for row in held:
            # One at a time: each carries its own payload, which may differ from a
            # verified copy of the same messageId (planned above, or delivered before).
            compared = _compared(ledger, row)
            lines += [
                line | compared
                for line in _redrive(engine, ledger, deliverer, [row], budget, adds=False)
            ]
    return lines


def _redrive(
    engine: Engine,
    ledger: Ledger,
    deliverer: Deliverer | None,
    rows: list[Row],
    budget: float,
    *,
    adds: bool,
) -> list[dict[str, Any]]:
    """Redrive these rows; ``adds``: also send what a changed mapping now makes of their
    events (verified payloads only: an unverified one is sent for its own row alone)."""
    before: dict[tuple[str, str], State] = {(r.message_id, r.mapping): r.state for r in rows}
    events: dict[str, Any] = {}
    unusable: list[dict[str, Any]] = []
    for row in rows:
        if isinstance(row.payload, dict) and "unstorable" not in row.payload:
            events.setdefault(row.message_id, row.payload)
        else:
            unusable.append(
                _line(
                    row.message_id,
                    row.mapping,
                    row.state,
                    row.state,
                    "no stored Segment payload to redrive",
                )
            )
    results: list[Result] = []
    queue = list(events.values())
    # In chunks, as `replay --send` sends: each chunk's calls go out together within a
    # budget of their own, so a long list of dead letters never races one deadline.
    for start in range(0, len(queue), CHUNK):
        planned: list[Result] = []
        chunk = queue[start : start + CHUNK]
        # What was dead, and what a changed mapping now adds; not what was delivered before
        # (nor an unverified row, which only its own redrive takes): one look-up a chunk.
        held = ledger.rows_of_many([e.get("messageId", "") for e in chunk]) if adds else {}
        for event in chunk:
            known = {r.mapping for r in held.get(event.get("messageId", ""), ())}
            planned += [
                r
                for r in engine.plan(event)
                if r.mapping is not None and (r.key in before or (adds and r.mapping not in known))
            ]
        planned.sort(key=lambda r: r.action != "lead")  # leads first, across events too
        if deliverer is None:
            planned = [
                r.finish(Outcome.DRY_RUN) if r.outcome is Outcome.READY else r for r in planned
            ]
        elif planned:
            planned = deliverer.deliver(planned, budget, events, redrive=True)
        results += planned
    lines = []
    produced: dict[tuple[str, str], Outcome] = {}
    for result in results:
        produced[result.key] = result.outcome
        line = result.to_line()
        line["before"] = before.get(result.key)
        lines.append(line)
    for key, state in before.items():
        if key[0] in events and produced.get(key, Outcome.SKIPPED) is Outcome.SKIPPED:
            # The current mappings send nothing for it: it is no longer a dead letter.
            if deliverer is not None:
                ledger.supersede(*key)
            if key not in produced:
                lines.append(
                    _line(*key, state, Outcome.SUPERSEDED, "no current mapping sends this event")
                )
    return lines + unusable


def _compared(ledger: Ledger, row: Row) -> dict[str, Any]:
    """What an unverified row's payload has that a verified copy of its messageId has not:
    the copy (its mapping and state), and each differing field with both values, masked."""
    copies = [r for r in ledger.rows_of(row.message_id) if r.state is not State.UNVERIFIED]
    kept = [r for r in copies if isinstance(r.payload, dict)]
    if not copies:
        return {"verifiedCopy": None, "differs": None}
    copy = (kept or copies)[0]
    described = {"mapping": copy.mapping, "state": copy.state}
    if not kept or not isinstance(row.payload, dict):
        # No verified copy kept its payload (a delivered row keeps none): the messageId was
        # used, what it carried is gone.
        return {"verifiedCopy": described | {"contentKept": False}, "differs": None}
    ours, theirs = _flat(row.payload), _flat(copy.payload)
    differs = {
        path: {
            "verified": mask_value(path, theirs[path]) if path in theirs else None,
            "unverified": mask_value(path, ours[path]) if path in ours else None,
        }
        for path in sorted(set(ours) | set(theirs))
        if ours.get(path, _ABSENT) != theirs.get(path, _ABSENT)
    }
    return {"verifiedCopy": described | {"contentKept": True}, "differs": differs}


_ABSENT = object()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by its dotted path (lists by index)."""
    if isinstance(value, Mapping) and value:
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list) and value:
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix or "$": value}
    flat: dict[str, Any] = {}
    for key, inner in items:
        flat |= _flat(inner, f"{prefix}.{key}" if prefix else key)
    return flat


def _line(
    message_id: str, mapping: str, before: State, outcome: Outcome | State, reason: str
) -> dict[str, Any]:
    """A line for a row no plan was made for, in the shape of every other line."""
    line = Result(message_id, mapping=mapping, outcome=Outcome(outcome.value), reason=reason)
    return line.to_line() | {"before": before}

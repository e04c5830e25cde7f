"""Redrive: run dead letters again through the current mappings.

Used after ops fixed a mapping (or Dub's trouble passed). The stored Segment
payloads are planned again; sends keep their idempotency (the ledger row of each
messageId and mapping, and the sale's invoiceId at Dub), leads go before sales,
and a second redrive finds nothing left to send. A dead letter whose mapping no
longer applies to its event is marked ``superseded`` so it leaves the list.
"""

from __future__ import annotations

from typing import Any

from ..ledger.base import Ledger
from ..mapping.engine import Engine
from ..outcomes import Outcome, State
from ..results import Result
from .deliverer import Deliverer


def redrive(
    engine: Engine,
    ledger: Ledger,
    deliverer: Deliverer | None,
    *,
    mapping: str | None,
    since: float | None,
    budget: float,
) -> list[dict[str, Any]]:
    """Redrive the dead letters that match; ``deliverer`` None is a dry run."""
    rows = ledger.dead_letters(mapping=mapping, since=since)
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
    for event in events.values():
        # What was dead, and what a changed mapping now adds; not what was delivered before.
        results += [
            r
            for r in engine.plan(event)
            if r.mapping is not None and (r.key in before or ledger.get(*r.key) is None)
        ]
    results.sort(key=lambda r: r.action != "lead")  # leads first, across events too
    if deliverer is None:
        results = [r.finish(Outcome.DRY_RUN) if r.outcome is Outcome.READY else r for r in results]
    elif results:
        results = deliverer.deliver(results, budget, events, redrive=True)
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


def _line(
    message_id: str, mapping: str, before: State, outcome: str, reason: str
) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "mapping": mapping,
        "before": before,
        "outcome": outcome,
        "request": None,
        "errors": [],
        "warnings": [],
        "reason": reason,
    }

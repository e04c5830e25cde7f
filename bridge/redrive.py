"""Redrive: run dead letters again through the current mappings.

Used after ops fixed a mapping (or Dub's trouble passed). The stored Segment
payloads are planned again; sends keep their idempotency (the ledger row of each
messageId and mapping, and the sale's invoiceId at Dub), leads go before sales,
and a second redrive finds nothing left to send. A dead letter whose mapping no
longer applies to its event is marked ``superseded`` so it leaves the list.
"""

from __future__ import annotations

from typing import Any

from .app import build_deliverer
from .engine import Engine
from .ledger import SQLiteLedger
from .results import Result
from .settings import Settings

CHUNK_BUDGET = 60.0


def redrive(
    settings: Settings, engine: Engine, *, mapping: str | None, since: float | None, dry_run: bool
) -> list[dict[str, Any]]:
    ledger = SQLiteLedger(settings.db_path, lease_seconds=settings.lease_seconds)
    rows = ledger.dead_letters(mapping=mapping, since=since)
    before = {(r.message_id, r.mapping): r.state for r in rows}
    events: dict[str, Any] = {}
    unusable: list[dict[str, Any]] = []
    for row in rows:
        if isinstance(row.payload, dict) and "unstorable" not in row.payload:
            events.setdefault(row.message_id, row.payload)
        else:
            unusable.append(
                {
                    "messageId": row.message_id,
                    "mapping": row.mapping,
                    "before": row.state,
                    "outcome": row.state,
                    "reason": "no stored Segment payload to redrive",
                    "request": None,
                    "errors": [],
                    "warnings": [],
                }
            )
    results: list[Result] = []
    for event in events.values():
        # What was dead, and what a changed mapping now adds; not what was delivered before.
        results += [
            r
            for r in engine.plan(event)
            if r.mapping is not None
            and (
                (r.message_id, r.mapping) in before
                or ledger.get(r.message_id or "", r.mapping) is None
            )
        ]
    results.sort(key=lambda r: r.action != "lead")  # leads first, across events too
    if dry_run:
        results = [r.finish("dry_run") if r.outcome == "ready" else r for r in results]
    elif results:
        deliverer = build_deliverer(settings, ledger)
        try:
            results = deliverer.deliver(results, CHUNK_BUDGET, events, redrive=True)
        finally:
            deliverer.close()
    lines = []
    produced: dict[tuple[str, str], str] = {}
    for result in results:
        key = (result.message_id or "", result.mapping or "")
        produced[key] = result.outcome
        line = result.to_line()
        line["before"] = before.get(key)
        lines.append(line)
    for key, state in before.items():
        if key[0] in events and produced.get(key, "skipped") == "skipped":
            # The current mappings send nothing for it: it is no longer a dead letter.
            if not dry_run:
                ledger.finish(*key, "superseded")
            if key not in produced:
                lines.append(
                    {
                        "messageId": key[0],
                        "mapping": key[1],
                        "before": state,
                        "outcome": "superseded",
                        "request": None,
                        "errors": [],
                        "warnings": [],
                        "reason": "no current mapping sends this event",
                    }
                )
    return lines + unusable

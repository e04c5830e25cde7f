"""The events list, one event's detail with its Redrive button, and bulk redrive."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

from flask import abort, render_template, request

from ...core.outcomes import DEAD, NEEDS_PERSON, RETRY, Outcome, State
from ...dub.endpoints import ENDPOINTS
from ...ledger import Ledger
from ...ledger.base import KEPT_ATTEMPTS, Attempt, Browse, Row
from ...mapping.explain import explain
from ...service.redrive import redrive_rows
from . import auth, filters
from .blueprint import clock, console, counts, service

# A redrive from a page runs inside one request: gunicorn's worker timeout (30 s) is the
# bound, so the calls get less, and a bulk redrive takes this many dead letters at a time.
REDRIVE_BUDGET = 20.0
BULK_MAX = 500


def _ledger() -> Ledger:
    ledger = service().ledger
    if ledger is None:
        abort(404, "the ledger is off (BRIDGE_LEDGER=off): nothing is recorded to show")
    return ledger


def _filters(values: Any) -> filters.Filters:
    try:
        return filters.read(values, clock().time())
    except filters.BadFilter as exc:
        abort(400, str(exc))


def last_error(row: Row) -> str:
    """The row's last error in one line (the list shows it; the detail shows it whole)."""
    error = row.error
    if error is None or error == []:
        return ""
    if isinstance(error, list):
        text = "; ".join(str(e) for e in error)
    elif isinstance(error, dict):
        text = str(error.get("message") or error)
    else:
        text = str(error)
    return text if len(text) <= 160 else text[:157] + "..."


def answer_shown(text: str | None) -> str:
    """Dub's answer as kept, indented when it is whole JSON (one cut short is shown as is)."""
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


@console.get("/events")
def events() -> Any:
    ledger = _ledger()
    chosen = _filters(request.args)
    try:
        start = filters.after(request.args.get("after"))
    except filters.BadFilter as exc:
        abort(400, str(exc))
    rows = ledger.browse(chosen.browse(clock().time(), after=start, limit=filters.PAGE + 1))
    more = len(rows) > filters.PAGE
    rows = rows[: filters.PAGE]
    return render_template(
        "console/events.html",
        rows=rows,
        counts=sorted(counts().items()),
        dead=DEAD,
        chosen=chosen,
        states=filters.STATE_WORDS,
        mappings=sorted({m.name for m in service().store.engine.mappings}),
        next_page=filters.cursor(Browse.key(rows[-1])) if more else None,
        last_error=last_error,
        may_redrive=chosen.states() is None or bool((chosen.states() or set()) & DEAD),
    )


def _detail(message_id: str, results: list[dict[str, Any]] | None = None) -> Any:
    ledger = _ledger()
    rows = ledger.rows_of(message_id)
    if not rows:
        abort(404, f"no ledger row has messageId {message_id!r}")
    payload = next((r.payload for r in rows if isinstance(r.payload, dict)), None)
    engine = service().store.engine
    explained = explain(engine, payload) if payload is not None else None
    planned = {m["mapping"]: m for m in explained["mappings"]} if explained else {}
    calls: dict[str, list[Attempt]] = {}
    for call in ledger.attempts_of(message_id):
        calls.setdefault(call.mapping, []).append(call)
    panes = []
    for row in rows:
        endpoint = ENDPOINTS.get(row.action or "")
        now = planned.get(row.mapping)
        if row.request_body is not None:
            sent = {"path": endpoint.path if endpoint else None, "body": row.request_body}
            sent_label = "the request sent"
        elif now is not None and now["body"] is not None:
            sent = {"path": now["path"], "body": now["body"]}
            sent_label = "not sent yet: what the current mappings would send now"
        else:
            sent, sent_label = None, "none: nothing was or would be sent"
        panes.append(
            {
                "row": row,
                "sent": sent,
                "sent_label": sent_label,
                "calls": calls.get(row.mapping, []),
            }
        )
    return render_template(
        "console/event.html",
        message_id=message_id,
        rows=rows,
        panes=panes,
        payload=payload,
        explained=explained,
        dead=any(r.state in DEAD for r in rows),
        results=results,
        needs_person=NEEDS_PERSON | RETRY,
        kept_calls=KEPT_ATTEMPTS,
        answer_shown=answer_shown,
    )


@console.get("/events/<path:message_id>")
def event(message_id: str) -> Any:
    return _detail(message_id)


@console.post("/events/<path:message_id>/redrive")
def redrive_one(message_id: str) -> Any:
    ledger = _ledger()
    rows = [r for r in ledger.rows_of(message_id) if r.state in DEAD]
    if not rows:
        auth.action("redrive", "nothing to redrive", messageIds=[message_id])
        return _detail(message_id, [])
    svc = service()
    # Naming one event is asking for it: an unverified copy is sent too, its line saying
    # what differs from a verified copy (as `bridge redrive --include-unverified`).
    lines = redrive_rows(
        svc.store.engine,
        ledger,
        svc.deliverer,
        rows,
        budget=REDRIVE_BUDGET,
        include_unverified=True,
    )
    outcomes = Counter(str(line["outcome"]) for line in lines)
    auth.action("redrive", _summary(outcomes), messageIds=[message_id])
    return _detail(message_id, lines)


def _dead_rows(ledger: Ledger, chosen: filters.Filters, unverified: bool) -> tuple[list[Row], bool]:
    """The dead letters the filters choose (at most ``BULK_MAX``), and whether more remain."""
    kinds = DEAD & (chosen.states() or DEAD)
    if not unverified:
        kinds -= {State.UNVERIFIED}
    query = chosen.browse(clock().time(), after=None, limit=BULK_MAX + 1)
    rows = ledger.browse(replace(query, states=frozenset(kinds)))
    return rows[:BULK_MAX], len(rows) > BULK_MAX


def _summary(outcomes: Counter[str]) -> str:
    return ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "nothing"


@console.route("/redrive", methods=["GET", "POST"])
def bulk() -> Any:
    ledger = _ledger()
    values = request.form if request.method == "POST" else request.args
    chosen = _filters(values)
    unverified = values.get("unverified") == "1"
    rows, more = _dead_rows(ledger, chosen, unverified)
    svc = service()
    run = request.method == "POST"
    lines = redrive_rows(
        svc.store.engine,
        ledger,
        svc.deliverer if run else None,
        rows,
        budget=REDRIVE_BUDGET,
        include_unverified=unverified,
    )
    outcomes = Counter(str(line["outcome"]) for line in lines)
    if run:
        auth.action(
            "bulk_redrive",
            _summary(outcomes),
            filters=chosen.args(),
            messageIds=sorted({r.message_id for r in rows}),
        )
    return render_template(
        "console/redrive.html",
        chosen=chosen,
        unverified=unverified,
        lines=lines,
        outcomes=sorted(outcomes.items()),
        sends=outcomes.get(Outcome.DRY_RUN, 0),
        rows=rows,
        more=more,
        run=run,
        limit=BULK_MAX,
    )

"""The HTTP face: ``POST /segment`` for Segment's Webhooks destination, ``GET /healthz``."""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Blueprint, Response, current_app, request

from .answers import summarize
from .engine import plan_all
from .errors import InvalidJSON, InvalidSignature, NoEvents, ServiceUnavailable
from .jsoncodec import JSONDecodeFailure, Repair, dumps, loads_repaired
from .logs import log_result
from .results import RETRY, Result
from .signing import verify

bp = Blueprint("webhook", __name__)


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(dumps(payload), status=status, mimetype="application/json", headers=headers)


def parse_events(raw: bytes) -> tuple[list[Any], dict[int, list[str]]]:
    """A single event, a JSON array of events, or ``{"batch": [...]}``; and, by event
    index, the warnings of text that had to be repaired (a lone surrogate, a bad byte)."""
    if not raw.strip():
        raise NoEvents(
            'the body is empty; send a Segment event, an array of events or {"batch": [...]}'
        )
    try:
        data, repairs = loads_repaired(raw)
    except JSONDecodeFailure as exc:
        raise InvalidJSON(f"the body is not JSON: {exc}") from exc
    batched = isinstance(data, dict) and "batch" in data
    if batched:
        data = data["batch"]
        if not isinstance(data, list):
            raise NoEvents("`batch` must be an array of events")
    events = data if isinstance(data, list) else [data] if isinstance(data, dict) else None
    if not events:
        raise NoEvents('no events: send a Segment event, an array of events or {"batch": [...]}')
    return events, _repair_notes(repairs, batched, isinstance(data, list))


def _repair_notes(repairs: list[Repair], batched: bool, array: bool) -> dict[int, list[str]]:
    notes: dict[int, list[str]] = {}
    for path in repairs:
        if batched:
            path = path[1:]
        index, inner = (path[0], path[1:]) if array and path else (0, path)
        if not isinstance(index, int):
            continue
        where = ".".join(str(p) for p in inner) or "event"
        notes.setdefault(index, []).append(
            f"{where}: invalid text (a lone UTF-16 surrogate or a bad byte) replaced with U+FFFD"
        )
    return notes


@bp.post("/segment")
def segment() -> Response:
    started = time.monotonic()
    bridge = current_app.extensions["bridge"]
    settings = bridge.settings
    raw = request.get_data(cache=False)  # MAX_CONTENT_LENGTH turns an oversized body into 413
    secret = settings.segment_shared_secret
    if secret is not None and not verify(
        raw, request.headers.get("X-Signature"), secret.get_secret_value()
    ):
        raise InvalidSignature("unauthorized")
    events, notes = parse_events(raw)
    results, payloads = plan_all(bridge.store.engine, events, notes)
    budget = settings.deadline_seconds - (time.monotonic() - started)
    results = bridge.deliverer.deliver(results, budget, payloads)
    for result in results:
        if result.elapsed_ms is None:  # the sender logged what it handled, with its timing
            log_result(result)
    if any(r.outcome in RETRY for r in results):
        wait = _retry_after(results, settings.retry_after_seconds)
        error = ServiceUnavailable("Dub did not take every event; retry the request").to_dict()
        return json_response(summarize(results, error), 503, {"Retry-After": str(wait)})
    return json_response(summarize(results))


def _retry_after(results: list[Result], default: int) -> int:
    """Dub's own Retry-After when it gave one, else the configured default."""
    waits = [r.retry_after for r in results if r.retry_after is not None]
    return max(1, math.ceil(max(waits))) if waits else default


@bp.get("/healthz")
def healthz() -> Response:
    bridge = current_app.extensions["bridge"]
    store = bridge.store
    return json_response(
        {
            "status": "ok",
            "mappings": len(store.engine),
            "mappingNames": [m.name for m in store.engine.mappings],
            "version": store.engine.version,
            "loadedAt": store.loaded_at,
            "lastError": store.last_error,
        }
    )

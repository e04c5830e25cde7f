"""``POST /segment``: Segment's Webhooks destination posts events here.

In order: the body is read within its limit (413 past it, chunked or not; 415 for a
compressed body), the signature checked on the raw bytes before anything is parsed,
the events read, the events the signature does not vouch for held back, events older
than the ledger's memory refused, the rest planned and delivered within the budget.
"""

from __future__ import annotations

import math
from collections.abc import Set

from flask import Blueprint, Response, abort, current_app, request

from ..errors import InvalidSignature, PayloadTooLarge, ServiceUnavailable, UnsupportedEncoding
from ..inputs import Item, parse_body
from ..mapping.batch import plan_all
from ..outcomes import RETRY
from ..results import Result
from ..wiring import Service
from .answers import summarize
from .responses import json_response
from .signing import Verified, signature_key, verify

webhook = Blueprint("webhook", __name__)


@webhook.post("/segment")
def segment() -> Response:
    service: Service = current_app.extensions["bridge"]
    clock = service.deliverer.clock
    started = clock.monotonic()
    settings = service.settings
    if settings.webhook_off:  # only keyed ways in are configured
        abort(404, description="POST /segment is off: SEGMENT_SHARED_SECRET is not set")
    raw = read_body(settings.max_body_bytes)
    secret = settings.segment_shared_secret
    verified = None
    if secret is not None:
        verified = verify(raw, request.headers.get("X-Signature"), secret.get_secret_value())
        if not verified.ok:
            raise InvalidSignature("unauthorized")
    items = parse_body(raw)
    unvouched = _unvouched(service, verified, items)
    if unvouched and settings.unverified_events == "refuse":
        raise InvalidSignature("the signature does not vouch for every event of this body")
    results = run_events(service, items, started, unvouched=unvouched)
    if any(r.outcome in RETRY for r in results):
        wait = _retry_after(results, settings.retry_after_seconds)
        error = ServiceUnavailable("Dub did not take every event; retry the request").to_dict()
        return json_response(summarize(results, error), 503, {"Retry-After": str(wait)})
    return json_response(summarize(results))


def run_events(
    service: Service, items: list[Item], started: float, *, unvouched: Set[int] = frozenset(),
    hand_over: bool = False,
) -> list[Result]:  # fmt: skip
    """Every way in's one pipeline: age checks, mappings, then delivery (ledger, Dub, rate
    limit) within what is left of the time budget since ``started`` (monotonic)."""
    settings, clock = service.settings, service.deliverer.clock
    not_before = clock.time() - settings.max_event_age_days * 86400
    results, payloads = plan_all(
        service.store.engine, items, not_before=not_before, unvouched=unvouched
    )
    budget = settings.deadline_seconds - (clock.monotonic() - started)
    return service.deliverer.deliver(results, budget, payloads, hand_over=hand_over)


def read_body(limit: int) -> bytes:
    """The body as sent, at most ``limit`` bytes: 413 past it (chunked too), 415 if encoded."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not accepted: send the JSON body as it is"
        )
    return read_limited(limit)


def read_limited(limit: int) -> bytes:
    """The body's bytes as they came, at most ``limit``: 413 past it (chunked too)."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes")
        return request.get_data(cache=False)
    if not request.environ.get("wsgi.input_terminated"):
        return b""  # no length and no end marker: nothing can be read safely
    # Chunked: no length to check first. Read past the limit by one byte to know.
    data: bytes = request.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the body is over {limit} bytes")
    return data


def _unvouched(service: Service, verified: Verified | None, items: list[Item]) -> set[int]:
    """The indexes of events the signature does not vouch for: it vouches for what it came
    with the first time any instance saw it (a single event's signature, for that event)."""
    if verified is None or service.ledger is None:
        return set()
    ids = [item.event.get("messageId") if isinstance(item.event, dict) else None for item in items]
    key = signature_key(request.headers.get("X-Signature", ""))
    vouched = service.ledger.vouch(key, [i for i in ids if isinstance(i, str)])
    return {n for n, i in enumerate(ids) if isinstance(i, str) and i not in vouched}


def _retry_after(results: list[Result], default: int) -> int:
    """Dub's own Retry-After when it gave one, else the configured default."""
    waits = [r.retry_after for r in results if r.retry_after is not None]
    return max(1, math.ceil(max(waits))) if waits else default


__all__ = ["webhook"]

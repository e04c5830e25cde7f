"""``POST /segment``: Segment's Webhooks destination posts events here.

In order: the body is read within its limit (413 past it, chunked or not; 415 for a
compressed body), the signature checked on the raw bytes before anything is parsed,
the events read, the events the signature does not vouch for held back, events older
than the ledger's memory refused, the rest planned and delivered within the budget.

A batch signature covers its first event only. What it vouches for besides is the
exact content of each event it came with the first time any instance saw it (the
digest of each event's bytes, kept until its first event is too old to accept): an
event it did not come with, or one reusing a messageId it came with for other content,
is ``unverified``. Once that first event is too old, the body is refused whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from flask import Blueprint, Response, abort, current_app, request

from ..core.clock import SYSTEM, Clock
from ..core.errors import InvalidSignature, PayloadTooLarge, ServiceUnavailable, UnsupportedEncoding
from ..core.inputs import Item, parse_body
from ..core.metrics import metrics
from ..core.outcomes import RETRY, Outcome
from ..core.results import Result
from ..ledger.base import VOUCH_MARGIN, Sighting
from ..mapping.batch import event_time, plan_all
from ..mapping.engine import DUB_SOURCE
from ..service.wiring import Service
from .answers import summarize
from .arrival import arrival
from .requests import unavailable
from .responses import json_response
from .signing import Verified, event_digests, signature_key, verify

webhook = Blueprint("webhook", __name__)


@webhook.post("/segment")
def segment() -> Response:
    service: Service = current_app.extensions["bridge"]
    clock = service.deliverer.clock
    started = request_started(clock)
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
    now = clock.time()
    not_before = now - settings.max_event_age_days * 86400
    unvouched = _unvouched(service, verified, raw, items, not_before, now)
    if unvouched and settings.unverified_events == "refuse":
        raise InvalidSignature("the signature does not vouch for every event of this body")
    results = run_events(service, items, started, unvouched=unvouched)
    if any(r.outcome in RETRY for r in results):
        wait = _retry_after(results, settings.retry_after_seconds)
        error = ServiceUnavailable("Dub did not take every event; retry the request").to_dict()
        unavailable(retry_reason(results))
        return json_response(summarize(results, error), 503, {"Retry-After": str(wait)})
    return json_response(summarize(results))


def run_events(
    service: Service,
    items: list[Item],
    started: float,
    *,
    unvouched: Mapping[int, str] | None = None,
    hand_over: bool = False,
) -> list[Result]:
    """Every way in's one pipeline: age checks, mappings, then delivery (ledger, Dub, rate
    limit) within what is left of the time budget since ``started`` (monotonic)."""
    settings, clock = service.settings, service.deliverer.clock
    now = clock.time()
    not_before = now - settings.max_event_age_days * 86400
    results, payloads = plan_all(
        service.store.engine,
        items,
        not_before=not_before,
        now=now,
        unvouched=unvouched,
        accept_dub_source=settings.accept_dub_source,
    )
    echoed = len({r.message_id for r in results if r.reason == DUB_SOURCE})
    if echoed:
        metrics().dub_source.inc(echoed)
    budget = settings.deadline_seconds - (clock.monotonic() - started)
    return service.deliverer.deliver(results, budget, payloads, hand_over=hand_over)


def request_started(clock: Clock) -> float:
    """When the request's time budget started (monotonic): when it began to arrive, as the
    worker saw it, so the wait for a free thread is part of it (Segment's 5 s count from
    its sending, not from a thread's turn); else now. On the service's clock only where that
    is the system's."""
    now = clock.monotonic()
    arrived = arrival() if clock is SYSTEM else None
    return now if arrived is None else min(now, arrived)


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


NO_TIME = (
    "the batch's signed first event has no readable time, so its signature vouches for no "
    "other event (it could not be forgotten safely)"
)
UNREADABLE = "the batch's events could not be told apart as sent, so none but the first is vouched"
CONTENT_DIFFERS = (
    "the batch's signature was first seen with other content under this messageId, so it "
    "does not vouch for this event"
)
NO_CONTENT = (
    "the batch's signature was first seen by the release before, which kept no content to vouch for"
)
OTHER_EVENTS = (
    "the batch's signature was first seen with other events, so it does not vouch for this one"
)


def _unvouched(
    service: Service,
    verified: Verified | None,
    raw: bytes,
    items: list[Item],
    not_before: float,
    now: float,
) -> dict[int, str]:
    """The indexes of events the signature does not vouch for, each with why. A whole-body
    signature vouches for every byte; a first-event signature for its first event, and for
    the content of each event it first came with (a single event's signature: that event
    alone). ``InvalidSignature`` when its first event is too old to accept: past then, the
    ledger may have forgotten what the signature came with."""
    if verified is None or service.ledger is None:
        return {}
    signed_at = event_time(items[0].event, now)
    if not verified.whole_body and signed_at is not None and signed_at < not_before:
        raise InvalidSignature(
            "the batch's signed first event is older than BRIDGE_MAX_EVENT_AGE_DAYS: "
            "the body is refused whole"
        )
    max_age = service.settings.max_event_age_days * 86400
    digests = event_digests(raw, verified.whole_body)
    ids = [_message_id(item) for item in items]
    sighting = Sighting(
        frozenset(i for i in ids if i is not None),
        frozenset(digests or ()),
        # The last moment a body under this signature can be accepted, and the margin.
        max(now, signed_at if signed_at is not None else now) + max_age + VOUCH_MARGIN,
    )
    key = signature_key(request.headers.get("X-Signature", ""))
    vouched = service.ledger.vouch(key, sighting)
    if verified.whole_body:
        return {}
    why: dict[int, str] = {}
    for n in range(1, len(items)):
        if signed_at is None:
            why[n] = NO_TIME
        elif digests is None or len(digests) != len(items):
            why[n] = UNREADABLE
        elif digests[n] in vouched.digests:
            continue
        elif not vouched.knows_content:
            why[n] = NO_CONTENT
        elif ids[n] in vouched.message_ids:
            why[n] = CONTENT_DIFFERS
        else:
            why[n] = OTHER_EVENTS
    return why


def _message_id(item: Item) -> str | None:
    found = item.event.get("messageId") if isinstance(item.event, dict) else None
    return found if isinstance(found, str) else None


def retry_reason(results: list[Result]) -> str:
    """Why a 503 asks Segment to retry, for the metric: Dub's rate limit (429), Dub failing
    (unreachable, timeout, 408, 5xx), or only events not settled within the time budget."""
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    if any(r.status == 429 for r in failed):
        return "dub_rate_limited"
    return "dub_failed" if failed else "not_settled"


def _retry_after(results: list[Result], default: int) -> int:
    """Dub's own Retry-After when it gave one, else the configured default."""
    waits = [r.retry_after for r in results if r.retry_after is not None]
    return max(1, math.ceil(max(waits))) if waits else default


__all__ = ["webhook"]

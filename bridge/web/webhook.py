"""``POST /segment``: Segment's Webhooks destination posts events here."""

from __future__ import annotations

import math

from flask import Blueprint, Response, current_app, request

from ..errors import InvalidSignature, ServiceUnavailable
from ..inputs import parse_body
from ..mapping.engine import plan_all
from ..outcomes import RETRY
from ..results import Result
from ..wiring import Service
from .answers import summarize
from .responses import json_response
from .signing import verify

webhook = Blueprint("webhook", __name__)


@webhook.post("/segment")
def segment() -> Response:
    service: Service = current_app.extensions["bridge"]
    clock = service.deliverer.clock
    started = clock.monotonic()
    settings = service.settings
    raw = request.get_data(cache=False)  # MAX_CONTENT_LENGTH turns an oversized body into 413
    secret = settings.segment_shared_secret
    if secret is not None and not verify(
        raw, request.headers.get("X-Signature"), secret.get_secret_value()
    ):
        raise InvalidSignature("unauthorized")
    results, payloads = plan_all(service.store.engine, parse_body(raw))
    budget = settings.deadline_seconds - (clock.monotonic() - started)
    results = service.deliverer.deliver(results, budget, payloads)
    if any(r.outcome in RETRY for r in results):
        wait = _retry_after(results, settings.retry_after_seconds)
        error = ServiceUnavailable("Dub did not take every event; retry the request").to_dict()
        return json_response(summarize(results, error), 503, {"Retry-After": str(wait)})
    return json_response(summarize(results))


def _retry_after(results: list[Result], default: int) -> int:
    """Dub's own Retry-After when it gave one, else the configured default."""
    waits = [r.retry_after for r in results if r.retry_after is not None]
    return max(1, math.ceil(max(waits))) if waits else default


__all__ = ["webhook"]

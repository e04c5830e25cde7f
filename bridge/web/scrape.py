"""``GET /metrics``: who may scrape, and what a scrape reads.

With ``BRIDGE_METRICS_TOKEN`` a scrape needs ``Authorization: Bearer <token>`` (401
otherwise). Without one the endpoint is closed (403, saying how to open it) unless
``BRIDGE_METRICS_PUBLIC=1`` serves it to anyone who can reach it: the figures name
mappings and volumes, so that is a decision, never a default.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from flask import Response, current_app, request

from ..core.errors import error_body
from ..core.metrics import LedgerRows, exposition
from ..core.settings import Settings
from ..ledger.base import Ledger
from ..ledger.postgres import describe
from ..service.wiring import Service
from .responses import json_response

CLOSED = (
    "/metrics is closed: set BRIDGE_METRICS_TOKEN (then scrape with 'Authorization: Bearer"
    " <token>'), or BRIDGE_METRICS_PUBLIC=1 to serve it to anyone who can reach it"
)


def access(settings: Settings) -> str:
    """How /metrics is served: ``token``, ``public`` or ``closed`` (for the start-up line)."""
    if settings.metrics_token is not None:
        return "token"
    return "public" if settings.metrics_public else "closed"


def ledger_label(settings: Settings) -> str:
    """The ``ledger`` label: the same for every process that shares one ledger, so a query
    counts a database's rows once (never a password: ``describe`` leaves it out)."""
    if settings.ledger == "memory":
        return f"memory:{os.getpid()}"  # each process has its own
    if settings.postgres_url is not None:
        return f"postgres:{describe(settings.postgres_url)}"
    return f"sqlite:{settings.db_path.resolve()}"


def scrape(service: Service) -> Response:
    settings = service.settings
    refusal = _refusal(settings)
    if refusal is not None:
        return refusal
    rows: Any = current_app.extensions.get("bridge.ledger_rows")
    if rows is None and service.ledger is not None:
        ledger = service.ledger
        rows = LedgerRows(
            lambda: {str(k): v for k, v in ledger.counts().items()},
            ledger.oldest_unsettled,
            service.deliverer.clock.time,
            ledger=ledger_label(settings),
            queue=lambda: _queue(ledger),
        )
        current_app.extensions["bridge.ledger_rows"] = rows
    body, content_type = exposition(rows)
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)


def _queue(ledger: Ledger) -> tuple[int, float | None, int]:
    status = ledger.queue_status()
    return status.depth, status.oldest, status.sent_last_minute


def _refusal(settings: Settings) -> Response | None:
    token = settings.metrics_token
    if token is None:
        if settings.metrics_public:
            return None
        return json_response(error_body("metrics_closed", CLOSED), 403)
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {token.get_secret_value()}"
    if hmac.compare_digest(given.encode(), expected.encode()):
        return None
    return json_response(error_body("unauthorized", "a bearer token is needed"), 401)

"""What a platform and Prometheus ask: ``/livez``, ``/readyz``, ``/healthz`` and ``/metrics``.

``/livez``: the process answers. ``/readyz``: good mappings are loaded, the ledger
answers and the worker is not draining (else 503 with the reasons). ``/healthz``: a
summary for people, ``degraded`` while a rejected mapping edit keeps the last good
mappings active. ``/metrics``: Prometheus, every worker summed, optionally behind
``BRIDGE_METRICS_TOKEN``.
"""

from __future__ import annotations

import hmac
import threading

from flask import Blueprint, Response, current_app, request

from ..errors import LedgerError
from ..metrics import LedgerRows, exposition
from ..settings import Settings
from ..wiring import Service
from .responses import json_response

health = Blueprint("health", __name__)
PING_CACHE_SECONDS = 2.0


def _service() -> Service:
    service: Service = current_app.extensions["bridge"]
    return service


class _LedgerCheck:
    """Whether the ledger answers, asked at most every couple of seconds."""

    def __init__(self) -> None:
        self._at = 0.0
        self._problem: str | None = None
        self._lock = threading.Lock()

    def problem(self, service: Service) -> str | None:
        if service.ledger is None:
            return None
        now = service.deliverer.clock.monotonic()
        with self._lock:
            if now - self._at > PING_CACHE_SECONDS or self._at == 0.0:
                try:
                    service.ledger.ping()
                    self._problem = None
                except LedgerError as exc:
                    self._problem = f"the ledger does not answer: {exc.message}"
                self._at = now
            return self._problem


def _ledger_check() -> _LedgerCheck:
    check: _LedgerCheck = current_app.extensions.setdefault("bridge.ledger_check", _LedgerCheck())
    return check


@health.get("/livez")
def livez() -> Response:
    return json_response({"status": "alive"})


@health.get("/readyz")
def readyz() -> Response:
    service = _service()
    reasons = []
    if len(service.store.engine) == 0:
        reasons.append("no mappings are loaded")
    problem = _ledger_check().problem(service)
    if problem is not None:
        reasons.append(problem)
    if service.draining:
        reasons.append("draining: shutting down")
    if reasons:
        return json_response({"status": "not_ready", "reasons": reasons}, 503, {"Retry-After": "5"})
    return json_response({"status": "ready", "version": service.store.engine.version})


@health.get("/healthz")
def healthz() -> Response:
    service = _service()
    store = service.store
    problem = _ledger_check().problem(service)
    return json_response(
        {
            "status": "degraded" if store.degraded or problem else "ok",
            "mappings": len(store.engine),
            "mappingNames": [m.name for m in store.engine.mappings],
            "version": store.engine.version,
            "source": store.source,
            "origin": store.origin,
            "loadedAt": store.loaded_at,
            "lastError": store.last_error,
            "ledger": {
                "kind": service.ledger.kind if service.ledger is not None else "off",
                "problem": problem,
            },
            "signatures": _signatures(service.settings),
            "draining": service.draining,
            "callsInFlight": service.deliverer.in_flight,
        }
    )


@health.get("/metrics")
def prometheus() -> Response:
    service = _service()
    token = service.settings.metrics_token
    if token is not None:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return json_response(
                {"error": {"code": "unauthorized", "message": "a bearer token is needed"}}, 401
            )
    rows = current_app.extensions.get("bridge.ledger_rows")
    if rows is None and service.ledger is not None:
        ledger = service.ledger
        rows = LedgerRows(
            lambda: {str(k): v for k, v in ledger.counts().items()},
            ledger.oldest_unsettled,
            service.deliverer.clock.time,
        )
        current_app.extensions["bridge.ledger_rows"] = rows
    body, content_type = exposition(rows)
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)


def _signatures(settings: Settings) -> str:
    if settings.webhook_off:
        return "POST /segment off (no SEGMENT_SHARED_SECRET)"
    return "not checked (BRIDGE_ALLOW_UNSIGNED=1)" if settings.unsigned else "required"

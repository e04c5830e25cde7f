"""What a platform and Prometheus ask: ``/livez``, ``/readyz``, ``/healthz`` and ``/metrics``.

``/livez``: the process answers. ``/readyz``: good mappings are loaded, the ledger
takes writes (a full disk still answers reads) and the worker is not draining (else
503 with the reasons); a worker running a fallback mapping set is ready, and says
why it is degraded. ``/healthz``: a summary for people, ``degraded`` while rejected
files or a published set this release cannot load keep other mappings active.
``/metrics``: Prometheus, every worker summed, behind ``BRIDGE_METRICS_TOKEN`` unless
``BRIDGE_METRICS_PUBLIC=1`` (see ``scrape``).
"""

from __future__ import annotations

import threading

from flask import Blueprint, Response, current_app

from ..core.errors import LedgerError
from ..core.settings import Settings
from ..service.wiring import Service
from .responses import json_response
from .scrape import scrape

health = Blueprint("health", __name__)
PING_CACHE_SECONDS = 2.0


def _service() -> Service:
    service: Service = current_app.extensions["bridge"]
    return service


class _LedgerCheck:
    """Whether the ledger takes a write, asked at most every couple of seconds."""

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
                except LedgerError as exc:
                    self._problem = f"the ledger does not answer: {exc.message}"
                else:
                    self._problem = self._write_problem(service)
                self._at = now
            return self._problem

    @staticmethod
    def _write_problem(service: Service) -> str | None:
        assert service.ledger is not None
        try:
            service.ledger.probe_write()
        except LedgerError as exc:
            return f"the ledger cannot write: {exc.message}"
        return None


def _ledger_check() -> _LedgerCheck:
    check: _LedgerCheck = current_app.extensions.setdefault("bridge.ledger_check", _LedgerCheck())
    return check


def ledger_problem() -> str | None:
    """Why the ledger is not usable now (cached for a couple of seconds), or None."""
    return _ledger_check().problem(_service())


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
    store = service.store
    return json_response(
        {"status": "ready", "version": store.engine.version, "degraded": store.last_error}
    )


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
            "degradedCause": store.cause,
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
    return scrape(_service())


def _signatures(settings: Settings) -> str:
    if settings.webhook_off:
        return "POST /segment off (no SEGMENT_SHARED_SECRET)"
    return "not checked (BRIDGE_ALLOW_UNSIGNED=1)" if settings.unsigned else "required"

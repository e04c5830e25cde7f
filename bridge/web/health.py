"""``GET /healthz``: what is running, which mappings and which version, the last reload error."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from .responses import json_response

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Response:
    store = current_app.extensions["bridge"].store
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

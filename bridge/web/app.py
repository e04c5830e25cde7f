"""The Flask app factory: all set-up happens in ``create_app``, nothing at import time.

Gunicorn runs ``bridge.web.app:create_app()`` (see the Procfile and
``bridge/web/gunicorn_conf.py``); each worker builds its own service (mappings, Dub
session, thread pool, ledger connection) and closes it when it exits.
"""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ..core import logs
from ..core.clock import SYSTEM, Clock
from ..core.errors import BridgeError, PayloadTooLarge, error_body
from ..core.settings import Settings
from ..service.wiring import UNSIGNED_WARNING, WEBHOOK_OFF, build_service
from . import console, requests, scrape
from .health import health
from .responses import json_response
from .sdk import sdk
from .webhook import webhook

log = logging.getLogger("bridge.app")


def create_app(settings: Settings | None = None, *, clock: Clock = SYSTEM) -> Flask:
    """Build the service; raises ``ConfigError`` (naming the problem) on bad configuration."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    service = build_service(settings, clock=clock)

    app = Flask("bridge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["bridge"] = service
    app.register_blueprint(webhook)
    app.register_blueprint(sdk)
    app.register_blueprint(health)
    requests.install(app, clock)
    console.install(app, settings, clock)

    @app.errorhandler(BridgeError)
    def _bridge_error(exc: BridgeError) -> Response:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        requests.unavailable(exc.code)
        requests.refused(exc.status, exc.code, exc.message)
        return json_response(exc.to_dict(), exc.status, headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 413:  # raised by werkzeug for MAX_CONTENT_LENGTH
            too_large = PayloadTooLarge(f"the body is over {settings.max_body_bytes} bytes")
            return _bridge_error(too_large)
        code = (exc.name or "http_error").lower().replace(" ", "_")
        message = exc.description or exc.name
        requests.unavailable(code)
        requests.refused(exc.code or 500, code, message)
        return json_response(error_body(code, message), exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return json_response(error_body("internal_error", "internal error"), 500)

    service.start()
    if settings.unsigned and settings.allow_unsigned:
        log.warning(UNSIGNED_WARNING)
    elif settings.webhook_off:
        log.warning(WEBHOOK_OFF)
    if scrape.access(settings) == "closed":
        log.warning(scrape.CLOSED)
    log.info(
        "bridge ready",
        extra={
            "mappings": len(service.store.engine),
            "version": service.store.engine.version,
            "dubApiUrl": settings.dub_api_url,
            "ledger": service.ledger.kind if service.ledger is not None else "off",
            "metrics": scrape.access(settings),
        },
    )
    return app

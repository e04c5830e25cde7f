"""The Flask app factory: all set-up happens in ``create_app``, nothing at import time.

Gunicorn runs ``bridge.app:create_app()`` (see the Procfile); each worker builds its
own mappings, Dub session, thread pool and ledger connection.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from . import logs
from .delivery import Deliverer
from .dub_client import DubClient
from .errors import BridgeError, ConfigError, PayloadTooLarge
from .ledger import Ledger, SQLiteLedger
from .reload import MappingStore
from .settings import Settings
from .webhook import bp, json_response

log = logging.getLogger("bridge.app")
SEGMENT_RETRY_WINDOW = 4 * 3600.0  # Segment stops retrying after about four hours


@dataclass
class Bridge:
    settings: Settings
    store: MappingStore
    deliverer: Deliverer
    ledger: Ledger | None


def require_api_key(settings: Settings) -> str:
    if settings.api_key is None:
        raise ConfigError(
            "DUB_API_KEY is not set: the bridge will not run without sending. "
            "Set it to a Dub API key (or use `bridge replay --dry-run`, which needs none)."
        )
    return settings.api_key


def build_deliverer(settings: Settings, ledger: Ledger | None) -> Deliverer:
    client = DubClient(
        settings.dub_api_url,
        require_api_key(settings),
        pool_size=settings.concurrency,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )
    # With several workers, each takes its share of Dub's per-key limit.
    share = max(1, settings.rate_limit_per_minute // settings.workers)
    return Deliverer(
        client,
        ledger,
        concurrency=settings.concurrency,
        rate_limit_per_minute=share,
        max_attempts=settings.max_attempts,
    )


def create_app(settings: Settings | None = None) -> Flask:
    """Build the service; raises ``ConfigError`` (naming the problem) on bad configuration."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    require_api_key(settings)
    store = MappingStore(settings.mappings_dir, poll_seconds=settings.reload_seconds)
    ledger = (
        SQLiteLedger(
            settings.db_path, lease_seconds=settings.lease_seconds, background_checkpoints=True
        )
        if settings.ledger_enabled
        else None
    )
    deliverer = build_deliverer(settings, ledger)

    app = Flask("bridge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["bridge"] = Bridge(settings, store, deliverer, ledger)
    app.register_blueprint(bp)

    @app.errorhandler(BridgeError)
    def _bridge_error(exc: BridgeError) -> Response:
        return json_response(exc.to_dict(), exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "http_error").lower().replace(" ", "_")
        if exc.code == 413:  # raised by werkzeug for MAX_CONTENT_LENGTH
            too_large = PayloadTooLarge(f"the body is over {settings.max_body_bytes} bytes")
            return json_response(too_large.to_dict(), too_large.status)
        message = exc.description or exc.name
        return json_response({"error": {"code": code, "message": message}}, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return json_response(
            {"error": {"code": "internal_error", "message": "internal error"}}, 500
        )

    store.start()
    if ledger is not None:
        _start_maintenance(ledger, settings)
    log.info(
        "bridge ready",
        extra={
            "mappings": len(store.engine),
            "version": store.engine.version,
            "dubApiUrl": settings.dub_api_url,
        },
    )
    return app


CHECKPOINT_SECONDS = 1.0
SWEEP_SECONDS = 3600.0


def _start_maintenance(ledger: SQLiteLedger, settings: Settings) -> None:
    """Every second, checkpoint the WAL (so no request pays for it); every hour, give up
    on events Segment stopped retrying and prune rows past retention."""

    def run() -> None:
        tick = threading.Event()
        next_sweep = 0.0
        while True:
            try:
                ledger.checkpoint()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_SECONDS
                    counts: dict[str, Any] = ledger.sweep(
                        retention_seconds=settings.retention_days * 86400,
                        give_up_seconds=SEGMENT_RETRY_WINDOW,
                    )
                    if any(counts.values()):
                        log.info("ledger swept", extra=counts)
            except Exception:
                log.exception("ledger maintenance failed")
            tick.wait(CHECKPOINT_SECONDS)

    threading.Thread(target=run, name="ledger-maintenance", daemon=True).start()

"""The one log line per (event, mapping), at its final outcome, and the count beside it."""

from __future__ import annotations

import logging
from typing import Any

from .metrics import labelled, metrics
from .outcomes import WARN
from .results import Result

result_log = logging.getLogger("bridge.events")


def log_result(result: Result) -> None:
    """The one line per event and mapping: what happened, how long it took (and its count)."""
    labelled(metrics().events, result.mapping or "(none)", result.outcome).inc()
    level = logging.WARNING if result.outcome in WARN else logging.INFO
    if not result_log.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "messageId": result.message_id,
        "event": result.event,
        "mapping": result.mapping,
        "outcome": result.outcome,
        "dubStatus": result.status,
        "ms": result.elapsed_ms,
    }
    if result.attempts > 1:
        fields["attempts"] = result.attempts
    if result.errors:
        fields["errors"] = result.errors
    if result.warnings:
        fields["warnings"] = result.warnings
    if result.dub_error:
        fields["dubError"] = result.dub_error
    if result.reason:
        fields["reason"] = result.reason
    # The standard way: the application's record factory, logger class, filters and
    # handlers all see the line as any other; its fields travel in ``extra``.
    result_log.log(level, "event", extra={"fields": fields})

"""Structured logs: one JSON line per record, one record per event and mapping.

The API key never reaches a log (it lives only in the HTTP session's headers), and
every email address in a message or field is masked.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

from .jsoncodec import dumps_str
from .masking import mask_emails
from .results import Result

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
result_log = logging.getLogger("bridge.events")
_WARN = frozenset({"invalid", "rejected", "failed", "uncertain", "gave_up"})


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(int(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__.get("fields")
        if fields is not None:  # log_result's fast path: one dict, no scan of the record
            entry.update(fields)
        else:
            for key, value in record.__dict__.items():
                if key not in _RESERVED and not key.startswith("_"):
                    entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        text = dumps_str(entry)
        return mask_emails(text) if "@" in text else text


@functools.lru_cache(maxsize=4)
def _timestamp(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


# Libraries whose warnings belong in the bridge's log, as JSON like the rest.
LIBRARIES = ("psycopg",)


def configure(level: str = "INFO") -> None:
    """Send the bridge's logs (and its libraries' warnings) to stderr as JSON lines
    (idempotent)."""
    for name, at in (("bridge", level), *((lib, "WARNING") for lib in LIBRARIES)):
        logger = logging.getLogger(name)
        logger.setLevel(at)
        if not any(getattr(h, "_bridge", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JSONFormatter())
            handler._bridge = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.propagate = False


def log_result(result: Result) -> None:
    """The one line per event and mapping: what happened, how long it took."""
    level = logging.WARNING if result.outcome in _WARN else logging.INFO
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
    result_log.log(level, "event", extra={"fields": fields})

"""Structured logs: one JSON line per record, one record per event and mapping.

Every line carries the worker's pid and, inside a request, its request id and the way
in its events came by (also on the lines a background call writes after the answer).
The API key never reaches a log (it lives only in the HTTP session's headers), and
every email address in a message or field is masked.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import sys
import time
from typing import Any

from .jsoncodec import dumps_str
from .masking import mask_emails

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# The request being handled by this thread (and by the threads sending its calls).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Which way in (a write key's name, "rudderstack") the request's events came by, if not
# Segment's webhook: on every line the request causes, as ``source``.
SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("source", default=None)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(int(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process or os.getpid(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["requestId"] = request_id
        source = SOURCE.get()
        if source is not None:
            entry["source"] = source
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
    # The logging HOWTO's optimisations: a line shows neither the caller's file and line
    # nor the thread, so no record looks them up (one record per event and mapping).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    for name, at in (("bridge", level), *((lib, "WARNING") for lib in LIBRARIES)):
        logger = logging.getLogger(name)
        logger.setLevel(at)
        if not any(getattr(h, "_bridge", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JSONFormatter())
            handler._bridge = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.propagate = False

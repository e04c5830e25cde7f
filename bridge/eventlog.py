"""The one log line per (event, mapping), at its final outcome, and the count beside it."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from .metrics import labelled, metrics
from .outcomes import WARN
from .results import Result

result_log = logging.getLogger("bridge.events")
_MAKE_RECORD = logging.Logger.makeRecord


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
    if (
        logging.getLogRecordFactory() is logging.LogRecord
        and type(result_log).makeRecord is _MAKE_RECORD
    ):
        result_log.handle(_record(level, fields))
    else:  # the application makes its own records: let it
        result_log.log(level, "event", extra={"fields": fields})


_template: dict[str, Any] | None = None


def _record(level: int, fields: dict[str, Any]) -> logging.LogRecord:
    """The record ``Logger.log`` would make, filled from a template (its file, line and
    function are the same on every line): ``makeRecord`` was half the cost of a line, and
    this is the line written for every event. Handlers and filters see a complete record."""
    global _template
    if _template is None:
        made = result_log.makeRecord(
            result_log.name, level, "(unknown file)", 0, "event", (), None, "(unknown function)"
        )
        _template = made.__dict__.copy()
    record = logging.LogRecord.__new__(logging.LogRecord)
    state = record.__dict__
    state.update(_template)
    created = time.time()
    state["created"] = created
    state["msecs"] = int((created - int(created)) * 1000) + 0.0
    # From the template's own pair: the start time's unit differs between versions.
    since = (created - _template["created"]) * 1000
    state["relativeCreated"] = _template["relativeCreated"] + since
    state["levelno"] = level
    state["levelname"] = logging.getLevelName(level)
    # What LogRecord.__init__ finds anew for every record, as it finds it.
    state["process"] = os.getpid() if logging.logProcesses else None
    if logging.logThreads:
        state["thread"] = threading.get_ident()
        state["threadName"] = threading.current_thread().name
    else:
        state["thread"] = state["threadName"] = None
    state["processName"] = _process_name() if logging.logMultiprocessing else None
    if "taskName" in state:  # Python 3.12+
        state["taskName"] = _task_name()
    state["fields"] = fields
    return record


def _process_name() -> str:
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return "MainProcess"
    try:
        return str(multiprocessing.current_process().name)
    except Exception:  # as LogRecord: a name is never worth an exception
        return "MainProcess"


def _task_name() -> str | None:
    """The current asyncio task's name, as ``LogRecord`` finds it (Python 3.12+)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or not getattr(logging, "logAsyncioTasks", True):
        return None
    try:
        task = asyncio.current_task()
    except Exception:  # no running loop
        return None
    return task.get_name() if task is not None else None

"""Structured logs: one JSON line per record, one record per event and mapping.

Every line carries the worker's pid and, inside a request, its request id (also on
the lines a background call writes after the answer). The API key never reaches a
log (it lives only in the HTTP session's headers), and every email address in a
message or field is masked.

A process that must write nothing but JSON lines on stderr (gunicorn's master and
workers) calls ``guard_stderr``: an uncaught exception, in any thread, is logged as one
line with its traceback, and whatever else is written to ``sys.stderr`` around the logging
(gunicorn prints a failed worker's error there; a library may print a traceback by hand)
becomes JSON lines too, a printed traceback one line.
"""

from __future__ import annotations

import contextvars
import functools
import io
import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

import orjson

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
        # Masked value by value, never on the JSON text, where an escape (\u001f@x) could
        # be taken for part of an address and broken.
        return dumps_str(_masked(entry)) if "@" in text else text


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_emails(value) if "@" in value else value
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(item) for item in value]
    return value


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
            handler = logging.StreamHandler(_stderr())
            handler.setFormatter(JSONFormatter())
            handler._bridge = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.propagate = False


def _stderr() -> TextIO:
    """The real stderr: the bridge's own lines are JSON already, they skip ``StrayText``."""
    stream = sys.stderr
    return stream.raw if isinstance(stream, StrayText) else stream


crash_log = logging.getLogger("bridge.crash")
_TRACEBACK = "Traceback (most recent call last):"


class StrayText(io.TextIOBase):
    """``sys.stderr`` for text written around the logging: each line becomes a JSON record
    (level error, logger ``stderr``), a printed traceback one record, from its first line
    to the exception's; a whole JSON line (a log handler's) passes as it is."""

    def __init__(self, raw: TextIO):
        super().__init__()
        self.raw = raw
        self._partial = ""
        self._traceback: list[str] = []
        self._lock = threading.Lock()
        self._formatter = JSONFormatter()

    def write(self, text: str) -> int:
        # A log handler writes a whole line at once: it passes without taking the lock.
        if not self._partial and text.find("\n") == len(text) - 1 and _is_json(text[:-1]):
            self.raw.write(text)
            return len(text)
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            records = [r for r in map(self._take, lines) if r is not None]
            for record in records:
                self.raw.write(record + "\n")
        return len(text)

    def _take(self, line: str) -> str | None:
        """A line in; a JSON record out when one is complete."""
        if self._traceback:
            self._traceback.append(line)
            if line[:1] in (" ", "\t", "") or line.startswith(("During handling", "The above")):
                return None
            text, self._traceback = "\n".join(self._traceback), []
            return self._record(line, text)
        if line.startswith(_TRACEBACK):
            self._traceback = [line]
            return None
        if not line.strip():
            return None
        if _is_json(line):
            return line
        return self._record(line, None)

    def _record(self, message: str, traceback: str | None) -> str:
        record = logging.makeLogRecord(
            {"name": "stderr", "levelno": logging.ERROR, "levelname": "ERROR", "msg": message}
        )
        line = self._formatter.format(record)
        if traceback is None:
            return line
        return line[:-1] + f',"exc":{dumps_str(mask_emails(traceback))}}}'

    def flush(self) -> None:
        with self._lock:
            if self._partial and not self._traceback:
                self.raw.write(self._record(self._partial, None) + "\n")
                self._partial = ""
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return self.raw.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.raw.encoding


def _is_json(line: str) -> bool:
    """Whether a line is one JSON object already (a log line: passed as it is)."""
    if not line.startswith('{"'):
        return False
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def guard_stderr() -> None:
    """Only JSON lines on stderr from here on, crashes included (idempotent; a forked
    worker inherits it)."""
    if not isinstance(sys.stderr, StrayText):
        sys.stderr = StrayText(sys.stderr)
    sys.excepthook = _crashed
    threading.excepthook = _thread_crashed


def _crashed(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    _log_crash(f"crashed: {kind.__name__}: {error}", (kind, error, traceback))


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    where = args.thread.name if args.thread is not None else "a thread"
    error = (args.exc_type, args.exc_value, args.exc_traceback)
    _log_crash(f"{where} crashed: {args.exc_type.__name__}: {args.exc_value}", error)


def _log_crash(message: str, exc_info: Any) -> None:
    record = crash_log.makeRecord(crash_log.name, logging.CRITICAL, "", 0, message, (), exc_info)
    stream = _stderr()
    stream.write(JSONFormatter().format(record) + "\n")
    stream.flush()

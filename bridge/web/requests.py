"""Around every request: its id, its metrics, and one log line for every request refused.

The id comes from ``X-Request-Id`` (when it is a plain token) or is made here; it is
on every log line the request causes and in the answer's header. A refused request
(400, 401, 413, 503...) gets one line with the status and the reason, never the body.
``POST /segment`` is counted by status (a 503 also by its reason, which whoever answers
it puts in the WSGI environment under ``REASON``) and timed from the request to its
answer, on the service's clock.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, request

from ..core.clock import SYSTEM, Clock
from ..core.logs import REQUEST_ID
from ..core.metrics import labelled, metrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("bridge.web")
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEADER = "X-Request-Id"
REASON = "bridge.unavailable_reason"  # why a 503 was answered: a short fixed word


class RequestIds:
    """WSGI middleware around the Flask app: the request id, its header, the request metric.

    A middleware rather than Flask's before/after/teardown hooks: each hook costs a
    coroutine check and proxy look-ups on every request, together about 6% of the
    instructions of a single-event request (callgrind), for three dictionary writes.
    """

    def __init__(self, app: WSGIApplication, clock: Clock = SYSTEM) -> None:
        self.app = app
        self.clock = clock

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = make_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        environ["bridge.request_id"] = request_id
        counted = is_webhook(environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
        started = self.clock.monotonic() if counted else 0.0

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append((HEADER, request_id))
            if counted:
                count_webhook(status.partition(" ")[0], environ.get(REASON, ""))
                metrics().webhook_seconds.observe(max(0.0, self.clock.monotonic() - started))
            return start_response(status, headers, exc_info)

        token = REQUEST_ID.set(request_id)
        try:
            return self.app(environ, start)
        finally:
            REQUEST_ID.reset(token)


def make_request_id(given: str) -> str:
    """The client's X-Request-Id when it is a plain token, else a new one."""
    return given if _TOKEN.fullmatch(given) else os.urandom(16).hex()


def is_webhook(method: str | None, path: str | None) -> bool:
    """Whether a request counts in ``bridge_webhook_requests_total``: Segment's POSTs."""
    return method == "POST" and path == "/segment"


def count_webhook(status: str, reason: str = "") -> None:
    """One answer of ``POST /segment``; ``reason`` (a fixed word, the error's code) is kept
    for a 503 only, so the other statuses keep one series each whoever answered them."""
    labelled(metrics().webhook_requests, status, reason if status == "503" else "").inc()


def unavailable(reason: str) -> None:
    """Say why this request is answered 503 (read when the answer starts)."""
    request.environ[REASON] = reason


def install(app: Flask, clock: Clock = SYSTEM) -> None:
    app.wsgi_app = RequestIds(app.wsgi_app, clock)  # type: ignore[method-assign]


def refused(status: int, code: str, reason: str) -> None:
    """The one line for a request the app answered with an error."""
    log_refusal(status, code, reason, request.method, request.path, request.content_length)


def log_refusal(
    status: int,
    code: str,
    reason: str,
    method: str | None,
    path: str | None,
    size: int | None,
    request_id: str | None = None,
) -> None:
    """The one line for every refused request, whoever answered it (the app, or the worker
    before the app saw it: that one passes its request id, which no context holds)."""
    fields = {"status": status, "code": code, "reason": reason[:300], "method": method}
    fields |= {"path": path, "bytes": size}
    if request_id is not None:
        fields["requestId"] = request_id
    log.warning("request refused", extra={"fields": fields})

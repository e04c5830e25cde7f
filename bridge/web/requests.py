"""Around every request: its id, its metric, and one log line for every request refused.

The id comes from ``X-Request-Id`` (when it is a plain token) or is made here; it is
on every log line the request causes and in the answer's header. A refused request
(400, 401, 413, 503...) gets one line with the status and the reason, never the body.
"""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, g, request

from ..logs import REQUEST_ID
from ..metrics import labelled, metrics

log = logging.getLogger("bridge.web")
_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
HEADER = "X-Request-Id"


def install(app: Flask) -> None:
    @app.before_request
    def _begin() -> None:
        given = request.headers.get(HEADER, "")
        request_id = given if _TOKEN.match(given) else uuid.uuid4().hex
        g.request_id = request_id
        g.request_id_token = REQUEST_ID.set(request_id)
        request.environ["bridge.request_id"] = request_id

    @app.after_request
    def _end(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id", "")
        if request.path == "/segment":
            labelled(metrics().webhook_requests, str(response.status_code)).inc()
        return response

    @app.teardown_request
    def _forget(_: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            REQUEST_ID.reset(token)


def refused(status: int, code: str, reason: str) -> None:
    """The one line for a request answered with an error."""
    log.warning(
        "request refused",
        extra={
            "fields": {
                "status": status,
                "code": code,
                "reason": reason[:300],
                "method": request.method,
                "path": request.path,
                "bytes": request.content_length,
            }
        },
    )

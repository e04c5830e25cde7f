"""gunicorn's own logs as JSON, like the bridge's: its error log, and one access line per
request carrying the request id (no query string, no body: they may hold personal data)."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

from ..core.logs import JSONFormatter

access_log = logging.getLogger("bridge.access")


class JSONLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JSONFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Every request, whatever the access-log settings: method, path, status, size, time."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields = {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": getattr(resp, "status_code", None),
            "bytes": getattr(resp, "sent", None),
            "ms": round(request_time.total_seconds() * 1000, 1),
            "remote": environ.get("REMOTE_ADDR"),
            "requestId": environ.get("bridge.request_id"),
        }
        access_log.info("request", extra={"fields": fields})

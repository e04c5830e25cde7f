"""gunicorn's hooks for the bridge (the Procfile passes ``-c python:bridge.web.gunicorn_conf``).

Each worker builds its service in ``create_app``; when the worker exits (a
restart, SIGTERM, max requests), its background threads are stopped and its
ledger connection and HTTP pool closed.
"""

from __future__ import annotations

from typing import Any


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("bridge")
    if service is not None:
        service.close()

"""gunicorn's hooks for the bridge (the Procfile passes ``-c python:bridge.web.gunicorn_conf``).

The master checks everything once before any worker starts (settings, mappings,
the ledger reachable and migrated) and stops with one line per problem, no
traceback. Each worker builds its service in ``create_app``; when it exits (a
restart, SIGTERM, max requests), its background threads are stopped and its
ledger connections and HTTP pool closed.
"""

from __future__ import annotations

import sys
from typing import Any


def on_starting(server: Any) -> None:
    from ..errors import ConfigError
    from ..settings import Settings
    from ..startup import check

    try:
        problems = check(Settings.from_env())
    except ConfigError as exc:
        problems = [exc.message]
    if problems:
        sys.stderr.write("".join(f"error: {p}\n" if not p.startswith(" ") else f"{p}\n"
                                 for p in problems))  # fmt: skip
        sys.stderr.flush()
        raise SystemExit(1)


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("bridge")
    if service is not None:
        service.close()

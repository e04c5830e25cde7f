"""gunicorn's configuration for the bridge (the Procfile: ``-c python:bridge.web.gunicorn_conf``).

- Logs are JSON, gunicorn's own included (``JSONLogger``), one access line per request;
  crashes and text printed on stderr too (``logs.guard_stderr``: from the first line when
  the Procfile's ``bridge.web.gunicorn_main`` runs gunicorn, else from here, before any
  worker forks).
- The master checks everything once before any worker starts (settings, the ledger
  reachable and migrated, the mappings) and stops with one JSON line per problem.
- The master makes the metrics directory that prometheus_client's multiprocess mode
  needs (unless one is given), forgets a dead worker's gauges, and removes the
  directory at exit.
- On SIGTERM a worker logs that its drain starts (with the Dub calls still in flight),
  finishes its requests and calls, closes its service, and logs that the drain ended.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any, NoReturn

logger_class = "bridge.web.gunicorn_logs.JSONLogger"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_MADE_METRICS_DIR: list[str] = []


def on_starting(server: Any) -> None:
    from ..core import logs

    logs.guard_stderr()  # before any worker forks: they inherit it
    # Before anything imports prometheus_client: it picks its storage when first imported,
    # and the workers inherit the master's choice.
    if not os.environ.get(MULTIPROC_ENV):
        made = tempfile.mkdtemp(prefix="bridge-metrics-")
        _MADE_METRICS_DIR.append(made)
        os.environ[MULTIPROC_ENV] = made

    from ..core.errors import ConfigError
    from ..core.settings import Settings
    from ..service.startup import check

    try:
        report = check(Settings.from_env())
    except ConfigError as exc:
        _stop(server, [exc.message])
    for warning in report.warnings:
        server.log.warning(warning)
    if not report.ok:
        _stop(server, report.problems)


def _stop(server: Any, problems: list[str]) -> NoReturn:
    """One line per problem, and out: no worker starts (on_exit does not run, so clean here)."""
    for problem in problems:
        server.log.error(problem)
    on_exit(server)
    raise SystemExit(1)


def post_worker_init(worker: Any) -> None:
    stop = worker.handle_exit  # gunicorn's own graceful stop

    def drain(signum: int, frame: Any) -> None:
        service = _service(worker)
        if service is not None and not service.draining:
            service.draining = True
            worker.log.info(f"drain started: {service.deliverer.in_flight} Dub call(s) in flight")
        stop(signum, frame)

    signal.signal(signal.SIGTERM, drain)


def worker_exit(server: Any, worker: Any) -> None:
    service = _service(worker)
    if service is not None:
        left = service.deliverer.in_flight
        service.close()  # waits for the calls still in flight, and records their answers
        if service.draining:
            worker.log.info(f"drain ended: {left} Dub call(s) were still in flight and finished")


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    for made in _MADE_METRICS_DIR:
        shutil.rmtree(made, ignore_errors=True)


def _service(worker: Any) -> Any:
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("bridge")

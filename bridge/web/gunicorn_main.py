"""The Procfile's web process: ``python -m bridge.web.gunicorn_main <gunicorn's arguments>``.

gunicorn itself, run in this process after two things it cannot do for itself:

- stderr carries JSON lines only from the first line on (``logs.guard_stderr``): what
  gunicorn prints before its hooks run (a bad option value), a worker that fails to boot
  and any crash are JSON lines, not text;
- the settings are read before gunicorn is imported: gunicorn reads ``WEB_CONCURRENCY``
  when its module loads, so ``WEB_CONCURRENCY=abc`` was a bare traceback before any of
  the bridge's checks ran. A bad setting is one JSON line naming it, and exit 1.

``sys.argv[0]`` becomes the ``gunicorn`` command's path, as when that command runs:
gunicorn's re-exec on ``USR2`` runs ``sys.argv`` again.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from ..core import logs
from ..core.errors import ConfigError
from ..core.settings import Settings

log = logging.getLogger("bridge.start")


def main() -> None:
    logs.guard_stderr()
    logs.configure()
    try:
        Settings.from_env()
    except ConfigError as exc:
        log.error(exc.message)
        raise SystemExit(1) from None
    # The command installed beside this interpreter (its venv), else the one on PATH.
    beside = Path(sys.executable).parent / "gunicorn"
    command = str(beside) if beside.is_file() else shutil.which("gunicorn")
    if command is not None:
        sys.argv[0] = command
    from gunicorn.app.wsgiapp import run

    run(prog="gunicorn")  # reads its arguments from sys.argv, as the gunicorn command does


if __name__ == "__main__":
    main()

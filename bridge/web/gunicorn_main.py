"""The Procfile's web process: ``python -m bridge.web.gunicorn_main <gunicorn's arguments>``.

gunicorn reads ``WEB_CONCURRENCY`` when its module loads, before any of the bridge's
checks (``gunicorn_conf.on_starting``) run, so ``WEB_CONCURRENCY=abc`` was a bare
traceback. This reads the settings first (a bad one is one JSON line naming it, exit 1),
then becomes the ``gunicorn`` command with the same arguments (``exec``: same process, so
gunicorn's own re-exec on ``USR2`` starts it as ever). From gunicorn's ``on_starting`` on,
stderr is JSON-only (``logs.guard_stderr``), for the master and every worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from .. import logs
from ..errors import ConfigError
from ..settings import Settings

log = logging.getLogger("bridge.start")


def main() -> None:
    logs.guard_stderr()
    logs.configure()
    try:
        Settings.from_env()
    except ConfigError as exc:
        log.error(exc.message)
        raise SystemExit(1) from None
    # The one installed beside this interpreter (its venv), else the one on PATH.
    beside = Path(sys.executable).parent / "gunicorn"
    gunicorn = str(beside) if beside.is_file() else shutil.which("gunicorn")
    if gunicorn is None:
        log.error("the gunicorn command is not on PATH (is the package installed here?)")
        raise SystemExit(1)
    sys.stderr.flush()
    os.execv(gunicorn, [gunicorn, *sys.argv[1:]])  # noqa: S606 - the Procfile's own arguments


if __name__ == "__main__":
    main()

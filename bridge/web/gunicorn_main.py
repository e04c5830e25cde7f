"""The Procfile's web process: ``python -m bridge.web.gunicorn_main <gunicorn's arguments>``.

gunicorn itself, run from here, after two things it cannot do for itself:

- stderr carries JSON lines only from the first line on (``logs.guard_stderr``): a
  worker that fails to boot, or any crash, is a JSON line with its traceback, not text;
- the settings are read before gunicorn is imported: gunicorn reads ``WEB_CONCURRENCY``
  when its module loads, so ``WEB_CONCURRENCY=abc`` was a bare traceback before any of
  the bridge's checks ran. A bad setting is one JSON line naming it, and exit 1.
"""

from __future__ import annotations

import logging

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
    from gunicorn.app.wsgiapp import run

    run(prog="gunicorn")  # reads its arguments from sys.argv, as the gunicorn command does


if __name__ == "__main__":
    main()

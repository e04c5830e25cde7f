"""The active mappings, and picking up edits to the files without a restart.

A daemon thread polls the mapping directory (file names, sizes and mtimes) every
``BRIDGE_RELOAD_SECONDS``. A change is loaded in full and checked; only a clean
load replaces the active engine. An invalid edit is logged with all its errors,
the last good mappings stay active, and ``/healthz`` shows the error.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .engine import Engine
from .errors import MappingFileError
from .loader import load_mappings, mapping_files

log = logging.getLogger("bridge.reload")


class MappingStore:
    def __init__(self, directory: Path, *, poll_seconds: float = 2.0):
        self.directory = Path(directory)
        self.poll_seconds = poll_seconds
        self._signature = self._snapshot()
        self.engine: Engine = load_mappings(self.directory).engine  # start-up: errors raise
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        try:
            return tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in mapping_files(self.directory)
            )
        except OSError:
            return ()

    def check(self) -> bool:
        """Reload when the files changed; True when a new engine became active."""
        signature = self._snapshot()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            engine = load_mappings(self.directory).engine
        except MappingFileError as exc:
            self.last_error = str(exc)
            log.error(
                "mapping reload rejected; the last good mappings stay active",
                extra={"errors": [str(i) for i in exc.issues], "active": self.engine.version},
            )
            return False
        except OSError as exc:
            self.last_error = f"cannot read mappings: {exc}"
            log.error("mapping reload failed", extra={"error": self.last_error})
            return False
        self.engine, self.loaded_at, self.last_error = engine, time.time(), None
        log.info("mappings reloaded", extra={"version": engine.version, "mappings": len(engine)})
        return True

    def start(self) -> None:
        if self.poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mapping-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception:  # the poller must outlive any surprise
                log.exception("mapping poll failed")

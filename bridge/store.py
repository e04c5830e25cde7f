"""The active mappings, and picking up edits to the files without a restart.

A poller checks the mapping directory (file names, sizes and mtimes) every
``BRIDGE_RELOAD_SECONDS``. A change is loaded in full and checked; only a clean
load replaces the active engine. An invalid edit is logged with all its errors,
the last good mappings stay active, and ``/healthz`` shows the error.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .clock import SYSTEM, Clock
from .errors import MappingFileError
from .mapping.engine import Engine
from .poller import Poller
from .sources import load_directory, mapping_files

log = logging.getLogger("bridge.reload")


class MappingStore:
    def __init__(self, directory: Path, *, poll_seconds: float = 2.0, clock: Clock = SYSTEM):
        self.directory = Path(directory)
        self.clock = clock
        self._signature = self._snapshot()
        self.engine: Engine = load_directory(self.directory).engine  # start-up: errors raise
        self.loaded_at = clock.time()
        self.last_error: str | None = None
        self.poller = Poller("mapping-reload", poll_seconds, self.check)

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
            engine = load_directory(self.directory).engine
        except MappingFileError as exc:
            self.last_error = str(exc)
            log.error(
                "mapping reload rejected; the last good mappings stay active",
                extra={"errors": [str(i) for i in exc.issues], "active": self.engine.version},
            )
            return False
        self.engine, self.loaded_at, self.last_error = engine, self.clock.time(), None
        log.info("mappings reloaded", extra={"version": engine.version, "mappings": len(engine)})
        return True

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

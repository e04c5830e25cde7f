"""The active mappings: from the files on disk, or from the set published in the database.

A poller checks every ``BRIDGE_RELOAD_SECONDS``: the files (names, sizes, mtimes),
or the database's active version (``BRIDGE_MAPPINGS_SOURCE=database``). Only a
set that loads cleanly replaces the active one, and every such set is kept in the
ledger's database by version. So an invalid edit is logged with all its errors and
the last good mappings stay active (``/healthz`` says ``degraded``); and a worker
that starts while the files are invalid starts from the last good set instead of
failing: a file already rejected never becomes an outage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .clock import SYSTEM, Clock
from .errors import LedgerError, MappingFileError
from .ledger.base import Ledger, MappingSet
from .mapping.engine import Engine
from .mapping.loader import Source, load_sources
from .metrics import metrics, set_mapping_version
from .poller import Poller
from .sources import mapping_files, read_directory

log = logging.getLogger("bridge.reload")


class MappingStore:
    def __init__(
        self,
        directory: Path,
        *,
        source: str = "files",
        ledger: Ledger | None = None,
        poll_seconds: float = 2.0,
        clock: Clock = SYSTEM,
    ):
        self.directory = Path(directory)
        self.source = source
        # Memory would keep nothing across a restart: only a database is worth asking.
        self.ledger = ledger if ledger is not None and ledger.shared_across_processes else None
        self.clock = clock
        self.last_error: str | None = None
        self.origin = "files"  # files | database | last-good
        self._signature = self._snapshot()
        self._active_version: str | None = None
        self.engine: Engine = self._first_engine()
        self.loaded_at = clock.time()
        set_mapping_version(self.engine.version, None)
        self.poller = Poller("mapping-reload", poll_seconds, self.check)

    @property
    def degraded(self) -> bool:
        """Running on mappings other than the files say: the files were rejected."""
        return self.last_error is not None

    # --- start-up -----------------------------------------------------------------------------

    def _first_engine(self) -> Engine:
        if self.source == "database":
            published = self._published()
            if published is not None:
                self._active_version = published.version
                self.origin = "database"
                return self._stored_engine(published)
            log.warning("no mapping set is published yet: following the files until one is")
        try:
            return self._files_engine()
        except MappingFileError as exc:
            last = self._last_good()
            if last is None:
                raise  # nothing good to fall back on: refuse to start, with every error
            self.last_error = str(exc)
            self.origin = "last-good"
            log.error(
                "mapping files rejected at start-up; starting from the last good set",
                extra={"errors": [str(i) for i in exc.issues], "version": last.version},
            )
            return self._stored_engine(last)

    # --- the poll -----------------------------------------------------------------------------

    def check(self) -> bool:
        """Reload when the source changed; True when a new engine became active."""
        if self.source == "database":
            published = self._published()
            if published is not None:
                if published.version == self._active_version:
                    return False
                return self._switch_to_published(published)
        signature = self._snapshot()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            engine = self._files_engine()
        except MappingFileError as exc:
            return self._rejected(exc)
        self.origin = "files"
        return self._activate(engine)

    def _switch_to_published(self, published: MappingSet) -> bool:
        try:
            engine = self._stored_engine(published)
        except MappingFileError as exc:
            self._active_version = published.version  # do not retry the same set every poll
            return self._rejected(exc)
        self._active_version = published.version
        self.origin = "database"
        return self._activate(engine)

    def _activate(self, engine: Engine) -> bool:
        previous = self.engine.version
        self.engine, self.loaded_at, self.last_error = engine, self.clock.time(), None
        set_mapping_version(engine.version, previous)
        metrics().reloads.labels("loaded").inc()
        log.info(
            "mappings reloaded",
            extra={"version": engine.version, "mappings": len(engine), "origin": self.origin},
        )
        return True

    def _rejected(self, exc: MappingFileError) -> bool:
        self.last_error = str(exc)
        metrics().reloads.labels("rejected").inc()
        log.error(
            "mapping reload rejected; the last good mappings stay active",
            extra={"errors": [str(i) for i in exc.issues], "active": self.engine.version},
        )
        return False

    # --- loading ------------------------------------------------------------------------------

    def _files_engine(self) -> Engine:
        sources = read_directory(self.directory)
        engine = load_sources(sources, where=str(self.directory)).engine
        self._keep(engine.version, sources)
        return engine

    def _stored_engine(self, kept: MappingSet) -> Engine:
        sources = [Source(name, text.encode()) for name, text in kept.files]
        return load_sources(sources, where=f"mapping set {kept.version}").engine

    def _keep(self, version: str, sources: Sequence[Source]) -> None:
        if self.ledger is None:
            return
        files = [(s.basename, s.text.decode("utf-8", "replace")) for s in sources]
        try:
            self.ledger.keep_mapping_set(version, files, "files")
        except LedgerError as exc:  # the mappings still work; only the fallback is older
            log.warning("could not keep the mapping set", extra={"error": exc.message})

    def _last_good(self) -> MappingSet | None:
        try:
            return self.ledger.last_good_mapping_set() if self.ledger is not None else None
        except LedgerError:
            return None

    def _published(self) -> MappingSet | None:
        try:
            return self.ledger.active_mapping_set() if self.ledger is not None else None
        except LedgerError as exc:
            log.warning("could not read the published mappings", extra={"error": exc.message})
            return None

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        try:
            return tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in mapping_files(self.directory)
            )
        except OSError:
            return ()

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

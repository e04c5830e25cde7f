"""The active mappings: from the files on disk, or from the set published in the database.

A poller checks every ``BRIDGE_RELOAD_SECONDS``: the files (names, sizes, mtimes),
or the database's active version (``BRIDGE_MAPPINGS_SOURCE=database``). Only a
set that loads cleanly replaces the active one, and every such set is kept in the
ledger's database by version. So an invalid edit, or a published set this release
cannot load (a newer construct published during a rolling deploy, a code rollback
after a publish), is logged with its errors and the mappings running stay active
(``/healthz`` and ``/readyz`` say ``degraded`` and why, and so does a gauge). A
worker that starts then starts from the last set this release can load instead of
failing: a set already refused never becomes an outage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from ..core.clock import SYSTEM, Clock
from ..core.errors import LedgerError, MappingFileError, MappingIssue
from ..core.metrics import metrics, set_mapping_version
from ..core.poller import Poller
from ..ledger.base import Activation, Ledger, MappingSet
from ..mapping.engine import Engine
from ..mapping.loader import MappingText, load_texts
from .mapping_files import mapping_files, read_directory

log = logging.getLogger("bridge.reload")
T = TypeVar("T")
PUBLISHED = "BRIDGE_MAPPINGS_SOURCE=database"  # where a refusal is told
FALLBACKS = 20  # earlier activations, and kept sets, tried at most (each is a full load)


class Degraded(StrEnum):
    """Why a worker runs mappings other than its source says (the gauge's label)."""

    FILES_REJECTED = "files_rejected"
    PUBLISHED_UNLOADABLE = "published_unloadable"


@dataclass(frozen=True, slots=True)
class Start:
    """What a worker starts from, and why when it is not what its source says."""

    engine: Engine
    origin: str  # files | database | last-good
    followed: str | None  # the published version followed (or refused), database source
    problem: str | None = None
    cause: Degraded | None = None

    @property
    def starting_from(self) -> str:
        return "the files" if self.origin == "files" else f"mapping set {self.engine.version}"


def refusal(version: str, exc: MappingFileError) -> str:
    """One line: which published set this release refuses, and its first error."""
    first = exc.issues[0] if exc.issues else exc.message
    return (
        f"published mapping set {version} cannot be loaded by this release: "
        f"{len(exc.issues)} error(s), the first: {first}"
    )


def stored_engine(kept: MappingSet) -> Engine:
    sources = [MappingText(name, text.encode()) for name, text in kept.files]
    return load_texts(sources, where=f"mapping set {kept.version}").engine


def choose_start(
    source: str,
    ledger: Ledger | None,
    files: Callable[[], Engine],
) -> Start:
    """What a worker starts from: the published set (database source) or the files; when
    that cannot be loaded, the last set this release can load, degraded. Raises
    ``MappingFileError`` only when nothing loads. ``files`` loads the folder (the store's
    also keeps what loaded)."""
    if source == "database":
        published = _ask(ledger, lambda lg: lg.active_mapping_set(), None)
        if published is not None:
            try:
                return Start(stored_engine(published), "database", published.version)
            except MappingFileError as exc:
                problem = refusal(published.version, exc)
                fallback = _fallback(ledger, _earlier_published(ledger, published.version), files)
                if fallback is None:
                    nothing = problem + "; and nothing this release can load to start from"
                    raise MappingFileError([MappingIssue(PUBLISHED, None, "", nothing)]) from exc
                engine, origin = fallback
                return Start(
                    engine, origin, published.version, problem, Degraded.PUBLISHED_UNLOADABLE
                )
        log.warning("no mapping set is published yet: following the files until one is")
    try:
        return Start(files(), "files", None)
    except MappingFileError as exc:
        fallback = _fallback(ledger, iter(()), None)
        if fallback is None:
            raise  # nothing good to fall back on: refuse to start, with every error
        return Start(fallback[0], fallback[1], None, str(exc), Degraded.FILES_REJECTED)


def _earlier_published(ledger: Ledger | None, refused: str) -> Iterator[MappingSet]:
    none: list[Activation] = []
    seen = {refused}
    for activation in _ask(ledger, lambda lg: lg.activations(FALLBACKS), none):
        if activation.version not in seen:
            seen.add(activation.version)

            def kept_set(lg: Ledger, version: str = activation.version) -> MappingSet | None:
                return lg.mapping_set(version)

            kept = _ask(ledger, kept_set, None)
            if kept is not None:
                yield kept


def _fallback(
    ledger: Ledger | None,
    published: Iterator[MappingSet],
    files: Callable[[], Engine] | None,
) -> tuple[Engine, str] | None:
    """The first that this release loads: earlier published sets, the files, then the
    sets kept, the most recently loaded first."""
    for kept in published:
        if (engine := _loads(kept)) is not None:
            return engine, "last-good"
    if files is not None:
        try:
            return files(), "files"
        except MappingFileError:
            pass
    nothing: list[MappingSet] = []
    for kept in _ask(ledger, lambda lg: lg.mapping_sets(FALLBACKS), nothing):
        if (engine := _loads(kept)) is not None:
            return engine, "last-good"
    return None


def _loads(kept: MappingSet) -> Engine | None:
    try:
        return stored_engine(kept)
    except MappingFileError as exc:
        log.warning(
            "a kept mapping set cannot be loaded by this release; trying an older one",
            extra={"version": kept.version, "errors": [str(i) for i in exc.issues][:5]},
        )
        return None


def _ask(ledger: Ledger | None, question: Callable[[Ledger], T], otherwise: T) -> T:
    """The ledger's answer; ``otherwise`` without a shared ledger or when it does not answer."""
    if ledger is None or not ledger.shared_across_processes:
        return otherwise
    try:
        return question(ledger)
    except LedgerError as exc:
        log.warning("could not read the kept mapping sets", extra={"error": exc.message})
        return otherwise


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
        self._signature = self._snapshot()
        start = choose_start(source, self.ledger, self._files_engine)
        self.engine: Engine = start.engine
        self.origin = start.origin  # files | database | last-good
        self._active_version = start.followed  # the published version last tried
        self.last_error: str | None = None
        self.cause: Degraded | None = None
        self._degrade(start.problem, start.cause)
        if start.problem is not None:
            log.error(
                "the mappings' source cannot be loaded at start-up; starting from the last "
                "set this release can load",
                extra={"reason": start.problem, "version": start.engine.version,
                       "origin": start.origin},
            )  # fmt: skip
        self.loaded_at = clock.time()
        set_mapping_version(self.engine.version, None)
        self.poller = Poller("mapping-reload", poll_seconds, self.check)

    @property
    def degraded(self) -> bool:
        """Running on mappings other than the source says: it was rejected or refused."""
        return self.last_error is not None

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
            return self._rejected(exc, str(exc), Degraded.FILES_REJECTED)
        self.origin = "files"
        return self._activate(engine)

    def _switch_to_published(self, published: MappingSet) -> bool:
        self._active_version = published.version  # do not retry the same set every poll
        try:
            engine = stored_engine(published)
        except MappingFileError as exc:
            reason = refusal(published.version, exc)
            return self._rejected(exc, reason, Degraded.PUBLISHED_UNLOADABLE)
        self.origin = "database"
        return self._activate(engine)

    def _activate(self, engine: Engine) -> bool:
        previous = self.engine.version
        self.engine, self.loaded_at = engine, self.clock.time()
        self._degrade(None, None)
        set_mapping_version(engine.version, previous)
        metrics().reloads.labels("loaded").inc()
        log.info(
            "mappings reloaded",
            extra={"version": engine.version, "mappings": len(engine), "origin": self.origin},
        )
        return True

    def _rejected(self, exc: MappingFileError, reason: str, cause: Degraded) -> bool:
        self._degrade(reason, cause)
        metrics().reloads.labels("rejected").inc()
        log.error(
            "mapping reload rejected; the mappings running stay active",
            extra={"reason": reason, "errors": [str(i) for i in exc.issues],
                   "active": self.engine.version},
        )  # fmt: skip
        return False

    def _degrade(self, reason: str | None, cause: Degraded | None) -> None:
        self.last_error, self.cause = reason, cause
        gauge = metrics().mappings_degraded
        for each in Degraded:
            gauge.labels(each.value).set(1 if each is cause else 0)

    # --- loading ------------------------------------------------------------------------------

    def _files_engine(self) -> Engine:
        sources = read_directory(self.directory)
        engine = load_texts(sources, where=str(self.directory)).engine
        self._keep(engine.version, sources)
        return engine

    def _keep(self, version: str, sources: Sequence[MappingText]) -> None:
        if self.ledger is None:
            return
        files = [(s.basename, s.text.decode("utf-8", "replace")) for s in sources]
        try:
            self.ledger.keep_mapping_set(version, files, "files")
        except LedgerError as exc:  # the mappings still work; only the fallback is older
            log.warning("could not keep the mapping set", extra={"error": exc.message})

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

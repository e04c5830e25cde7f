"""The embedded ledger: one SQLite file, safe across threads and the worker processes of a machine.

WAL mode; one connection for the writes of a process, one per thread for reads. Writers
of one process take turns on that connection through a Python lock (woken at once) rather
than SQLite's busy handler, which sleeps whole
milliseconds; waiting for another process is done here, in short steps. Write
transactions take SQLite's write lock up front (``BEGIN IMMEDIATE``), which is
also what serialises the shared rate limit and migrations across workers.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..core.clock import SYSTEM, Clock
from ..core.errors import LedgerError
from .base import Retention
from .migrations import Migration
from .sql import DB, SQLLedger

T = TypeVar("T")
LOCK_WAIT_SECONDS = 10.0
LOCK_LEASE_SECONDS = 600.0  # a cluster lock left by a killed process frees itself after this
VACUUM_PAGES = 1000  # pages returned to the file system per step of housekeeping
VACUUM_CHUNKS = 1000  # steps per pass at most (about 4 GB)
# The WAL file's size past which housekeeping empties it, and the size SQLite cuts it back to
# whenever the WAL restarts from its start (journal_size_limit).
WAL_LIMIT_BYTES = 64 * 1024 * 1024
TRUNCATE_WAIT_MS = 100


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # no WAL file (yet)
        return 0


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class SQLiteLedger(SQLLedger):
    kind = "sqlite"
    greatest = "MAX"
    real = "REAL"
    skip_locked = ""  # one writer at a time: a take never meets a row another one holds

    def __init__(
        self,
        path: Path | str,
        *,
        lease_seconds: float = 30.0,
        clock: Clock = SYSTEM,
        readonly: bool = False,
        background_checkpoints: bool = False,
    ):
        super().__init__(lease_seconds=lease_seconds, clock=clock)
        self.path = str(path)
        self.readonly = readonly
        self.background_checkpoints = background_checkpoints
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._opening = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._write_lock = threading.Lock()
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # --- connections and the one retry loop --------------------------------------------------

    def _db(self, write: bool = True) -> sqlite3.Connection:
        """The process's one writing connection (its writers take turns on ``_write_lock``
        anyway), or this thread's own for reads. One writer, not one per thread: a worker's
        Dub-call and request threads held a dozen connections, each with its own page and
        statement caches (25 MB of a worker), and a connection's page cache stays warm only
        between its own transactions."""
        if write and not self.readonly:
            writer = self._writer
            if writer is None:  # the first write of the process: opened once, under the lock
                with self._opening:
                    if self._writer is None:
                        self._writer = self._connect()
                    writer = self._writer
            return writer
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def _connect(self) -> sqlite3.Connection:
        target, uri = (f"file:{self.path}?mode=ro", True) if self.readonly else (self.path, False)
        # timeout=0: waiting for another process is done by _run, in short steps.
        db = sqlite3.connect(
            target, uri=uri, timeout=0, isolation_level=None, check_same_thread=False
        )
        if not self.readonly:
            # Incremental vacuum must be chosen before the first table exists.
            self._attempt(db, lambda d: d.execute("PRAGMA auto_vacuum=INCREMENTAL"))
            self._attempt(db, lambda d: d.execute("PRAGMA journal_mode=WAL").fetchall())
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            # Checkpoints run in maintain() (a background thread), not inside whichever
            # request happens to commit the 1000th page.
            auto = 0 if self.background_checkpoints else 1000
            db.execute(f"PRAGMA wal_autocheckpoint={auto}")
        self._connections.append(db)  # list.append is atomic: closed by close()
        return db

    def _pauses(self) -> Iterator[None]:
        """The first try at once, then growing sub-millisecond pauses, LOCK_WAIT_SECONDS in all."""
        yield
        delay = 0.0001
        give_up = self.clock.monotonic() + LOCK_WAIT_SECONDS
        while self.clock.monotonic() < give_up:
            self.clock.sleep(delay)
            delay = min(delay * 2, 0.002)
            yield

    def _attempt(
        self, db: sqlite3.Connection, work: Callable[[Any], T], *, tx: bool = False,
        write: bool = True,
    ) -> T:  # fmt: skip
        """Run ``work`` (in a write transaction when ``tx``), retrying while another process
        writes. This process's writers hold its lock for one try, never while pausing."""
        last: sqlite3.OperationalError | None = None
        for _ in self._pauses():
            with self._write_lock if write else contextlib.nullcontext():
                try:
                    if tx:
                        db.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(db)
                        if tx:
                            db.execute("COMMIT")
                        return result
                    except BaseException:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise
                except sqlite3.OperationalError as exc:
                    if not _busy(exc):
                        raise LedgerError(f"ledger {self.path}: {exc}") from exc
                    last = exc
                except sqlite3.Error as exc:  # not a database, corrupt, ...
                    raise LedgerError(f"ledger {self.path}: {exc}") from exc
        raise LedgerError(f"ledger {self.path} stayed locked for {LOCK_WAIT_SECONDS:g} s") from last

    def _run(
        self, work: Callable[[DB], T], *, tx: bool = False, write: bool = True,
        pipeline: bool = False,
    ) -> T:  # fmt: skip
        """The one boundary where sqlite3's exceptions become ``LedgerError`` (``pipeline``
        means nothing in-process)."""
        try:
            db = self._db(write)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {exc}") from exc
        return self._attempt(db, work, tx=tx, write=write)

    def _has_table(self, db: DB, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"
        return db.execute(sql, {"name": name}).fetchone() is not None

    # --- what SQLite does its own way ----------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A lock row with an expiry: the workers of this machine share the file."""
        now = self.clock.time()
        args = {"name": name, "owner": self._owner, "now": now, "until": now + LOCK_LEASE_SECONDS}
        taken = self._changed(
            "INSERT INTO locks (name, owner, until) VALUES (:name, :owner, :until)"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until"
            " WHERE locks.until < :now",
            args,
        )
        try:
            yield taken
        finally:
            if taken:
                self._run(
                    lambda db: db.execute(
                        "DELETE FROM locks WHERE name = :name AND owner = :owner", args
                    )
                )

    def sweep(self, retention: Retention) -> dict[str, int]:
        done = super().sweep(retention)
        if done["pruned"] and not self.readonly:
            # Give the pages freed by pruning back, so the file stops growing.
            # A chunk at a time, so no other writer waits long; executescript steps the pragma
            # to its end, where execute() would free a single page.
            vacuum = f"PRAGMA incremental_vacuum({VACUUM_PAGES});"
            for _ in range(VACUUM_CHUNKS):
                self._attempt(self._db(), lambda db: db.executescript(vacuum))
                if not self._run(lambda db: db.execute("PRAGMA freelist_count").fetchone()[0]):
                    break
        return done

    def maintain(self) -> None:
        """Copy the WAL into the database without blocking writers (PASSIVE); and, once the
        WAL file has grown past WAL_LIMIT_BYTES, empty it (TRUNCATE), waiting at most
        TRUNCATE_WAIT_MS for readers to finish (this process's writers wait on its lock
        meanwhile, the other workers' retry in short steps). A WAL only restarts from its
        start when no reader holds it, so under steady traffic the file kept growing: 537 MB
        beside a 214 MB database after 70 s of the benchmark's batches, and it never shrank."""
        if self.readonly:
            return

        def checkpoint(db: Any) -> None:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if _size(self.path + "-wal") <= WAL_LIMIT_BYTES:
                return
            db.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # busy: next tick
            finally:
                db.execute("PRAGMA busy_timeout=0")

        self._run(checkpoint)

    def upgrade(self) -> list[Migration]:
        applied = super().upgrade()
        mode = self._run(lambda db: db.execute("PRAGMA auto_vacuum").fetchone()[0], write=False)
        if mode != 2:  # a file made before incremental vacuum: switch it over, once

            def vacuum(db: DB) -> None:
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.execute("VACUUM")

            self._run(vacuum)
        return applied

    def close(self) -> None:
        for db in self._connections:
            db.close()
        self._connections.clear()
        self._writer = None
        self._local = threading.local()

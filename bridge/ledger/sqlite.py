"""The embedded ledger: one SQLite file, safe across threads and the worker processes of a machine.

Each claim is one atomic upsert (the row is inserted, or taken when the transition
table allows it), so a redelivered event, a Segment retry racing the first try,
or two gunicorn workers make one Dub call between them. WAL mode; one connection
per thread; writers of one process queue on a Python lock (woken at once) rather
than SQLite's busy handler, which sleeps whole milliseconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..clock import SYSTEM, Clock
from ..errors import LedgerError
from ..outcomes import (
    ACTIVE,
    CLAIMABLE,
    DEAD,
    FINAL,
    RECORDABLE,
    REDRIVABLE,
    RELEASABLE,
    SWEEPABLE,
    State,
)
from . import migrations
from .base import Claim, ClaimRequest, LeadStatus, Row, check_finish
from .codec import read, stored

T = TypeVar("T")
LOCK_WAIT_SECONDS = 10.0
_NO_LOCK = contextlib.nullcontext()


def _in(states: frozenset[State]) -> str:
    """A SQL list of states, built from the transition table (values are fixed words)."""
    return "(" + ",".join(f"'{s.value}'" for s in sorted(states)) + ")"


_CLAIM = f"""
INSERT INTO deliveries (message_id, mapping, action, event, customer, state, attempts,
                        request_body, lease_until, created_at, updated_at)
VALUES (:message_id, :mapping, :action, :event, :customer, 'in_flight', 1,
        :body, :lease, :now, :now)
ON CONFLICT (message_id, mapping) DO UPDATE SET
    prev_state = deliveries.state, state = 'in_flight', attempts = deliveries.attempts + 1,
    lease_until = :lease, request_body = :body, customer = :customer, updated_at = :now
WHERE deliveries.state IN {_in(CLAIMABLE)}
   OR (deliveries.state = 'in_flight' AND COALESCE(deliveries.lease_until, 0) <= :now)
   OR (:redrive AND deliveries.state IN {_in(REDRIVABLE)})
RETURNING prev_state, attempts, tainted
"""
_FINISH = (
    "UPDATE deliveries SET state=?, status=?, error=?, lease_until=NULL,"
    " payload=COALESCE(?, payload), tainted=MAX(tainted, ?), updated_at=?"
    " WHERE message_id=? AND mapping=? AND state='in_flight'"
)
_RECORD = (
    "INSERT INTO deliveries (message_id, mapping, action, event, state, error, payload,"
    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (message_id, mapping) DO UPDATE SET state=excluded.state,"
    " error=excluded.error, payload=excluded.payload, updated_at=excluded.updated_at"
    f" WHERE deliveries.state IN {_in(RECORDABLE)}"
)
_SELECT = (
    "SELECT message_id, mapping, action, event, customer, state, attempts, request_body,"
    " payload, status, error, created_at, updated_at FROM deliveries "
)


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class SQLiteLedger:
    kind = "sqlite"
    shared_across_processes = True

    def __init__(
        self,
        path: Path | str,
        *,
        lease_seconds: float = 30.0,
        clock: Clock = SYSTEM,
        readonly: bool = False,
        migrate: bool = True,
        background_checkpoints: bool = False,
    ):
        self.path = str(path)
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.readonly = readonly
        self.background_checkpoints = background_checkpoints
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._write_lock = threading.Lock()
        if migrate and not readonly:
            self.upgrade()

    # --- connections and the one retry loop ----------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # timeout=0: waiting for another process is done by _run, in short steps.
            if self.readonly:
                db = sqlite3.connect(
                    f"file:{self.path}?mode=ro",
                    uri=True,
                    timeout=0,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                db = sqlite3.connect(
                    self.path, timeout=0, isolation_level=None, check_same_thread=False
                )
                self._run_on(db, lambda d: d.execute("PRAGMA journal_mode=WAL").fetchall())
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
                # Checkpoints run in maintain() (a background thread), not inside whichever
                # request happens to commit the 1000th page.
                auto = 0 if self.background_checkpoints else 1000
                db.execute(f"PRAGMA wal_autocheckpoint={auto}")
            self._local.db = db
            self._connections.append(db)
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

    def _run_on(
        self,
        db: sqlite3.Connection,
        work: Callable[[sqlite3.Connection], T],
        *,
        tx: bool = False,
        write: bool = True,
    ) -> T:
        """Run ``work`` (in a write transaction when ``tx``), retrying while another process
        writes. This process's writers hold its lock for one try, never while pausing."""
        last: sqlite3.OperationalError | None = None
        for _ in self._pauses():
            with self._write_lock if write else _NO_LOCK:
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
        raise LedgerError(f"ledger {self.path} stayed locked for {LOCK_WAIT_SECONDS:g} s") from last

    def _run(
        self, work: Callable[[sqlite3.Connection], T], *, tx: bool = False, write: bool = True
    ) -> T:
        return self._run_on(self._db(), work, tx=tx, write=write)

    # --- schema ----------------------------------------------------------------------------

    def has_table(self, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
        return bool(self._read(sql, (name,)))

    def applied(self) -> list[int]:
        def read_versions(db: sqlite3.Connection) -> list[int]:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
            ).fetchone()
            if found is None:
                return []
            return [v for (v,) in db.execute("SELECT version FROM schema_migrations")]

        return self._run(read_versions, write=False)

    def schema(self) -> migrations.SchemaStatus:
        return migrations.status(self.applied())

    def upgrade(self) -> list[migrations.Migration]:
        """Apply missing migrations in one write transaction; returns those applied."""

        def apply(db: sqlite3.Connection) -> list[migrations.Migration]:
            db.execute(migrations.SCHEMA_TABLE["sqlite"])
            done = [v for (v,) in db.execute("SELECT version FROM schema_migrations")]
            todo = migrations.missing(done)
            for migration in todo:
                for statement in migration.statements("sqlite"):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (migration.version, migration.name, self.clock.time()),
                )
            return todo

        return self._run(apply, tx=True)

    # --- the contract ------------------------------------------------------------------------

    def claim_many(self, wanted: Sequence[ClaimRequest], *, redrive: bool = False) -> list[Claim]:
        now = self.clock.time()
        rows = [
            {
                "message_id": w.message_id,
                "mapping": w.mapping,
                "action": w.action,
                "event": w.event,
                "customer": w.customer,
                "body": stored(w.body),
                "now": now,
                "lease": now + self.lease_seconds,
                "redrive": int(redrive),
            }
            for w in wanted
        ]
        # One statement is its own transaction; several share one.
        return self._run(lambda db: [_claim(db, args) for args in rows], tx=len(rows) > 1)

    def finish(
        self,
        message_id: str,
        mapping: str,
        state: State,
        *,
        status: int | None = None,
        error: Any = None,
        payload: Any = None,
        tainted: bool = False,
    ) -> bool:
        args = (
            check_finish(state).value,
            status,
            stored(error),
            stored(payload),
            int(tainted),
            self.clock.time(),
            message_id,
            mapping,
        )
        return self._run(lambda db: db.execute(_FINISH, args).rowcount) == 1

    def release(self, message_id: str, mapping: str) -> bool:
        back = _in(RELEASABLE)
        sql = (
            f"UPDATE deliveries SET state = CASE WHEN prev_state IN {back} THEN prev_state"
            " ELSE 'pending' END, attempts = attempts - 1, lease_until = NULL, updated_at = ?"
            " WHERE message_id = ? AND mapping = ? AND state = 'in_flight'"
        )
        args = (self.clock.time(), message_id, mapping)
        return self._run(lambda db: db.execute(sql, args).rowcount) == 1

    def record(
        self,
        message_id: str,
        mapping: str,
        state: State,
        *,
        action: str | None,
        event: str | None,
        errors: Any,
        payload: Any,
    ) -> bool:
        now = self.clock.time()
        args = (
            message_id,
            mapping,
            action,
            event,
            State(state).value,
            stored(errors),
            stored(payload),
            now,
            now,
        )
        return self._run(lambda db: db.execute(_RECORD, args).rowcount) == 1

    def supersede(self, message_id: str, mapping: str) -> bool:
        sql = (
            "UPDATE deliveries SET state='superseded', updated_at=?"
            f" WHERE message_id=? AND mapping=? AND state IN {_in(DEAD)}"
        )
        args = (self.clock.time(), message_id, mapping)
        return self._run(lambda db: db.execute(sql, args).rowcount) == 1

    def lead_status(self, customer: str, within_seconds: float) -> LeadStatus | None:
        sql = "SELECT state FROM deliveries WHERE customer=? AND action='lead' AND updated_at>?"
        args = (customer, self.clock.time() - within_seconds)
        states = {State(s) for (s,) in self._read(sql, args)}
        if states & {State.DELIVERED, State.DEDUPLICATED}:
            return LeadStatus.SETTLED
        if states & ACTIVE:
            return LeadStatus.UNSETTLED
        return None

    def get(self, message_id: str, mapping: str) -> Row | None:
        found = self._rows("WHERE message_id=? AND mapping=?", (message_id, mapping))
        return found[0] if found else None

    def dead_letters(self, *, mapping: str | None = None, since: float | None = None) -> list[Row]:
        where = f"WHERE state IN {_in(DEAD)}"
        args: list[Any] = []
        if mapping is not None:
            where += " AND mapping=?"
            args.append(mapping)
        if since is not None:
            where += " AND updated_at>=?"
            args.append(since)
        return self._rows(where + " ORDER BY created_at, message_id", tuple(args))

    def counts(self) -> dict[State, int]:
        rows = self._read("SELECT state, COUNT(*) FROM deliveries GROUP BY state", ())
        return {State(state): count for state, count in rows}

    def sweep(self, *, retention_seconds: float, give_up_seconds: float) -> dict[str, int]:
        now = self.clock.time()

        def run(db: sqlite3.Connection) -> dict[str, int]:
            gave_up = db.execute(
                "UPDATE deliveries SET state='gave_up', lease_until=NULL, updated_at=?"
                f" WHERE state IN {_in(SWEEPABLE)} AND updated_at<?"
                " AND (lease_until IS NULL OR lease_until<?)",
                (now, now - give_up_seconds, now),
            ).rowcount
            pruned = db.execute(
                f"DELETE FROM deliveries WHERE state IN {_in(FINAL)} AND updated_at<?",
                (now - retention_seconds,),
            ).rowcount
            return {"gave_up": gave_up, "pruned": pruned}

        return self._run(run, tx=True)

    def maintain(self) -> None:
        """Copy the WAL into the database without blocking writers (PASSIVE)."""
        if not self.readonly:
            self._run(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    def close(self) -> None:
        for db in self._connections:
            db.close()
        self._connections.clear()
        self._local = threading.local()

    # --- reading ------------------------------------------------------------------------------

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return self._run_on(self._db(), lambda db: db.execute(sql, args).fetchall(), write=False)

    def _rows(self, clause: str, args: tuple[Any, ...]) -> list[Row]:
        return [
            Row(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                State(r[5]),
                r[6],
                read(r[7]),
                read(r[8]),
                r[9],
                read(r[10]),
                r[11],
                r[12],
            )
            for r in self._read(_SELECT + clause, args)
        ]


def _claim(db: sqlite3.Connection, args: dict[str, Any]) -> Claim:
    # One statement decides and takes the row: inserted, or updated when claimable.
    row = db.execute(_CLAIM, args).fetchone()
    if row is not None:
        prev_state, attempts, tainted = row
        return Claim(True, State(prev_state) if prev_state else None, attempts - 1, bool(tainted))
    state, attempts, tainted = db.execute(
        "SELECT state, attempts, tainted FROM deliveries WHERE message_id=? AND mapping=?",
        (args["message_id"], args["mapping"]),
    ).fetchone()
    return Claim(False, State(state), attempts, bool(tainted))

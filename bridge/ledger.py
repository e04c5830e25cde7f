"""The delivery ledger: every (messageId, mapping) the bridge handles, and where it stands.

It is what makes Segment's at-least-once delivery exactly-once in effect toward
Dub: a row is claimed atomically before a call, so a redelivered event, a Segment
retry racing the first try, or two gunicorn workers make one Dub call between
them. A claim carries a lease; a worker killed mid-call leaves an ``in_flight``
row whose lease expires and is taken over.

``Ledger`` is the interface; ``SQLiteLedger`` backs it on one machine (WAL, busy
timeout, one connection per thread). A server database can implement the same
methods for several instances.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .jsoncodec import JSONEncodeFailure, dumps_str, loads

T = TypeVar("T")
DONE = frozenset({"delivered", "deduplicated", "not_recorded"})
DEAD = frozenset({"invalid", "rejected", "uncertain", "failed"})
STATES = DONE | DEAD | {"pending", "in_flight", "superseded"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    message_id   TEXT NOT NULL,
    mapping      TEXT NOT NULL,
    action       TEXT,
    event        TEXT,
    customer     TEXT,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    request_body TEXT,
    payload      TEXT,
    status       INTEGER,
    error        TEXT,
    tainted      INTEGER NOT NULL DEFAULT 0,
    prev_state   TEXT,
    lease_until  REAL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (message_id, mapping)
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, updated_at);
CREATE INDEX IF NOT EXISTS deliveries_customer ON deliveries (customer, action, updated_at);
"""
_CLAIM = """
INSERT INTO deliveries (message_id, mapping, action, event, customer, state, attempts,
                        request_body, lease_until, created_at, updated_at)
VALUES (:message_id, :mapping, :action, :event, :customer, 'in_flight', 1,
        :body, :lease, :now, :now)
ON CONFLICT (message_id, mapping) DO UPDATE SET
    prev_state = deliveries.state, state = 'in_flight', attempts = deliveries.attempts + 1,
    lease_until = :lease, request_body = :body, customer = :customer, updated_at = :now
WHERE deliveries.state NOT IN ('delivered', 'deduplicated', 'not_recorded', 'superseded')
  AND NOT (deliveries.state = 'in_flight' AND COALESCE(deliveries.lease_until, 0) > :now)
  -- dead letters are sent again only by redrive, after a person looked at them
  AND (:redrive OR deliveries.state NOT IN ('rejected', 'uncertain', 'failed'))
RETURNING prev_state, attempts, tainted
"""
_FINISH = (
    "UPDATE deliveries SET state=?, status=?, error=?, lease_until=NULL,"
    " payload=COALESCE(?, payload), tainted=MAX(tainted, ?), updated_at=?"
    " WHERE message_id=? AND mapping=?"
)
_RECORD = (
    "INSERT INTO deliveries (message_id, mapping, action, event, state, error, payload,"
    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (message_id, mapping) DO UPDATE SET state=excluded.state,"
    " error=excluded.error, payload=excluded.payload, updated_at=excluded.updated_at"
    " WHERE deliveries.state IN ('invalid', 'pending')"
)
_SELECT = (
    "SELECT message_id, mapping, action, event, customer, state, attempts, request_body,"
    " payload, status, error, created_at, updated_at FROM deliveries "
)


LOCK_WAIT_SECONDS = 10.0


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _pauses() -> Iterator[None]:
    """Sleep in growing sub-millisecond steps, for at most LOCK_WAIT_SECONDS in all."""
    delay = 0.0001
    give_up = time.monotonic() + LOCK_WAIT_SECONDS
    while time.monotonic() < give_up:
        time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not secrecy
        delay = min(delay * 2, 0.002)
        yield


def _retry(run: Callable[[], T], lock: threading.Lock | None = None) -> T:
    """Run a statement, retrying while another process writes.

    With ``lock``, each try holds it and the pauses between tries do not, so this
    process's other writers can go meanwhile.
    """
    last = sqlite3.OperationalError("database is locked")
    for _ in _pauses_after_first():
        if lock is not None:
            lock.acquire()
        try:
            return run()
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            last = exc
        finally:
            if lock is not None:
                lock.release()
    raise last


def _pauses_after_first() -> Iterator[None]:
    yield  # the first try goes at once
    yield from _pauses()


def _json(value: Any) -> str | None:
    """JSON text to store; a payload that cannot be written is kept as a note instead."""
    if value is None:
        return None
    try:
        return dumps_str(value)
    except JSONEncodeFailure as exc:
        return dumps_str({"unstorable": str(exc)})


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A row to claim before its Dub call."""

    message_id: str
    mapping: str
    action: str
    event: str | None
    customer: str | None
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to 'may I send this now?'."""

    granted: bool
    state: str | None = None  # the row's state when not granted
    attempts: int = 0  # attempts before this one
    tainted: bool = False  # an earlier lead attempt may have reached Dub


@dataclass(frozen=True, slots=True)
class Row:
    message_id: str
    mapping: str
    action: str | None
    event: str | None
    customer: str | None
    state: str
    attempts: int
    request_body: dict[str, Any] | None
    payload: dict[str, Any] | None
    status: int | None
    error: Any
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "mapping": self.mapping,
            "action": self.action,
            "event": self.event,
            "state": self.state,
            "attempts": self.attempts,
            "status": self.status,
            "error": self.error,
            "requestBody": self.request_body,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


class Ledger(Protocol):
    def claim(
        self,
        message_id: str,
        mapping: str,
        *,
        action: str,
        event: str | None,
        customer: str | None,
        body: dict[str, Any] | None,
        redrive: bool = False,
    ) -> Claim: ...
    def claim_many(
        self, wanted: Sequence[ClaimRequest], *, redrive: bool = False
    ) -> list[Claim]: ...
    def finish(
        self,
        message_id: str,
        mapping: str,
        state: str,
        *,
        status: int | None = None,
        error: Any = None,
        payload: Any = None,
        tainted: bool = False,
    ) -> None: ...
    def record(
        self,
        message_id: str,
        mapping: str,
        state: str,
        *,
        action: str | None,
        event: str | None,
        errors: Any,
        payload: Any,
    ) -> None: ...
    def lead_status(self, customer: str, within_seconds: float) -> str | None: ...
    def dead_letters(
        self, *, mapping: str | None = None, since: float | None = None
    ) -> list[Row]: ...
    def get(self, message_id: str, mapping: str) -> Row | None: ...
    def counts(self) -> dict[str, int]: ...
    def sweep(self, *, retention_seconds: float, give_up_seconds: float) -> dict[str, int]: ...


class SQLiteLedger:
    """The embedded ledger: one SQLite file, safe across threads and worker processes."""

    def __init__(
        self, path: Path | str, *, lease_seconds: float = 30.0, background_checkpoints: bool = False
    ):
        self.path = str(path)
        self.lease_seconds = lease_seconds
        self.background_checkpoints = background_checkpoints
        self._local = threading.local()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One writer per process at a time: threads queue on a Python lock (woken at
        # once) instead of SQLite's busy handler, which sleeps whole milliseconds.
        self._write_lock = threading.Lock()
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # timeout=0: waiting for another process is done by _retry, in short steps.
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            _retry(lambda: db.execute("PRAGMA journal_mode=WAL"))
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
            # Checkpoints (copying the WAL back and fsyncing) run in a background thread
            # (checkpoint()), not inside whichever request commits the 1000th page.
            db.execute(f"PRAGMA wal_autocheckpoint={0 if self.background_checkpoints else 1000}")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
            self.db = db
            self.lock = lock

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes SQLite's write lock up front: read-then-write is atomic across
            # processes. The process lock is held from BEGIN to COMMIT, not while pausing.
            last = sqlite3.OperationalError("database is locked")
            for _ in _pauses_after_first():
                self.lock.acquire()
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    self.lock.release()
                    if not _busy(exc):
                        raise
                    last = exc
                    continue
                except BaseException:
                    self.lock.release()
                    raise
                return self.db
            raise last

        def __exit__(self, kind: Any, *_: Any) -> None:
            try:
                self.db.execute("ROLLBACK" if kind else "COMMIT")
            finally:
                self.lock.release()

    def _tx(self) -> SQLiteLedger._Tx:
        return SQLiteLedger._Tx(self._db(), self._write_lock)

    def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """One write statement, its own transaction, under the process's writer lock."""
        db = self._db()
        return _retry(lambda: run(db), self._write_lock)

    def claim(
        self,
        message_id: str,
        mapping: str,
        *,
        action: str,
        event: str | None,
        customer: str | None,
        body: dict[str, Any] | None,
        redrive: bool = False,
    ) -> Claim:
        wanted = ClaimRequest(message_id, mapping, action, event, customer, body)
        return self.claim_many([wanted], redrive=redrive)[0]

    def claim_many(self, wanted: Sequence[ClaimRequest], *, redrive: bool = False) -> list[Claim]:
        """Claim several rows in one transaction (a batch's conversions), in order."""
        now = time.time()
        rows = [self._claim_args(w, now, redrive) for w in wanted]
        if len(rows) == 1:  # one statement is its own transaction: no BEGIN/COMMIT
            return [self._write(lambda db: self._claim(db, rows[0]))]
        with self._tx() as db:
            return [self._claim(db, args) for args in rows]

    def _claim_args(self, w: ClaimRequest, now: float, redrive: bool) -> dict[str, Any]:
        return {
            "message_id": w.message_id,
            "mapping": w.mapping,
            "action": w.action,
            "event": w.event,
            "customer": w.customer,
            "body": _json(w.body),
            "now": now,
            "lease": now + self.lease_seconds,
            "redrive": int(redrive),
        }

    @staticmethod
    def _claim(db: sqlite3.Connection, args: dict[str, Any]) -> Claim:
        # One statement decides and takes the row: inserted, or updated when claimable.
        row = db.execute(_CLAIM, args).fetchone()
        if row is not None:
            prev_state, attempts, tainted = row
            return Claim(True, prev_state, attempts - 1, bool(tainted))
        state, attempts, tainted = db.execute(
            "SELECT state, attempts, tainted FROM deliveries WHERE message_id=? AND mapping=?",
            (args["message_id"], args["mapping"]),
        ).fetchone()
        return Claim(False, state, attempts, bool(tainted))

    def finish(
        self,
        message_id: str,
        mapping: str,
        state: str,
        *,
        status: int | None = None,
        error: Any = None,
        payload: Any = None,
        tainted: bool = False,
    ) -> None:
        assert state in STATES, state
        args = (
            state,
            status,
            _json(error),
            _json(payload),
            int(tainted),
            time.time(),
            message_id,
            mapping,
        )
        self._write(lambda db: db.execute(_FINISH, args))

    def record(
        self,
        message_id: str,
        mapping: str,
        state: str,
        *,
        action: str | None,
        event: str | None,
        errors: Any,
        payload: Any,
    ) -> None:
        """Note an event that was never sent (invalid), unless the row already went further."""
        now = time.time()
        args = (message_id, mapping, action, event, state, _json(errors), _json(payload), now, now)
        self._write(lambda db: db.execute(_RECORD, args))

    def lead_status(self, customer: str, within_seconds: float) -> str | None:
        """'settled' if a lead of this customer reached Dub lately, 'unsettled' if one is
        still pending or in flight, else None."""
        rows = self._read(
            "SELECT state FROM deliveries WHERE customer=? AND action='lead' AND updated_at>?",
            (customer, time.time() - within_seconds),
        )
        states = {state for (state,) in rows}
        if states & {"delivered", "deduplicated"}:
            return "settled"
        if states & {"pending", "in_flight"}:
            return "unsettled"
        return None

    def get(self, message_id: str, mapping: str) -> Row | None:
        found = self._rows("WHERE message_id=? AND mapping=?", (message_id, mapping))
        return found[0] if found else None

    def dead_letters(self, *, mapping: str | None = None, since: float | None = None) -> list[Row]:
        where = "WHERE state IN ('invalid','rejected','uncertain','failed')"
        args: list[Any] = []
        if mapping is not None:
            where += " AND mapping=?"
            args.append(mapping)
        if since is not None:
            where += " AND updated_at>=?"
            args.append(since)
        return self._rows(where + " ORDER BY created_at, message_id", tuple(args))

    def all_rows(self) -> list[Row]:
        return self._rows("ORDER BY created_at", ())

    def _rows(self, clause: str, args: tuple[Any, ...]) -> list[Row]:
        return [
            Row(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                loads(r[7]) if r[7] else None,
                loads(r[8]) if r[8] else None,
                r[9],
                loads(r[10]) if r[10] else None,
                r[11],
                r[12],
            )
            for r in self._read(_SELECT + clause, args)
        ]

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) FROM deliveries GROUP BY state", ())
        return {state: count for state, count in rows}

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        db = self._db()
        return _retry(lambda: db.execute(sql, args).fetchall())

    def sweep(self, *, retention_seconds: float, give_up_seconds: float) -> dict[str, int]:
        """Give up on rows Segment stopped retrying, and prune rows past retention."""
        now = time.time()
        with self._tx() as db:
            gave_up = db.execute(
                "UPDATE deliveries SET state='failed', lease_until=NULL, updated_at=?"
                " WHERE state IN ('pending','in_flight') AND updated_at<?"
                " AND (lease_until IS NULL OR lease_until<?)",
                (now, now - give_up_seconds, now),
            ).rowcount
            pruned = db.execute(
                "DELETE FROM deliveries WHERE updated_at<? AND state NOT IN"
                " ('pending','in_flight','invalid','rejected','uncertain','failed')",
                (now - retention_seconds,),
            ).rowcount
        return {"gave_up": gave_up, "pruned": pruned}

    def checkpoint(self) -> None:
        """Copy the WAL into the database without blocking writers (PASSIVE)."""
        db = self._db()
        _retry(lambda: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

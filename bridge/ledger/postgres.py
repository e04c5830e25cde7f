"""The ledger in PostgreSQL: one truth for every instance and worker (``DATABASE_URL``).

psycopg 3 with a connection pool per process, sized to the worker's threads, with a
timeout. Claims are single upserts (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``),
so the database decides who sends; the shared rate limit and migrations are
serialised with transaction-scoped advisory locks, and cluster-wide jobs (the
outbox, housekeeping) with session advisory locks, which free themselves when a
process dies. A connection that breaks is retried once on a fresh one: every
operation is safe to repeat (a claim whose commit was lost is only ever refused,
never granted twice).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg_pool

from ..core.clock import SYSTEM, Clock
from ..core.errors import LedgerError
from .base import COUNTED_FOR, Slots, room
from .sql import DB, Cursor, SQLLedger

T = TypeVar("T")
# The pool logs each failed connection; where the bridge has not set up its JSON log (a
# one-off command), that is noise beside the one line of error the command prints.
logging.getLogger("psycopg").addHandler(logging.NullHandler())
log = logging.getLogger("bridge.ledger")
PROBE_SECONDS = 0.5  # after an outage, how often a request may check whether it is over
# A pooled connection idle longer than this is checked (an empty query, one round trip)
# before it is lent: after a restart of the server, the first request of each connection
# would otherwise fail. One used more lately is lent as it is: under load, that check was
# a round trip of its own for every statement; one that broke all the same is retried once
# on a fresh connection (``_run``).
IDLE_CHECK_SECONDS = 1.0
# Keys of the transaction-scoped advisory locks (any fixed numbers the bridge owns).
MIGRATION_LOCK = 0x62726964  # "brid"


@lru_cache(maxsize=1024)
def _pyformat(sql: str) -> str:
    """``:name`` parameters, as the shared statements write them, to psycopg's ``%(name)s``."""
    return re.sub(r"(?<![:\w]):([a-z_][a-z0-9_]*)", r"%(\1)s", sql.replace("%", "%%"))


# The shared window's one read and, when ``room`` grants any, its insert, in one statement
# (run with the key's lock taken by the statement before, in the same transaction, so the
# read sees every slot committed before). The grant is ``room``'s rule (``base.room``); the
# caller works out the wait from the counts read, with ``room`` itself.
TAKE_SLOTS_AT_ONCE = """
WITH counted AS (
    SELECT (SELECT until FROM rate_pauses WHERE key = :key) AS paused,
           COALESCE(SUM(taken), 0) AS used, MIN(second) AS oldest,
           COALESCE(SUM(CASE WHEN second = :second THEN taken ELSE 0 END), 0) AS this_second
    FROM rate_buckets WHERE key = :key AND taken > 0 AND second > :edge
), free AS (
    SELECT LEAST(:per_minute - used, COALESCE(:per_second - this_second, :per_minute - used))
           AS free
    FROM counted WHERE paused IS NULL OR paused <= :now
), granted AS (
    SELECT CASE WHEN free > 0 THEN LEAST(:count, GREATEST(1, free - :spare)) ELSE 0 END AS n
    FROM free
), taken AS (
    INSERT INTO rate_buckets (key, second, taken)
    SELECT :key, :second, n FROM granted WHERE n > 0
    ON CONFLICT (key, second) DO UPDATE SET taken = rate_buckets.taken + excluded.taken
    RETURNING 1
)
SELECT paused, used, oldest, this_second,
       CASE WHEN EXISTS (SELECT 1 FROM taken) THEN (SELECT n FROM granted) ELSE 0 END
FROM counted
"""


class _Connection:
    """A psycopg connection that speaks the shared statements' parameter style."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor:
        return self.conn.execute(_pyformat(sql), params or {})


def describe(url: str) -> str:
    """Where a database URL points, for messages: never the user or the password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"


class PostgresLedger(SQLLedger):
    kind = "postgres"
    answers_in_finish = True

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = 30.0,
        clock: Clock = SYSTEM,
        pool_size: int = 6,
        timeout: float = 2.0,
        readonly: bool = False,
    ):
        super().__init__(lease_seconds=lease_seconds, clock=clock)
        self.url = url
        self.where = describe(url)
        self.readonly = readonly
        self.timeout = timeout
        self.pool_size = max(1, pool_size)
        self._recovering = threading.Lock()
        self._last_probe = -math.inf
        self._closed = False
        # Connections each pool has lent to this process's threads: a pool that lent all
        # it may is busy, not broken (its own count includes reconnections).
        self._lent: dict[psycopg_pool.ConnectionPool[Any], int] = {}
        self._lending = threading.Lock()
        self.pool = self._new_pool()
        try:
            # One direct connection first: it fails fast, with the server's own reason.
            self._probe()
            self.pool.open(wait=True, timeout=timeout)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            self.pool.close()
            raise LedgerError(f"cannot reach PostgreSQL at {self.where}: {_reason(exc)}") from exc

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        return psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            timeout=self.timeout,
            open=False,
            name="bridge-ledger",
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self.timeout))},
            # A connection that broke (a restart, pg_terminate_backend) is checked and
            # replaced when it is taken, not discovered by a failing request.
            check=_check_idle,
        )

    def _probe(self) -> None:
        psycopg.connect(self.url, connect_timeout=max(1, round(self.timeout))).close()

    def _recovered(self, used: psycopg_pool.ConnectionPool[Any]) -> bool:
        """The pool ``used`` gave no connection in time: is the server back? If it takes a
        direct connection now, a fresh pool replaces this one, whose reconnection may be
        waiting out a backoff that doubles with every failure of a long outage (a minute or
        more). Only a pool that failed to make a connection is replaced, and not while it
        has lent all its connections: then it is busy, not broken. One request probes at a time,
        at most once per PROBE_SECONDS (real time: these are real connections); the others
        answer at once, as before."""
        if self.pool is not used:
            return not self._closed  # replaced meanwhile: try the fresh one
        busy = self._lent.get(used, 0) >= used.max_size
        if busy or not used.get_stats().get("connections_errors"):
            return False
        if not self._recovering.acquire(blocking=False):
            return False
        try:
            if self._closed or self.pool is not used:
                return not self._closed
            now = time.monotonic()
            if now - self._last_probe < PROBE_SECONDS:
                return False
            self._last_probe = now
            try:
                self._probe()
            except psycopg.OperationalError:
                return False
            fresh = self._new_pool()
            try:
                fresh.open(wait=True, timeout=self.timeout)
            except psycopg_pool.PoolTimeout:
                fresh.close()
                return False
            stale, self.pool = self.pool, fresh
        finally:
            self._recovering.release()
        stale.close(timeout=0)
        log.info("ledger connections restored", extra={"database": self.where})
        return True

    @contextlib.contextmanager
    def _connection(self, pool: psycopg_pool.ConnectionPool[Any]) -> Iterator[Any]:
        """A connection of ``pool``, counted as lent while it is out."""
        with pool.connection() as conn:
            with self._lending:
                self._lent[pool] = self._lent.get(pool, 0) + 1
            try:
                yield conn
            finally:
                _last_used[conn] = time.monotonic()
                with self._lending:
                    left = self._lent[pool] - 1
                    if left:
                        self._lent[pool] = left
                    else:
                        del self._lent[pool]

    def _run(
        self, work: Callable[[DB], T], *, tx: bool = False, write: bool = True,
        pipeline: bool = False,
    ) -> T:  # fmt: skip
        if write and self.readonly:
            raise LedgerError(f"the ledger at {self.where} is open read-only")
        for attempt in (1, 2):
            pool = self.pool
            try:
                with self._connection(pool) as conn:
                    if not tx:
                        return work(_Connection(conn))
                    # Pipelined: statements whose results are not read yet go out together
                    # (BEGIN with the first, COMMIT with the last), a round trip each time
                    # a result is read instead of one per statement.
                    batched = conn.pipeline() if pipeline else contextlib.nullcontext()
                    with batched, conn.transaction():
                        return work(_Connection(conn))
            except (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
                if self._closed:
                    raise LedgerError(f"the ledger at {self.where} is closed") from exc
                if attempt == 1 and self._recovered(pool):
                    continue
                raise LedgerError(
                    f"no connection to PostgreSQL at {self.where} within {self.timeout:g} s"
                ) from exc
            except psycopg.OperationalError as exc:
                # The connection broke: the transaction rolled back. Once more, on a fresh one.
                if attempt == 2:
                    raise LedgerError(f"PostgreSQL at {self.where}: {_first_line(exc)}") from exc
            except psycopg.errors.SerializationFailure as exc:  # includes deadlocks
                if attempt == 2:
                    raise LedgerError(f"PostgreSQL at {self.where}: {_first_line(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _has_table(self, db: DB, name: str) -> bool:
        sql = "SELECT to_regclass(:name) IS NOT NULL"
        return bool(db.execute(sql, {"name": name}).fetchone()[0])

    def take_slots(
        self, key: str, per_minute: int, count: int, *, per_second: int | None = None,
        spare: int = 0,
    ) -> Slots:  # fmt: skip
        """The shared window in one round trip: the key's lock, the read and the insert
        pipelined in one transaction."""
        now = self.clock.time()
        second = math.floor(now)
        args = {
            "key": key, "second": second, "edge": now - COUNTED_FOR, "now": now,
            "count": count, "per_minute": per_minute, "per_second": per_second, "spare": spare,
        }  # fmt: skip
        lock = ("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", {"key": key})
        # The commit does not wait for the disk: the key's lock, which every slot of every
        # instance queues on, is not held through an fsync. Other sessions see the slot at
        # once; only a crash of the server itself may forget the last few ms of slots.
        quick: tuple[str, dict[str, Any]] = ("SET LOCAL synchronous_commit = off", {})
        row = self._one_trip([quick, lock, (TAKE_SLOTS_AT_ONCE, args)])[0]
        paused, used, oldest, this_second, inserted = row
        if paused is not None and paused > now:
            return Slots(0, float(paused - now), second)
        granted, wait = room(now, count, per_minute, per_second, used, oldest, this_second, spare)
        if granted != inserted:  # pragma: no cover (the two rules are one)
            raise AssertionError(f"the window's statement and room() disagree: {row}")
        return Slots(granted, wait, second)

    def _one_trip(self, statements: list[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        """Run ``statements`` as one transaction in one round trip (pipelined, with BEGIN
        and COMMIT, read once the COMMIT is sent): the rows of the last one."""

        def work(db: DB) -> list[Any]:
            assert isinstance(db, _Connection)
            conn = db.conn
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    cursors = [db.execute(sql, args) for sql, args in statements]
                    conn.execute("COMMIT")
            except psycopg.Error:
                if not conn.closed and conn.info.transaction_status in _IN_TRANSACTION:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            return cursors[-1].fetchall()

        return self._run(work)

    def _serialise_slots(self, db: DB, key: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", {"key": key})

    def _serialise(self, db: DB, name: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(hashtextextended(:name, 2))", {"name": name})

    def _serialise_migrations(self, db: DB) -> None:
        db.execute("SELECT pg_advisory_xact_lock(:id)", {"id": MIGRATION_LOCK})

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A session advisory lock, held on one pooled connection for the block; it frees
        itself if this process dies."""
        try:
            with self._connection(self.pool) as conn:
                key = {"name": name}
                taken = (
                    _Connection(conn)
                    .execute("SELECT pg_try_advisory_lock(hashtextextended(:name, 1))", key)
                    .fetchone()[0]
                )
                try:
                    yield bool(taken)
                finally:
                    if taken and not conn.closed:
                        with contextlib.suppress(psycopg.Error):
                            _Connection(conn).execute(
                                "SELECT pg_advisory_unlock(hashtextextended(:name, 1))", key
                            )
        except (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            raise LedgerError(f"no connection to PostgreSQL at {self.where}") from exc

    def close(self) -> None:
        with self._recovering:  # no probe may open a pool after this
            self._closed = True
        self.pool.close()


_IN_TRANSACTION = (
    psycopg.pq.TransactionStatus.INTRANS,
    psycopg.pq.TransactionStatus.INERROR,
)
# When each pooled connection was last given back (real time: real connections).
_last_used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()


def _check_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before it lends a connection: a broken one raises, and one idle
    longer than IDLE_CHECK_SECONDS is asked an empty query first."""
    if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        raise psycopg.OperationalError("the connection is closed")
    if time.monotonic() - _last_used.get(conn, -math.inf) > IDLE_CHECK_SECONDS:
        psycopg_pool.ConnectionPool.check_connection(conn)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _reason(exc: Exception) -> str:
    """The useful end of a libpq message ("Connection refused", "database ... does not
    exist"), without the user name or password."""
    text = _first_line(exc)
    return text.rsplit(" failed: ", 1)[-1] if " failed: " in text else text

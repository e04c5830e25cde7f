"""The ledger contract in SQL, shared by the SQLite and PostgreSQL backends.

Statements are written once, with ``:name`` parameters (the PostgreSQL backend
rewrites them for its driver), and their state lists come from the transition
table. A backend supplies connections, transactions and retries (``_run``), and
the few things the two databases do differently (serialising the rate limit,
cluster-wide locks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from ..core.clock import Clock
from ..core.jsoncodec import dumps_str
from ..core.outcomes import ACTIVE, DEAD, FINAL, State, Via, states_before
from . import migrations
from .base import (
    KEPT_ATTEMPTS,
    RECORDED,
    Attempt,
    Browse,
    Claim,
    ClaimRequest,
    Finish,
    LeadStatus,
    QueueStatus,
    Retention,
    Row,
    Taken,
    check_finish,
    check_record,
    clip,
    kept,
    of_user,
    pins_invoice,
)
from .codec import read, stored
from .sql_mappings import MappingSetsSQL
from .sql_shared import SharedSQL
from .statements import (
    ANSWER_COLUMNS,
    ATTEMPT_COLUMNS,
    COLUMNS,
    DROP_OLD_ATTEMPTS,
    DUE,
    FINISHED_COLUMNS,
    GIVE_UP,
    QUEUE_SENT,
    QUEUE_STATUS,
    RECORD,
    RELEASE,
    SUPERSEDE,
    TAKE,
    claim_rows,
    claimed_rows,
    finish_rows,
    finish_rows_keeping,
    keep_attempts,
    prune_rows,
    row_is,
    states,
)

# Rows per claim statement: within SQLite's 32,766 parameters (six a row), and short
# enough that one statement never holds its locks for long.
CLAIM_CHUNK = 500
# Parameters per finish statement: PostgreSQL takes at most 65,535.
FINISH_PARAMETERS = 30_000
# MessageIds per look-up of rows_of_many: one parameter each.
ROWS_OF_MANY = 1000

T = TypeVar("T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class DB(Protocol):
    def execute(self, sql: str, params: Mapping[str, Any] = ...) -> Cursor: ...


class SQLLedger(SharedSQL, MappingSetsSQL):
    """Everything of the contract that is plain SQL; see the subclasses for the rest."""

    kind = "sql"
    shared_across_processes = True
    greatest = "GREATEST"  # the two-argument maximum: MAX in SQLite
    # PostgreSQL writes a finish's answers in its statement (finish_rows_keeping); SQLite,
    # whose statements cannot modify tables in a WITH, in more statements of its transaction.
    answers_in_finish = False
    real = "DOUBLE PRECISION"  # the type of times (REAL in SQLite)
    readonly = False
    skip_locked = "FOR UPDATE SKIP LOCKED"  # SQLite has one writer: nothing to skip

    def __init__(self, *, lease_seconds: float, clock: Clock):
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._record = {
            target: RECORD.format(recordable=states(states_before(target, Via.RECORD)))
            for target in RECORDED
        }
        self._capped_counts = " UNION ALL ".join(
            f"SELECT '{s.value}', COUNT(*) FROM (SELECT 1 FROM deliveries"
            f" WHERE state = '{s.value}' LIMIT :cap) AS capped_{s.value}"
            for s in State
        )
        self._take = TAKE.format(skip_locked=self.skip_locked)

    # --- what a backend supplies -------------------------------------------------------------

    def _run(
        self, work: Callable[[DB], T], *, tx: bool = False, write: bool = True,
        pipeline: bool = False,
    ) -> T:  # fmt: skip
        raise NotImplementedError

    def _serialise_migrations(self, db: DB) -> None:
        """Make the migration transaction the only one at a time."""

    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        raise NotImplementedError

    # --- claims and outcomes ---------------------------------------------------------------

    def claim_many(
        self, wanted: Sequence[ClaimRequest], *, redrive: bool = False, lease: float | None = None
    ) -> list[Claim]:
        now = self.clock.time()
        until = now + max(lease or 0.0, self.lease_seconds)
        # Rows are locked in key order, so two batches sharing rows cannot deadlock; a row
        # wanted twice in one batch is granted once (its first copy).
        order = sorted(range(len(wanted)), key=lambda i: (wanted[i].message_id, wanted[i].mapping))
        firsts: dict[tuple[str, str], int] = {}
        for index in order:
            firsts.setdefault((wanted[index].message_id, wanted[index].mapping), index)
        unique = [wanted[i] for i in firsts.values()]
        shared: dict[str, Any] = {"now": now, "lease": until, "redrive": int(redrive)}

        def claim_all(db: DB) -> dict[tuple[str, str], Claim]:
            claims: dict[tuple[str, str], Claim] = {}
            # One statement per chunk claims every row it can; one more reads the rest. A
            # chunk's rows share ``keep`` (one parameter of the statement's update), so rows
            # that keep their body are claimed apart, still in key order.
            for keep in (False, True):
                part = [w for w in unique if w.keep is keep]
                for start in range(0, len(part), CLAIM_CHUNK):
                    chunk = part[start : start + CLAIM_CHUNK]
                    claims |= self._claim_chunk(db, chunk, shared | {"keep": int(keep)})
            refused = [(w.message_id, w.mapping) for w in unique if (w.message_id, w.mapping)
                       not in claims]  # fmt: skip
            for start in range(0, len(refused), CLAIM_CHUNK):
                keys = refused[start : start + CLAIM_CHUNK]
                read: dict[str, Any] = {}
                for i, (mid, mapping) in enumerate(keys):
                    read |= {f"message_id_{i}": mid, f"mapping_{i}": mapping}
                # Read apart from the claim: the holder may have finished in between
                # (delivered, or pending again), so the state is the row's now, not the one
                # that refused the claim. Only a final state makes it a duplicate
                # (``decide.refused``), so either is safe.
                for mid, mapping, state, attempts, tainted, created, queued in db.execute(
                    claimed_rows(len(keys)), read
                ).fetchall():
                    claims[(mid, mapping)] = Claim(
                        False, State(state), attempts, bool(tainted), created,
                        queued=queued is not None,
                    )  # fmt: skip
            return claims

        # One claim statement is a transaction of its own (one round trip); more (rows that
        # keep their body, or past a chunk) are claimed in one transaction.
        keeps = sum(1 for w in unique if w.keep)
        statements = -(-keeps // CLAIM_CHUNK) + -(-(len(unique) - keeps) // CLAIM_CHUNK)
        claims = self._run(claim_all, tx=statements > 1, pipeline=True) if unique else {}
        answers: list[Claim] = []
        for index, w in enumerate(wanted):
            key = (w.message_id, w.mapping)
            # A row pruned in between is not settled as far as this claim knows.
            first = claims.get(key, Claim(False))
            if firsts[key] != index:  # a copy: its first is this batch's claim
                first = Claim(False, State.IN_FLIGHT, first.attempts, first.tainted,
                              first.created_at)  # fmt: skip
            answers.append(first)
        return answers

    def _claim_chunk(
        self, db: DB, chunk: Sequence[ClaimRequest], shared: Mapping[str, Any]
    ) -> dict[tuple[str, str], Claim]:
        """Claim the rows of ``chunk`` (distinct, in key order) in one statement: those granted."""
        args: dict[str, Any] = dict(shared)
        for i, w in enumerate(chunk):
            args |= {
                f"message_id_{i}": w.message_id,
                f"mapping_{i}": w.mapping,
                f"action_{i}": w.action,
                f"event_{i}": w.event,
                f"customer_{i}": w.customer,
                f"body_{i}": stored(w.body),
                f"source_{i}": w.source,
            }
        granted: dict[tuple[str, str], Claim] = {}
        for mid, mapping, prev, attempts, tainted, created, body, queued in db.execute(
            claim_rows(len(chunk)), args
        ).fetchall():
            before = State(prev) if prev else None
            granted[(mid, mapping)] = Claim(
                True, before, attempts, bool(tainted), created, read(body), queued is not None
            )
        return granted

    def finish(
        self,
        message_id: str,
        mapping: str,
        state: State,
        *,
        calls: int = 0,
        status: int | None = None,
        error: Any = None,
        payload: Any = None,
        tainted: bool = False,
        not_before: float | None = None,
        queued: bool = False,
        answers: Sequence[Attempt] = (),
    ) -> bool:
        finish = Finish(message_id, mapping, state, calls, status, error, payload, tainted,
                        not_before, queued, answers)  # fmt: skip
        return self.finish_many([finish])[0]

    def _finish_chunks(self, unique: Sequence[Finish]) -> Iterator[Sequence[Finish]]:
        """``unique`` in runs of at most CLAIM_CHUNK rows and, where answers ride along,
        at most FINISH_PARAMETERS parameters (a row with 20 answers takes 190)."""
        start, size = 0, 0
        for end, f in enumerate(unique):
            cost = len(FINISHED_COLUMNS) + (
                len(ANSWER_COLUMNS) * min(len(f.answers), KEPT_ATTEMPTS)
                if self.answers_in_finish
                else 0
            )
            if end - start == CLAIM_CHUNK or (end > start and size + cost > FINISH_PARAMETERS):
                yield unique[start:end]
                start, size = end, 0
            size += cost
        if start < len(unique):
            yield unique[start:]

    @staticmethod
    def _keep_answers(
        db: DB, message_id: str, mapping: str, answers: Sequence[Attempt], after: int
    ) -> None:
        """A finished row's answers, numbered so the last is call ``after``; the row's calls
        past the last KEPT_ATTEMPTS dropped."""
        numbered: dict[str, Any] = {"message_id": message_id, "mapping": mapping}
        chosen = kept(answers, after)
        for i, (number, answer) in enumerate(chosen):
            numbered |= attempt_args(i, number, answer)
        db.execute(keep_attempts(len(chosen)), numbered)
        if after > KEPT_ATTEMPTS:  # else every call of the row is kept: nothing to drop
            numbered["oldest_gone"] = after - KEPT_ATTEMPTS
            db.execute(DROP_OLD_ATTEMPTS, numbered)

    def finish_many(self, finishes: Sequence[Finish]) -> list[bool]:
        for f in finishes:
            check_finish(f.state)
        # Each row once (its first), in key order, so two statements sharing rows (a lease
        # taken over) lock them in the same order.
        firsts: dict[tuple[str, str], Finish] = {}
        for f in finishes:
            firsts.setdefault(f.key, f)
        unique = sorted(firsts.values(), key=lambda f: f.key)
        now = self.clock.time()
        statements = []
        for chunk in self._finish_chunks(unique):
            args: dict[str, Any] = {"now": now}
            kept_answers = 0
            for i, f in enumerate(chunk):
                args |= {
                    f"message_id_{i}": f.message_id,
                    f"mapping_{i}": f.mapping,
                    f"state_{i}": State(f.state).value,
                    f"calls_{i}": f.calls,
                    f"status_{i}": f.status,
                    f"error_{i}": stored(f.error),
                    f"payload_{i}": stored(f.payload),
                    f"tainted_{i}": int(f.tainted),
                    f"not_before_{i}": f.not_before,
                    f"queued_{i}": int(f.queued),
                }
                if self.answers_in_finish:
                    last = list(f.answers)[-KEPT_ATTEMPTS:]
                    for back, answer in enumerate(reversed(last)):
                        args |= answer_args(kept_answers, f, back, answer)
                        kept_answers += 1
            sql = (
                finish_rows_keeping(len(chunk), kept_answers, KEPT_ATTEMPTS)
                if kept_answers
                else finish_rows(len(chunk), self.greatest, self.real)
            )
            statements.append((sql, args))

        answered = [] if self.answers_in_finish else [f for f in unique if f.answers]

        def finish_all(db: DB) -> set[tuple[str, str]]:
            after = {
                (m, p): n
                for sql, args in statements
                for m, p, n in db.execute(sql, args).fetchall()
            }
            for f in answered:  # Dub's answers to the calls, for the rows finished
                if f.key in after:
                    self._keep_answers(db, f.message_id, f.mapping, f.answers, after[f.key])
            return set(after)

        many = len(statements) > 1 or bool(answered)
        done = self._run(finish_all, tx=many) if statements else set()
        seen: set[tuple[str, str]] = set()
        answers = []
        for f in finishes:
            answers.append(f.key in done and f.key not in seen)
            seen.add(f.key)
        return answers

    def defer(self, message_id: str, mapping: str, until: float) -> bool:
        args = {"message_id": message_id, "mapping": mapping, "until": until}
        return self._changed(
            "UPDATE deliveries SET not_before = :until"
            f" WHERE message_id = :message_id AND mapping = :mapping AND {row_is('pending')}",
            args,
        )

    def release(self, message_id: str, mapping: str, *, payload: Any = None) -> bool:
        args = {"message_id": message_id, "mapping": mapping, "payload": stored(payload),
                "now": self.clock.time()}  # fmt: skip
        return self._changed(RELEASE, args)

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
        source: str | None = None,
    ) -> bool:
        target = check_record(state)
        args = {
            "message_id": message_id,
            "mapping": mapping,
            "action": action,
            "event": event,
            "state": target.value,
            "error": stored(errors),
            "payload": stored(payload),
            "now": self.clock.time(),
            "source": source,
        }
        return self._changed(self._record[target], args)

    def supersede(self, message_id: str, mapping: str) -> bool:
        args = {"message_id": message_id, "mapping": mapping, "now": self.clock.time()}
        return self._changed(SUPERSEDE, args)

    def pin(
        self, message_id: str, mapping: str, body: dict[str, Any], *, invoice: str | None = None
    ) -> bool:
        args = {"message_id": message_id, "mapping": mapping, "body": stored(body)}

        def pin_one(db: DB) -> bool:
            if invoice is not None:
                self._serialise(db, f"invoice:{invoice}")
                pattern = "%" + _like(dumps_str({"invoiceId": invoice})[1:-1]) + "%"
                found = db.execute(
                    f"SELECT {COLUMNS} FROM deliveries WHERE state IN {states(ACTIVE)}"
                    " AND request_body LIKE :pattern ESCAPE '\\'",
                    {"pattern": pattern},
                ).fetchall()
                for other in map(_row, found):
                    mine = (other.message_id, other.mapping) == (message_id, mapping)
                    if not mine and pins_invoice(other, invoice):
                        return False
            changed = db.execute(
                "UPDATE deliveries SET request_body = :body"
                " WHERE message_id = :message_id AND mapping = :mapping"
                f" AND {row_is('in_flight')}",
                args,
            )
            return changed.rowcount == 1

        return self._run(pin_one, tx=True)

    def _serialise(self, db: DB, name: str) -> None:
        """Make this transaction the only one at a time for ``name`` (SQLite: every write
        transaction already is)."""

    def invoice_rows(self, invoice_id: str) -> list[Row]:
        # No column holds the invoice: a LIKE on the stored JSON narrows, Python decides.
        args = {"pattern": "%" + _like(dumps_str({"invoiceId": invoice_id})[1:-1]) + "%"}
        found = self._rows(
            "WHERE state = 'delivered' AND request_body LIKE :pattern ESCAPE '\\'"
            " ORDER BY updated_at, message_id",
            args,
        )
        return [
            r
            for r in found
            if isinstance(r.request_body, dict) and r.request_body.get("invoiceId") == invoice_id
        ]

    def erase(self, customer: str, note: dict[str, Any]) -> int:
        pattern = "%" + _like(dumps_str({"userId": customer})[1:-1]) + "%"
        text = stored(note)

        def erase_all(db: DB) -> int:
            found = db.execute(
                "SELECT message_id, mapping, customer, payload FROM deliveries"
                " WHERE customer = :customer OR payload LIKE :pattern ESCAPE '\\'",
                {"customer": customer, "pattern": pattern},
            ).fetchall()
            changed = 0
            for message_id, mapping, owner, payload in found:
                if owner != customer and not of_user(read(payload), customer):
                    continue
                db.execute(
                    "UPDATE deliveries SET"
                    " payload = CASE WHEN payload IS NULL THEN NULL ELSE :note END,"
                    " request_body = CASE WHEN request_body IS NULL THEN NULL ELSE :note END"
                    " WHERE message_id = :message_id AND mapping = :mapping",
                    {"note": text, "message_id": message_id, "mapping": mapping},
                )
                db.execute(
                    "UPDATE dub_attempts SET answer = :note WHERE message_id = :message_id"
                    " AND mapping = :mapping AND answer IS NOT NULL",
                    {"note": text, "message_id": message_id, "mapping": mapping},
                )
                changed += 1
            return changed

        return self._run(erase_all, tx=True)

    def _changed(self, sql: str, args: Mapping[str, Any]) -> bool:
        return self._run(lambda db: db.execute(sql, args).rowcount) == 1

    # --- reading ---------------------------------------------------------------------------

    def lead_status(self, customer: str, within_seconds: float) -> LeadStatus | None:
        sql = (
            "SELECT state FROM deliveries"
            " WHERE customer = :customer AND action = 'lead' AND updated_at > :since"
        )
        args = {"customer": customer, "since": self.clock.time() - within_seconds}
        found = {State(s) for (s,) in self._read(sql, args)}
        if found & {State.DELIVERED, State.DEDUPLICATED}:
            return LeadStatus.SETTLED
        if found & ACTIVE:
            return LeadStatus.UNSETTLED
        return None

    def get(self, message_id: str, mapping: str) -> Row | None:
        where = "WHERE message_id = :message_id AND mapping = :mapping"
        found = self._rows(where, {"message_id": message_id, "mapping": mapping})
        return found[0] if found else None

    def rows_of(self, message_id: str) -> list[Row]:
        return self.rows_of_many([message_id]).get(message_id, [])

    def attempts_of(self, message_id: str) -> list[Attempt]:
        found = self._read(
            "SELECT mapping, number, at, method, path, status, answer, retry_after"
            " FROM dub_attempts WHERE message_id = :message_id ORDER BY mapping, number",
            {"message_id": message_id},
        )
        return [
            Attempt(at, method, path, status, answer, retry_after, mapping, number)
            for mapping, number, at, method, path, status, answer, retry_after in found
        ]

    def rows_of_many(self, message_ids: Collection[str]) -> dict[str, list[Row]]:
        found: dict[str, list[Row]] = {}
        ids = sorted(set(message_ids))
        # Bounded statements: SQLite caps a statement's parameters (32,766 by default).
        for start in range(0, len(ids), ROWS_OF_MANY):
            part = ids[start : start + ROWS_OF_MANY]
            names = {f"m{i}": message_id for i, message_id in enumerate(part)}
            listed = ", ".join(f":{name}" for name in names)
            clause = f"WHERE message_id IN ({listed}) ORDER BY message_id, mapping"
            for row in self._rows(clause, names):
                found.setdefault(row.message_id, []).append(row)
        return found

    def dead_letters(self, *, mapping: str | None = None, since: float | None = None) -> list[Row]:
        where = f"WHERE state IN {states(DEAD)}"
        args: dict[str, Any] = {}
        if mapping is not None:
            where += " AND mapping = :mapping"
            args["mapping"] = mapping
        if since is not None:
            where += " AND updated_at >= :since"
            args["since"] = since
        return self._rows(where + " ORDER BY created_at, message_id", args)

    def counts(self, cap: int | None = None) -> dict[State, int]:
        if cap is None:
            rows = self._read("SELECT state, COUNT(*) FROM deliveries GROUP BY state", {})
        else:
            # One index range per state, each read no further than the cap.
            rows = self._read(self._capped_counts, {"cap": cap})
        return {State(state): count for state, count in rows if count}

    def browse(self, query: Browse) -> list[Row]:
        where = ["1 = 1"]
        args: dict[str, Any] = {"limit": query.limit}
        # The list is read one state at a time, merged (below), with or without a state or a
        # mapping chosen; a search is a handful of rows, whatever else it asks.
        by_state = query.search is None
        if query.states is not None and not by_state:
            where.append(f"state IN {states(query.states)}" if query.states else "1 = 0")
        if query.mapping is not None:
            where.append("mapping = :mapping")
            args["mapping"] = query.mapping
        if query.since is not None:
            where.append("created_at >= :since")
            args["since"] = query.since
        if query.search is not None:
            where.append("(message_id = :search OR customer = :search)")
            args["search"] = query.search
        if query.after is not None:
            # Row values compare left to right: one index range, whatever the page.
            where.append("(created_at, message_id, mapping) < (:at, :mid, :map)")
            args.update(at=query.after[0], mid=query.after[1], map=query.after[2])
        clause = " AND ".join(where)
        order = "ORDER BY created_at DESC, message_id DESC, mapping DESC LIMIT :limit"
        if not by_state:
            return self._rows(f"WHERE {clause} {order}", args)
        # One index range per state (deliveries_state_recent, or deliveries_mapping_state with
        # a mapping), each read no further than a page, then merged: a rare state costs what
        # a common one does, wherever its rows lie in time (one IN list over the newest-first
        # index would walk every newer row to find a state that has none lately). Every row,
        # unfiltered, is the merge of every state: no index of its own for each claim to write.
        wanted = sorted(query.states if query.states is not None else State)
        if not wanted:
            return []
        pages = " UNION ALL ".join(
            f"SELECT * FROM (SELECT {COLUMNS} FROM deliveries WHERE state = '{s.value}'"
            f" AND {clause} {order}) AS page_{s.value}"
            for s in wanted
        )
        return [_row(r) for r in self._read(f"{pages} {order}", args)]

    def oldest_unsettled(self) -> float | None:
        sql = f"SELECT MIN(created_at) FROM deliveries WHERE state IN {states(ACTIVE)}"
        (oldest,) = self._read(sql, {})[0]
        return None if oldest is None else float(oldest)

    def due(self, *, first_seen_before: float, limit: int) -> list[Row]:
        args = {"before": first_seen_before, "now": self.clock.time(), "limit": limit}
        return [_row(r) for r in self._read(DUE, args)]

    def take(self, *, first_seen_before: float, limit: int, lease: float) -> list[Taken]:
        now = self.clock.time()
        args = {"before": first_seen_before, "now": now, "limit": limit, "lease": now + lease}
        found = self._run(lambda db: db.execute(self._take, args).fetchall())
        taken = []
        # RETURNING gives no order: the queue's is restored here.
        for r in sorted(found, key=lambda r: (r[16] if r[16] is not None else r[11], r[0], r[1])):
            row, prev, tainted = _row(r), r[14], r[15]
            before = State(prev) if prev else None
            queued = r[16] is not None
            claim = Claim(
                True, before, row.attempts, bool(tainted), row.created_at, row.request_body,
                queued=queued,
            )  # fmt: skip
            taken.append(Taken(row, claim))
        return taken

    def queue_status(self) -> QueueStatus:
        def read(db: DB) -> QueueStatus:
            depth, oldest = db.execute(QUEUE_STATUS, {}).fetchone()
            since = {"since": self.clock.time() - 60.0}
            (sent,) = db.execute(QUEUE_SENT, since).fetchone()
            return QueueStatus(int(depth), None if oldest is None else float(oldest), int(sent))

        return self._run(read, write=False)

    def _read(self, sql: str, args: Mapping[str, Any]) -> list[Any]:
        return self._run(lambda db: db.execute(sql, args).fetchall(), write=False)

    def _rows(self, clause: str, args: Mapping[str, Any]) -> list[Row]:
        return [_row(r) for r in self._read(f"SELECT {COLUMNS} FROM deliveries {clause}", args)]

    # --- housekeeping -----------------------------------------------------------------------

    def sweep(self, retention: Retention) -> dict[str, int]:
        now = self.clock.time()
        args = {"now": now, "before": now - retention.give_up_after, "batch": retention.batch}
        done = {"gave_up": self._in_batches(GIVE_UP, args, retention.batch)}
        done["pruned"] = sum(
            self._prune(state, now - (retention.dead if state in DEAD else retention.settled),
                        retention.batch)
            for state in sorted(FINAL | DEAD)
        )  # fmt: skip
        self.prune_slots()
        # A signature is remembered while an event it could carry can be accepted, whatever
        # the retention of rows; one recorded by the release before, for as long after its
        # first sighting.
        old = now - retention.signatures if math.isfinite(retention.signatures) else None
        forget = {"now": now, "before": old}
        self._run(
            lambda db: db.execute(
                "DELETE FROM signatures WHERE keep_until < :now"
                " OR (keep_until IS NULL AND first_seen < :before)",
                forget,
            )
        )
        return done

    def _prune(self, state: State, before: float, batch: int) -> int:
        """Rows of ``state`` settled before ``before``, deleted a batch at a time, each batch
        starting after the last row deleted."""
        first = {"state": state.value, "before": before, "batch": batch}

        def delete(args: dict[str, Any], after: bool) -> Callable[[DB], list[Any]]:
            return lambda db: db.execute(prune_rows(after), args).fetchall()

        total = 0
        deleted = self._run(delete(first, False))
        while True:
            total += len(deleted)
            if len(deleted) < batch:
                return total
            at, mid, mapping = max(tuple(row) for row in deleted)
            deleted = self._run(delete(first | {"at": at, "mid": mid, "map": mapping}, True))

    def _in_batches(self, sql: str, args: Mapping[str, Any], batch: int) -> int:
        def one(db: DB) -> int:
            return db.execute(sql, args).rowcount

        total = 0
        while True:
            count = self._run(one)
            total += count
            if count < batch:
                return total

    def maintain(self) -> None:
        """Nothing beyond the SQL; a backend may do more."""

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone(), write=False)

    def probe_write(self) -> None:
        # One row of the locks table that no lock is named after, rewritten: a real commit,
        # which a full disk or a read-only file refuses while reads still answer.
        self._run(
            lambda db: db.execute(
                "INSERT INTO locks (name, owner, until) VALUES ('write-probe', '-', :now)"
                " ON CONFLICT (name) DO UPDATE SET until = excluded.until",
                {"now": self.clock.time()},
            ),
            tx=True,
        )

    def close(self) -> None:
        raise NotImplementedError

    # --- schema ----------------------------------------------------------------------------

    def applied(self) -> list[int]:
        def versions(db: DB) -> list[int]:
            if not self._has_table(db, "schema_migrations"):
                return []
            return [v for (v,) in db.execute("SELECT version FROM schema_migrations").fetchall()]

        return self._run(versions, write=False)

    def schema(self) -> migrations.SchemaStatus:
        return migrations.status(self.applied())

    def has_table(self, name: str) -> bool:
        return self._run(lambda db: self._has_table(db, name), write=False)

    def _has_table(self, db: DB, name: str) -> bool:
        raise NotImplementedError

    def upgrade(self) -> list[migrations.Migration]:
        """Apply missing migrations in one transaction, one process at a time."""

        def apply(db: DB) -> list[migrations.Migration]:
            self._serialise_migrations(db)
            db.execute(migrations.schema_table(self.kind))
            done = [v for (v,) in db.execute("SELECT version FROM schema_migrations").fetchall()]
            todo = migrations.missing(done)
            for migration in todo:
                for statement in migration.statements(self.kind):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (:version, :name, :now)",
                    {"version": migration.version, "name": migration.name,
                     "now": self.clock.time()},
                )  # fmt: skip
            return todo

        return self._run(apply, tx=True)


def attempt_args(i: int, number: int, answer: Attempt) -> dict[str, Any]:
    """One answer's parameters, the ``i``-th of a statement (``ATTEMPT_COLUMNS``)."""
    values = (number, answer.at, answer.method, answer.path, answer.status, clip(answer.answer),
              answer.retry_after)  # fmt: skip
    return {f"{c}_{i}": v for c, v in zip(ATTEMPT_COLUMNS, values, strict=True)}


def answer_args(j: int, finish: Finish, back: int, answer: Attempt) -> dict[str, Any]:
    """The ``j``-th answer of a ``finish_rows_keeping`` statement (``ANSWER_COLUMNS``): of
    ``finish``'s row, ``back`` calls before its last."""
    values = (finish.message_id, finish.mapping, back, answer.at, answer.method, answer.path,
              answer.status, clip(answer.answer), answer.retry_after)  # fmt: skip
    return {f"{c}_{j}": v for c, v in zip(ANSWER_COLUMNS, values, strict=True)}


def _like(text: str) -> str:
    """``text`` matched literally by LIKE ... ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row(r: Sequence[Any]) -> Row:
    return Row(
        r[0], r[1], r[2], r[3], r[4], State(r[5]), r[6], read(r[7]), read(r[8]), r[9],
        read(r[10]), r[11], r[12], r[13],
    )  # fmt: skip

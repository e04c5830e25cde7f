"""The ledger's SQL, written once for SQLite and PostgreSQL.

Parameters are ``:name`` (the PostgreSQL backend rewrites them for its driver);
state lists come from the transition table, so the SQL never names a state set
of its own.
"""

from __future__ import annotations

from functools import lru_cache

from ..core.outcomes import (
    ACTIVE,
    CLAIMABLE,
    DEAD,
    FINAL,
    REDRIVABLE,
    RELEASABLE,
    SWEEPABLE,
    UNPROVEN,
    State,
)


def states(values: frozenset[State]) -> str:
    """A SQL list of states, built from the transition table (values are fixed words)."""
    return "(" + ",".join(f"'{s.value}'" for s in sorted(values)) + ")"


def row_is(state: str, table: str = "") -> str:
    """A row found by its key is in ``state``: written so no index can serve it. An index
    that holds the state (the console's, by mapping and state) would otherwise be chosen
    for ``key AND state = ...`` and scanned through the entries of every row that has passed
    through that state since the last vacuum: a finish took 20 to 30 ms on PostgreSQL after
    a minute of load, instead of under 1 ms by the primary key."""
    return f"{table}state || '' = '{State(state).value}'"


COLUMNS = (
    "message_id, mapping, action, event, customer, state, attempts, request_body,"
    " payload, status, error, created_at, updated_at, source"
)
# A row that held an unproven copy starts afresh: no payload, error or first sighting of it.
_UNPROVEN = states(UNPROVEN)
CLAIM = f"""
INSERT INTO deliveries (message_id, mapping, action, event, customer, state, attempts,
                        request_body, lease_until, created_at, updated_at, source)
VALUES (:message_id, :mapping, :action, :event, :customer, 'in_flight', 0,
        :body, :lease, :now, :now, :source)
ON CONFLICT (message_id, mapping) DO UPDATE SET
    prev_state = deliveries.state, state = 'in_flight', lease_until = excluded.lease_until,
    request_body = CASE WHEN :keep = 1 AND deliveries.state IN {states(ACTIVE)}
        AND deliveries.request_body IS NOT NULL THEN deliveries.request_body
        ELSE excluded.request_body END,
    customer = excluded.customer,
    updated_at = excluded.updated_at, source = COALESCE(deliveries.source, excluded.source),
    payload = CASE WHEN deliveries.state IN {_UNPROVEN} THEN NULL ELSE deliveries.payload END,
    error = CASE WHEN deliveries.state IN {_UNPROVEN} THEN NULL ELSE deliveries.error END,
    created_at = CASE WHEN deliveries.state IN {_UNPROVEN} THEN excluded.created_at
        ELSE deliveries.created_at END
WHERE deliveries.state IN {states(CLAIMABLE)}
   OR (deliveries.state = 'in_flight' AND COALESCE(deliveries.lease_until, 0) <= :now)
   OR (:redrive = 1 AND deliveries.state IN {states(REDRIVABLE)})
RETURNING prev_state, attempts, tainted, created_at, request_body, queued_at
"""


def _values(count: int, columns: tuple[str, ...], template: str) -> str:
    """``count`` rows of VALUES, each from ``template`` with its parameters numbered."""
    rows = []
    for i in range(count):
        row = template
        for column in columns:
            row = row.replace(f":{column}", f":{column}_{i}")
        rows.append(row)
    return ",\n".join(rows)


CLAIMED_COLUMNS = ("message_id", "mapping", "action", "event", "customer", "body", "source")
_CLAIM_ROW = (
    "(:message_id, :mapping, :action, :event, :customer, 'in_flight', 0, :body, :lease, :now,"
    " :now, :source)"
)


@lru_cache(maxsize=64)
def claim_rows(count: int) -> str:
    """CLAIM for ``count`` rows in one statement (keys distinct, in key order, so two
    statements sharing rows lock them in the same order); RETURNING names each row granted."""
    head, rest = CLAIM.split("VALUES", 1)
    _, tail = rest.split("ON CONFLICT", 1)
    returning = "RETURNING message_id, mapping, prev_state,"
    body = head + "VALUES " + _values(count, CLAIMED_COLUMNS, _CLAIM_ROW) + "\nON CONFLICT" + tail
    return body.replace("RETURNING prev_state,", returning)


@lru_cache(maxsize=64)
def claimed_rows(count: int) -> str:
    """The state of ``count`` rows a claim was refused for, read in one statement."""
    keys = _values(count, ("message_id", "mapping"), "(:message_id, :mapping)")
    return (
        "SELECT message_id, mapping, state, attempts, tainted, created_at, queued_at"
        f" FROM deliveries WHERE (message_id, mapping) IN (VALUES {keys})"
    )


FINISHED_COLUMNS = (
    "message_id", "mapping", "state", "calls", "status", "error", "payload", "tainted",
    "not_before", "queued",
)  # fmt: skip
# Typed, so PostgreSQL knows each column of the VALUES (SQLite's CAST is harmless).
_FINISH_ROW = (
    "(:message_id, :mapping, :state, CAST(:calls AS INTEGER), CAST(:status AS INTEGER),"
    " :error, :payload, CAST(:tainted AS INTEGER), CAST(:not_before AS {real}),"
    " CAST(:queued AS INTEGER))"
)


_FINISH_FROM_V = f"""
UPDATE deliveries SET state = v.state, status = v.status, error = v.error,
    lease_until = NULL, payload = COALESCE(v.payload, deliveries.payload),
    tainted = {{greatest}}(deliveries.tainted, v.tainted),
    attempts = deliveries.attempts + v.calls, not_before = v.not_before, updated_at = :now,
    queued_at = CASE WHEN v.queued = 1 THEN COALESCE(deliveries.queued_at, :now)
        ELSE deliveries.queued_at END
FROM v
WHERE deliveries.message_id = v.message_id AND deliveries.mapping = v.mapping
  AND {row_is("in_flight", "deliveries.")}
RETURNING deliveries.message_id, deliveries.mapping, deliveries.attempts
"""


def _finished(count: int, real: str) -> str:
    """The ``v`` of a finish of ``count`` rows: each row's key and values."""
    values = _values(count, FINISHED_COLUMNS, _FINISH_ROW.format(real=real))
    return f"v ({', '.join(FINISHED_COLUMNS)}) AS (VALUES {values})"


@lru_cache(maxsize=64)
def finish_rows(count: int, greatest: str, real: str) -> str:
    """A finish of ``count`` in-flight rows (keys distinct) in one statement, each with its own
    values; RETURNING names each row that was in flight, with its calls so far."""
    return f"WITH {_finished(count, real)}\n{_FINISH_FROM_V.format(greatest=greatest).strip()}"


RELEASE = f"""
UPDATE deliveries SET state = CASE WHEN prev_state IN {states(RELEASABLE)} THEN prev_state
    ELSE 'pending' END, lease_until = NULL, payload = COALESCE(:payload, payload),
    updated_at = :now
WHERE message_id = :message_id AND mapping = :mapping AND {row_is("in_flight")}
"""
RECORD = """
INSERT INTO deliveries (message_id, mapping, action, event, state, error, payload,
                        created_at, updated_at, source)
VALUES (:message_id, :mapping, :action, :event, :state, :error, :payload, :now, :now, :source)
ON CONFLICT (message_id, mapping) DO UPDATE SET state = excluded.state,
    error = excluded.error, payload = excluded.payload, updated_at = excluded.updated_at,
    source = COALESCE(deliveries.source, excluded.source)
WHERE deliveries.state IN {recordable}
"""
SUPERSEDE = f"""
UPDATE deliveries SET state = 'superseded', updated_at = :now
WHERE message_id = :message_id AND mapping = :mapping AND state IN {states(DEAD)}
"""
DUE = f"""
SELECT {COLUMNS} FROM deliveries
WHERE (created_at < :before OR not_before IS NOT NULL) AND COALESCE(not_before, 0) <= :now
  AND request_body IS NOT NULL
  AND (state = 'pending' OR (state = 'in_flight' AND COALESCE(lease_until, 0) <= :now))
ORDER BY created_at LIMIT :limit
"""
# What the outbox may send: queued rows (Dub's rate limit was full), rows handed to it
# (``defer``), and unsettled rows older than Segment's retry window; never a sale while a
# lead of its customer is unsettled (Dub would answer sale: null and record nothing).
_SENDABLE = """
request_body IS NOT NULL AND COALESCE(not_before, 0) <= :now
AND (queued_at IS NOT NULL OR not_before IS NOT NULL OR created_at < :before)
AND (state = 'pending' OR (state = 'in_flight' AND COALESCE(lease_until, 0) <= :now))
"""
# The outbox takes its next rows in one statement, as claims: in the order queued, each
# row by one sender (PostgreSQL skips rows another sender's statement holds; SQLite has one
# writer at a time). The pick is materialised: evaluated once, so a LIMIT with SKIP LOCKED
# cannot be re-run by the planner into more rows than asked.
TAKE = f"""
WITH picked AS MATERIALIZED (
    SELECT message_id, mapping FROM deliveries AS d
    WHERE {_SENDABLE}
      AND NOT (COALESCE(d.action, '') <> 'lead' AND d.customer IS NOT NULL AND EXISTS (
          SELECT 1 FROM deliveries AS l WHERE l.customer = d.customer AND l.action = 'lead'
            AND l.state IN {states(ACTIVE)}))
    ORDER BY COALESCE(queued_at, created_at), message_id, mapping
    LIMIT :limit {{skip_locked}})
UPDATE deliveries SET prev_state = state, state = 'in_flight', lease_until = :lease,
    updated_at = :now
WHERE (message_id, mapping) IN (SELECT message_id, mapping FROM picked)
  AND {_SENDABLE}
RETURNING {COLUMNS}, prev_state, tainted, queued_at
"""
QUEUE_STATUS = f"""
SELECT COUNT(*), MIN(queued_at) FROM deliveries
WHERE queued_at IS NOT NULL AND state IN {states(ACTIVE)}
"""
QUEUE_SENT = f"""
SELECT COUNT(*) FROM deliveries
WHERE queued_at IS NOT NULL AND state IN {states(FINAL)} AND updated_at >= :since
"""
# Housekeeping works a batch at a time, so no statement holds its locks for long. Its
# conditions are checked again on each row it changes: on PostgreSQL a row another instance
# claimed or finished after the pick read it is seen as it is once its lock is free, and
# is left alone (written so no index on the state serves them: see ``row_is``).
GIVE_UP = f"""
UPDATE deliveries SET state = 'gave_up', lease_until = NULL, updated_at = :now
WHERE (message_id, mapping) IN (
    SELECT message_id, mapping FROM deliveries
    WHERE state IN {states(SWEEPABLE)} AND created_at < :before
      AND COALESCE(lease_until, 0) < :now
    LIMIT :batch)
  AND state || '' IN {states(SWEEPABLE)} AND COALESCE(lease_until, 0) < :now
"""


# A prune reads one state's range by first sighting (deliveries_state_recent), in that order,
# a batch at a time, each batch after the last row the one before deleted: a row kept
# because it changed lately (a dead letter redriven, a row the outbox sent hours after its
# first sighting) is read once per sweep, not once per batch. A row's last change is not
# before its first sighting (but for the clocks of two instances apart), so the bound on
# created_at keeps every row the bound on updated_at prunes.
@lru_cache(maxsize=2)
def prune_rows(after: bool) -> str:
    """Delete at most :batch rows of :state settled before :before, the oldest first (after
    the key :at, :mid, :map when ``after``); RETURNING the key of each row deleted."""
    past = "AND (created_at, message_id, mapping) > (:at, :mid, :map)" if after else ""
    return f"""
DELETE FROM deliveries WHERE (message_id, mapping) IN (
    SELECT message_id, mapping FROM deliveries
    WHERE state = :state AND created_at < :before AND updated_at < :before {past}
    ORDER BY created_at, message_id, mapping LIMIT :batch)
  AND state || '' = :state AND updated_at < :before
RETURNING created_at, message_id, mapping
"""


PAUSE = """
INSERT INTO rate_pauses (key, until) VALUES (:key, :until)
ON CONFLICT (key) DO UPDATE SET until = {greatest}(rate_pauses.until, excluded.until)
"""
TAKE_SLOTS = """
INSERT INTO rate_buckets (key, second, taken) VALUES (:key, :second, :taken)
ON CONFLICT (key, second) DO UPDATE SET taken = rate_buckets.taken + excluded.taken
"""
# Dub's answers to a row's calls, kept with its finish: numbered on from the row's calls
# before, the last KEPT_ATTEMPTS of the row kept.
ATTEMPT_COLUMNS = ("number", "at", "method", "path", "status", "answer", "retry_after")
_INTO_ATTEMPTS = f"INSERT INTO dub_attempts (message_id, mapping, {', '.join(ATTEMPT_COLUMNS)})"
_ON_CONFLICT = "ON CONFLICT (message_id, mapping, number) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in ATTEMPT_COLUMNS[1:]
)
DROP_OLD_ATTEMPTS = """
DELETE FROM dub_attempts WHERE message_id = :message_id AND mapping = :mapping
  AND number <= :oldest_gone
"""


@lru_cache(maxsize=64)
def keep_attempts(count: int) -> str:
    """Insert ``count`` answers of a row, numbered as given (``:number_i``)."""
    template = "(:message_id, :mapping, " + ", ".join(f":{c}" for c in ATTEMPT_COLUMNS) + ")"
    rows = _values(count, ATTEMPT_COLUMNS, template)
    return f"{_INTO_ATTEMPTS}\nVALUES {rows}\n{_ON_CONFLICT}"


# One answer of a finish_rows_keeping statement: its row's key, and how many calls of that
# row came after it (0 for the last), so its number follows from the row's calls. Named
# apart from FINISHED_COLUMNS: both are parameters of one statement.
ANSWER_COLUMNS = ("a_message_id", "a_mapping", "a_back",
                  *(f"a_{c}" for c in ATTEMPT_COLUMNS[1:]))  # fmt: skip
_ANSWER_ROW = (
    "(CAST(:a_message_id AS TEXT), CAST(:a_mapping AS TEXT), CAST(:a_back AS INTEGER),"
    " CAST(:a_at AS DOUBLE PRECISION), CAST(:a_method AS TEXT), CAST(:a_path AS TEXT),"
    " CAST(:a_status AS INTEGER), CAST(:a_answer AS TEXT),"
    " CAST(:a_retry_after AS DOUBLE PRECISION))"
)


@lru_cache(maxsize=64)
def finish_rows_keeping(count: int, answers: int, keep: int) -> str:
    """PostgreSQL: a finish of ``count`` rows (as ``finish_rows``), the ``answers`` Dub gave
    to their calls, and the drop of each answered row's calls past its last ``keep``, in one
    statement (one round trip). Each answer is numbered from the calls its row's update
    returns; a row that was not in flight keeps none. RETURNING as ``finish_rows``."""
    update = _FINISH_FROM_V.format(greatest="GREATEST").strip()
    rows = _values(answers, ANSWER_COLUMNS, _ANSWER_ROW)
    return f"""
WITH {_finished(count, "DOUBLE PRECISION")},
done AS ({update}),
a ({", ".join(ANSWER_COLUMNS)}) AS (VALUES {rows}),
kept AS (
    {_INTO_ATTEMPTS}
    SELECT a.a_message_id, a.a_mapping, done.attempts - a.a_back,
           {", ".join(f"a.a_{c}" for c in ATTEMPT_COLUMNS[1:])}
    FROM a JOIN done ON done.message_id = a.a_message_id AND done.mapping = a.a_mapping
    {_ON_CONFLICT}),
dropped AS (
    DELETE FROM dub_attempts USING done
    WHERE dub_attempts.message_id = done.message_id AND dub_attempts.mapping = done.mapping
      AND dub_attempts.number <= done.attempts - {keep}
      AND (done.message_id, done.mapping) IN (SELECT a_message_id, a_mapping FROM a))
SELECT message_id, mapping, attempts FROM done
"""

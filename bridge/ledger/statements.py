"""The ledger's SQL, written once for SQLite and PostgreSQL.

Parameters are ``:name`` (the PostgreSQL backend rewrites them for its driver);
state lists come from the transition table, so the SQL never names a state set
of its own.
"""

from __future__ import annotations

from ..core.outcomes import (
    ACTIVE,
    CLAIMABLE,
    DEAD,
    REDRIVABLE,
    RELEASABLE,
    SWEEPABLE,
    UNPROVEN,
    State,
)


def states(values: frozenset[State]) -> str:
    """A SQL list of states, built from the transition table (values are fixed words)."""
    return "(" + ",".join(f"'{s.value}'" for s in sorted(values)) + ")"


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
RETURNING prev_state, attempts, tainted, created_at, request_body
"""
FINISH = """
UPDATE deliveries SET state = :state, status = :status, error = :error, lease_until = NULL,
    payload = COALESCE(:payload, payload), tainted = {greatest}(tainted, :tainted),
    attempts = attempts + :calls, not_before = :not_before, updated_at = :now
WHERE message_id = :message_id AND mapping = :mapping AND state = 'in_flight'
"""
RELEASE = f"""
UPDATE deliveries SET state = CASE WHEN prev_state IN {states(RELEASABLE)} THEN prev_state
    ELSE 'pending' END, lease_until = NULL, payload = COALESCE(:payload, payload),
    updated_at = :now
WHERE message_id = :message_id AND mapping = :mapping AND state = 'in_flight'
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
# Housekeeping works a batch at a time, so no statement holds its locks for long.
GIVE_UP = f"""
UPDATE deliveries SET state = 'gave_up', lease_until = NULL, updated_at = :now
WHERE (message_id, mapping) IN (
    SELECT message_id, mapping FROM deliveries
    WHERE state IN {states(SWEEPABLE)} AND created_at < :before
      AND COALESCE(lease_until, 0) < :now
    LIMIT :batch)
"""
PRUNE = """
DELETE FROM deliveries WHERE (message_id, mapping) IN (
    SELECT message_id, mapping FROM deliveries
    WHERE state IN {states} AND updated_at < :before LIMIT :batch)
"""
PAUSE = """
INSERT INTO rate_pauses (key, until) VALUES (:key, :until)
ON CONFLICT (key) DO UPDATE SET until = {greatest}(rate_pauses.until, excluded.until)
"""
TAKE_SLOTS = """
INSERT INTO rate_buckets (key, second, taken) VALUES (:key, :second, :taken)
ON CONFLICT (key, second) DO UPDATE SET taken = rate_buckets.taken + excluded.taken
"""

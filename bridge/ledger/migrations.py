"""Versioned schema changes, one list for every backend.

Each backend records the versions it applied in ``schema_migrations`` and applies
what is missing at start-up, all in one transaction that only one process can
hold at a time (SQLite: its write lock; a server database: an advisory lock), so
instances starting together all succeed. ``bridge db status`` and ``bridge db
upgrade`` show and apply them by hand, for a release phase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: dict[str, str]  # backend kind -> statements, separated by ';'

    def statements(self, kind: str) -> list[str]:
        """Statements end with ';' at the end of a line (a trigger's body keeps its own)."""
        return [s.strip() for s in re.split(r";[ \t]*(?:\n|$)", self.sql[kind]) if s.strip()]


_DELIVERIES = """
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
    lease_until  {real},
    created_at   {real} NOT NULL,
    updated_at   {real} NOT NULL,
    PRIMARY KEY (message_id, mapping)
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, updated_at);
CREATE INDEX IF NOT EXISTS deliveries_customer ON deliveries (customer, action, updated_at)
"""
_SHARED = """
ALTER TABLE deliveries ADD COLUMN not_before {real};
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, created_at);
CREATE TABLE IF NOT EXISTS rate_slots (key TEXT NOT NULL, at {real} NOT NULL);
CREATE INDEX IF NOT EXISTS rate_slots_key ON rate_slots (key, at);
CREATE TABLE IF NOT EXISTS rate_pauses (key TEXT PRIMARY KEY, until {real} NOT NULL);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until {real} NOT NULL)
"""
_MAPPINGS = """
CREATE TABLE IF NOT EXISTS mapping_sets (
    version    TEXT PRIMARY KEY,
    files      TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at {real} NOT NULL,
    loaded_at  {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS mapping_activations (
    version      TEXT NOT NULL,
    origin       TEXT NOT NULL,
    activated_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS mapping_activations_at ON mapping_activations (activated_at)
"""
_SIGNATURES = """
CREATE TABLE IF NOT EXISTS signatures (
    key         TEXT PRIMARY KEY,
    message_ids TEXT NOT NULL,
    first_seen  {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS signatures_first_seen ON signatures (first_seen)
"""
_BUCKETS = """
CREATE TABLE IF NOT EXISTS rate_buckets (
    key    TEXT NOT NULL,
    second {whole} NOT NULL,
    taken  INTEGER NOT NULL,
    PRIMARY KEY (key, second)
);
INSERT INTO rate_buckets (key, second, taken)
    SELECT key, {second_of_at}, COUNT(*) FROM rate_slots GROUP BY key, {second_of_at}
"""
_VOUCHED_CONTENT = """
ALTER TABLE signatures ADD COLUMN digests TEXT;
ALTER TABLE signatures ADD COLUMN keep_until {real};
CREATE INDEX IF NOT EXISTS signatures_keep_until ON signatures (keep_until)
"""
# The release before still writes and reads message_ids (kept filled) during a rolling
# deploy; its rows have no digests (they vouch for no content) and no keep_until.
# Activations are ordered by the database: the order in which it took them (SQLite's rowid,
# PostgreSQL's sequence), never a client's clock, which pinned the set of a publisher whose
# clock ran ahead. The rows already there keep the order they had (by their time), so the
# upgrade changes no instance's active set; the previous release, which inserts the three
# columns it knows and orders by time, keeps working during a rolling deploy.
_ACTIVATIONS_SQLITE = """
CREATE TABLE mapping_activations_ordered (
    version      TEXT NOT NULL,
    origin       TEXT NOT NULL,
    activated_at REAL NOT NULL,
    author       TEXT,
    message      TEXT
);
INSERT INTO mapping_activations_ordered (version, origin, activated_at)
    SELECT version, origin, activated_at FROM mapping_activations ORDER BY activated_at, rowid;
DROP TABLE mapping_activations;
ALTER TABLE mapping_activations_ordered RENAME TO mapping_activations;
CREATE INDEX IF NOT EXISTS mapping_activations_at ON mapping_activations (activated_at)
"""
_ACTIVATIONS_POSTGRES = """
ALTER TABLE mapping_activations ADD COLUMN author TEXT;
ALTER TABLE mapping_activations ADD COLUMN message TEXT;
ALTER TABLE mapping_activations ADD COLUMN seq BIGSERIAL;
UPDATE mapping_activations a SET seq = ranked.n
    FROM (SELECT ctid AS place, ROW_NUMBER() OVER (ORDER BY activated_at, seq) AS n
          FROM mapping_activations) ranked
    WHERE a.ctid = ranked.place;
SELECT setval(pg_get_serial_sequence('mapping_activations', 'seq'),
    (SELECT COALESCE(MAX(seq), 0) + 1 FROM mapping_activations), false);
CREATE INDEX IF NOT EXISTS mapping_activations_seq ON mapping_activations (seq)
"""
# The console's events list: newest first, all rows or one mapping's, a page at a time
# (a state filter used deliveries_due, on state and created_at, until migration 13).
_BROWSE = """
CREATE INDEX IF NOT EXISTS deliveries_recent ON deliveries (created_at, message_id, mapping);
CREATE INDEX IF NOT EXISTS deliveries_mapping_recent ON deliveries (mapping, created_at, message_id)
"""
# Rows queued because Dub's rate limit was full (the outbox sends them at Dub's rate, in
# the order queued). The release before neither sets nor reads it: during a rolling deploy
# it leaves queued rows to the new instances' senders, and its claims work on them as before.
_QUEUE = """
ALTER TABLE deliveries ADD COLUMN queued_at {real};
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (state, queued_at)
"""
# Each call to Dub and its answer, per row: the last 20 (``base.KEPT_ATTEMPTS``) of each,
# written with the row's finish. They go with their row: PostgreSQL's foreign key cascades
# a prune, SQLite's trigger does it (whichever release prunes, during a rolling deploy).
_ATTEMPTS = """
CREATE TABLE IF NOT EXISTS dub_attempts (
    message_id  TEXT NOT NULL,
    mapping     TEXT NOT NULL,
    number      INTEGER NOT NULL,
    at          {real} NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      INTEGER,
    answer      TEXT,
    retry_after {real},
    PRIMARY KEY (message_id, mapping, number){cascade}
)
"""
_ATTEMPTS_SQLITE = (
    _ATTEMPTS.format(real="REAL", cascade="")
    + """;
CREATE TRIGGER IF NOT EXISTS dub_attempts_go_with_their_row AFTER DELETE ON deliveries
BEGIN DELETE FROM dub_attempts WHERE message_id = old.message_id AND mapping = old.mapping; END
"""
)
_ATTEMPTS_POSTGRES = _ATTEMPTS.format(
    real="DOUBLE PRECISION",
    cascade=(
        ",\n    FOREIGN KEY (message_id, mapping) REFERENCES deliveries (message_id, mapping)"
        " ON DELETE CASCADE"
    ),
)
# The events list reads a state (or a mapping's state) one index range at a time, newest
# first, each range ordered as the page is (created_at, messageId, mapping), so a rare state
# costs a page whatever the table holds. The two replace narrower indexes that served the
# same statements (the outbox's and housekeeping's, on state and created_at; a mapping's
# list, now merged from its states).
_BROWSE_BY_STATE = """
CREATE INDEX IF NOT EXISTS deliveries_state_recent
    ON deliveries (state, created_at, message_id, mapping);
DROP INDEX IF EXISTS deliveries_due;
CREATE INDEX IF NOT EXISTS deliveries_mapping_state
    ON deliveries (mapping, state, created_at, message_id);
DROP INDEX IF EXISTS deliveries_mapping_recent
"""
# Fewer indexes to write. Every claim wrote a row into the table and seven indexes, and every
# finish moved its entries in five on SQLite (on PostgreSQL it writes into all of them: a
# change of state is never a HOT update); now four full indexes, of which a finish moves two,
# and two partial ones that hold only what their reads look for, which a row that is
# neither queued nor a dead letter never enters. The events list of every row merges its
# states' ranges as a state filter does (deliveries_recent goes); housekeeping's prune reads
# each state's range by first sighting (deliveries_state goes); the queue's status reads its
# queued rows only, by the time they settled, and the dead letters of the last hours read
# theirs (the outbox's take reads the sendable states' ranges, as it could before); a
# customer's index no longer holds the time of a row's last change, which every finish
# moved. The dead letters' states are written out as ``statements.states(DEAD)`` writes them
# today: SQLite uses a partial index only for a query that repeats its condition
# (tests/test_ledger_indexes.py checks that the reads still do).
_FEWER_INDEXES = """
DROP INDEX IF EXISTS deliveries_recent;
DROP INDEX IF EXISTS deliveries_state;
DROP INDEX IF EXISTS deliveries_queue;
CREATE INDEX IF NOT EXISTS deliveries_queued ON deliveries (state, updated_at)
    WHERE queued_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (state, updated_at)
    WHERE state IN ('gave_up','invalid','rejected','uncertain','unverified');
DROP INDEX IF EXISTS deliveries_customer;
CREATE INDEX IF NOT EXISTS deliveries_by_customer ON deliveries (customer, action)
"""
# rate_slots stays: during a rolling deploy, instances of the release before still take
# their slots there until they are replaced (a later migration may drop it).
_TYPES = {
    "sqlite": {"real": "REAL", "whole": "INTEGER", "second_of_at": "CAST(at AS INTEGER)"},
    "postgres": {
        "real": "DOUBLE PRECISION",
        "whole": "BIGINT",
        "second_of_at": "CAST(FLOOR(at) AS BIGINT)",
    },
}


def _both(sql: str) -> dict[str, str]:
    return {kind: sql.format(**types) for kind, types in _TYPES.items()}


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "deliveries table", _both(_DELIVERIES)),
    Migration(
        2,
        "rows given up on are 'gave_up', no longer 'failed'",
        _both("UPDATE deliveries SET state = 'gave_up' WHERE state = 'failed'"),
    ),
    Migration(3, "outbox backoff, shared rate limit, cluster locks", _both(_SHARED)),
    Migration(4, "mapping sets: the last good one, and the published one", _both(_MAPPINGS)),
    Migration(5, "what each batch signature vouched for when first seen", _both(_SIGNATURES)),
    Migration(6, "the shared rate limit counted per second, not per call", _both(_BUCKETS)),
    Migration(
        7, "what each signature vouched for, by content, and until when", _both(_VOUCHED_CONTENT)
    ),
    Migration(
        8,
        "mapping activations: who and why, in the database's order",
        {"sqlite": _ACTIVATIONS_SQLITE, "postgres": _ACTIVATIONS_POSTGRES},
    ),
    Migration(
        9,
        "the way in each row first came by (a write key's name, rudderstack)",
        _both("ALTER TABLE deliveries ADD COLUMN source TEXT"),
    ),
    Migration(10, "indexes for the console's events list", _both(_BROWSE)),
    Migration(
        11, "the outbox as a queue: rows queued while Dub's rate limit was full", _both(_QUEUE)
    ),
    Migration(
        12,
        "Dub's answer to each call: the last 20 of each row",
        {"sqlite": _ATTEMPTS_SQLITE, "postgres": _ATTEMPTS_POSTGRES},
    ),
    Migration(13, "the events list by state: one index range per state", _both(_BROWSE_BY_STATE)),
    Migration(14, "fewer indexes for each claim and finish to write", _both(_FEWER_INDEXES)),
)
LATEST = MIGRATIONS[-1].version

SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {real} NOT NULL)"
)


def schema_table(kind: str) -> str:
    return SCHEMA_TABLE.format(**_TYPES[kind])


def missing(applied: Iterable[int]) -> list[Migration]:
    done = set(applied)
    return [m for m in MIGRATIONS if m.version not in done]


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: int  # highest applied version (0: none)
    latest: int
    pending: tuple[Migration, ...]

    @property
    def up_to_date(self) -> bool:
        return not self.pending

    def describe(self) -> str:
        if self.up_to_date:
            return f"schema version {self.current} (up to date)"
        names = ", ".join(f"{m.version} {m.name}" for m in self.pending)
        return f"schema version {self.current}, {len(self.pending)} pending: {names}"


def status(applied: Iterable[int]) -> SchemaStatus:
    done = list(applied)
    return SchemaStatus(max(done, default=0), LATEST, tuple(missing(done)))

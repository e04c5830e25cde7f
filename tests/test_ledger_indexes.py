"""The ledger's indexes on ``deliveries``: few for each write, and enough for every read.

Every index is written by each claim (a new row) and, on SQLite, moved by each finish when
it holds a column the finish sets; on PostgreSQL a change of state is never a HOT update, so
a finish writes a new entry into every index. Migration 14 cut the full indexes from seven
to four (the key, a customer's rows, and the console's two by state), with partial ones for
queued rows and for dead letters only, which the rows of everyday traffic never enter: the
claim and finish of one event cost about 4% less CPU in the worker on SQLite and 3.5% on
PostgreSQL (``bench/inprocess.py``'s method), and the database's own work less again. The
other tests keep the other side of that bargain: each read, housekeeping and outbox
statement, captured as the ledger sends it, is still served by an index, and the reads
bounded by time read only their range.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.core.outcomes import State
from bridge.ledger.base import Browse, ClaimRequest, Finish, Ledger, Retention
from bridge.ledger.postgres import PostgresLedger
from bridge.ledger.sqlite import SQLiteLedger
from bridge.ledger.statements import FINISHED_COLUMNS
from tests.helpers.plans import pg_plans, plan_nodes, recording, sqlite_plans

# The columns a finish sets (statements._FINISH_FROM_V); an index holding one of them has its
# entry moved by every finish.
FINISH_SETS = frozenset(
    {"state", "status", "error", "lease_until", "payload", "tainted", "attempts", "not_before",
     "updated_at", "queued_at"}
)  # fmt: skip
# The reads that look at every row by design: erasure matches a customer's id inside any
# stored payload (GDPR), and an invoice's refund matches the text of delivered bodies.
SCANS_BY_DESIGN = ("payload LIKE", "request_body LIKE")


@pytest.fixture(params=["sqlite", "postgres"])
def sql_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    made: Ledger
    if request.param == "sqlite":
        made = SQLiteLedger(tmp_path / "ledger.sqlite3")
    else:
        made = PostgresLedger(request.getfixturevalue("pg_url"))
    made.upgrade()
    yield made
    made.close()


def _indexes(ledger: Ledger) -> dict[str, tuple[list[str], bool]]:
    """Each index on deliveries: its key columns, and whether it is partial."""
    if isinstance(ledger, SQLiteLedger):
        db = sqlite3.connect(ledger.path)
        try:
            found = {}
            for _, name, _, _, partial in db.execute("PRAGMA index_list(deliveries)"):
                columns = [c for _, _, c in db.execute(f"PRAGMA index_info({name})")]
                found[name] = (columns, bool(partial))
            return found
        finally:
            db.close()
    assert isinstance(ledger, PostgresLedger)
    with psycopg.connect(ledger.url) as conn:
        rows = conn.execute(
            "SELECT i.relname, ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY"
            "   AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = x.indrelid"
            "   AND a.attnum = k.attnum ORDER BY k.n), x.indpred IS NOT NULL"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = 'deliveries'::regclass"
        ).fetchall()
    return {name: (list(columns), partial) for name, columns, partial in rows}


def test_a_claim_writes_four_indexes_and_a_finish_moves_two(sql_ledger: Ledger) -> None:
    """A new row goes into four indexes besides the table (the key, a customer's rows, the
    console's by state and by mapping and state), and a finish moves the entries of two;
    the partial indexes hold queued rows and dead letters only."""
    found = _indexes(sql_ledger)
    full = {name for name, (_, partial) in found.items() if not partial}
    assert len(full) == 4, found
    moved = {name for name in full if FINISH_SETS & set(found[name][0])}
    assert moved == {"deliveries_state_recent", "deliveries_mapping_state"}, found
    partial = {name for name, (_, is_partial) in found.items() if is_partial}
    assert partial == {"deliveries_queued", "deliveries_dead"}
    # The finish statement's own values, so a new column it sets is not missed above.
    assert set(FINISHED_COLUMNS) - {"message_id", "mapping", "calls", "queued"} <= FINISH_SETS


def _exercise(ledger: Ledger) -> None:
    """Every read, housekeeping and outbox statement of deliveries, once."""
    now = ledger.clock.time()
    ledger.claim_many([ClaimRequest("m-1", "sale", "sale", "Order Completed", "u-1", {"a": 1})])
    ledger.finish_many([Finish("m-1", "sale", State.PENDING, calls=1, queued=True)])
    ledger.get("m-1", "sale")
    ledger.rows_of("m-1")
    ledger.rows_of_many(["m-1", "m-2"])
    ledger.attempts_of("m-1")
    ledger.lead_status("u-1", 3600)
    ledger.dead_letters()
    ledger.dead_letters(since=now - 60)
    ledger.dead_letters(mapping="sale", since=now - 60)
    ledger.counts(cap=100)
    ledger.oldest_unsettled()
    ledger.queue_status()
    ledger.due(first_seen_before=now, limit=10)
    ledger.take(first_seen_before=now, limit=10, lease=30)
    for query in (
        Browse(),
        Browse(states=frozenset({State.PENDING})),
        Browse(mapping="sale"),
        Browse(mapping="sale", states=frozenset({State.DELIVERED}), since=now - 60),
        Browse(search="u-1"),
        Browse(after=(now, "m-1", "sale")),
    ):
        ledger.browse(query)
    for i in range(3):  # more settled rows than a batch: the prune's next batches too
        ledger.claim_many([ClaimRequest(f"s-{i}", "sale", "sale", "Order Completed", "u-2", {})])
        ledger.finish_many([Finish(f"s-{i}", "sale", State.DELIVERED, calls=1)])
    ledger.sweep(Retention(settled=-1, dead=0, give_up_after=0, signatures=0, batch=1))


def _captured(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """The statements that read deliveries, as ``_exercise`` makes the ledger send them."""
    with recording(ledger, monkeypatch) as sent:
        _exercise(ledger)
    reads = re.compile(r"\b(FROM|UPDATE)\s+deliveries\b")
    return [
        (sql, params)
        for sql, params in sent
        if reads.search(sql) and not sql.lstrip().startswith("INSERT")
        and not any(scan in sql for scan in SCANS_BY_DESIGN)
    ]  # fmt: skip


def _pg_scans(plan: Any) -> Iterator[str]:
    """Every node of a JSON plan that reads deliveries without an index condition."""
    for node in plan_nodes(plan):
        if node.get("Relation Name") != "deliveries":
            continue
        kind = node["Node Type"]
        if kind == "Seq Scan" or ("Index" in kind and not node.get("Index Cond")
                                  and "Bitmap" not in kind):  # fmt: skip
            yield f"{kind} {node.get('Index Name', '')}".strip()


def test_every_read_of_deliveries_is_served_by_an_index(
    sql_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each statement that reads deliveries (the console's lists, counts, the queue's status,
    the outbox's take, housekeeping's prune and give-up, a customer's lead) reads an index
    range, never the whole table; the two scans by design (erasure, an invoice's refund)
    aside. (Before migration 14, the list of every row walked its own newest-first index
    from the end, a page at a time; it now merges each state's range as a filtered list.)"""
    statements = _captured(sql_ledger, monkeypatch)
    assert len(statements) >= 20, [s for s, _ in statements]
    whole: list[tuple[str, list[str]]] = []
    if isinstance(sql_ledger, SQLiteLedger):
        for (sql, _), plan in zip(statements, sqlite_plans(sql_ledger.path, statements),
                                  strict=True):  # fmt: skip
            scans = [p for p in plan if re.match(r"SCAN (deliveries|d|l)\b", p)]
            if scans:
                whole.append((sql, scans))
    else:
        assert isinstance(sql_ledger, PostgresLedger)
        for (sql, _), plan in zip(statements, pg_plans(sql_ledger.url, statements), strict=True):
            scans = list(_pg_scans(plan))
            if scans:
                whole.append((sql, scans))
    assert not whole, whole


# The reads whose bound must come from the index, not a filter over a state's every row:
# (a text of the statement, the index, a column its index condition bounds).
BOUNDED = (
    ("DELETE FROM deliveries", "deliveries_state_recent", "created_at"),
    ("(created_at, message_id, mapping) > (:at", "deliveries_state_recent", "message_id"),
    ("'unverified') AND updated_at >= :since ORDER BY", "deliveries_dead", "updated_at"),
    ("IN ('deduplicated','delivered','not_recorded','superseded') AND updated_at >= :since",
     "deliveries_queued", "updated_at"),
)  # fmt: skip


def test_housekeeping_and_the_latest_dead_letters_read_bounded_ranges(
    sql_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prune reads a state's range up to its time bound (not every settled row), the
    dead letters of the last hours and the queue's last minute read theirs by time, each
    through its own index."""
    statements = _captured(sql_ledger, monkeypatch)
    for text, index, column in BOUNDED:
        chosen = [(sql, params) for sql, params in statements if text in sql]
        assert chosen, text
        if isinstance(sql_ledger, SQLiteLedger):
            for (sql, _), plan in zip(chosen, sqlite_plans(sql_ledger.path, chosen), strict=True):
                used = [p for p in plan if f"INDEX {index} (" in p]
                assert used and column in used[0].split("(", 1)[1], (sql, plan)
        else:
            assert isinstance(sql_ledger, PostgresLedger)
            for (sql, _), plan in zip(chosen, pg_plans(sql_ledger.url, chosen), strict=True):
                conditions = [
                    node.get("Index Cond", "")
                    for node in plan_nodes(plan)
                    if node.get("Index Name") == index
                ]
                assert any(column in c for c in conditions), (sql, conditions)

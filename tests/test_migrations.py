"""Upgrading a ledger keeps what it held: each migration run on a ledger of the version before."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.core.settings import Settings
from bridge.ledger import open_ledger
from bridge.ledger.base import COUNTED_FOR, Browse, Ledger, Retention, Sighting
from bridge.ledger.migrations import MIGRATIONS, schema_table
from tests.helpers.fakes import ManualClock

Run = Callable[..., None]  # (SQL with ? placeholders, *values)


@pytest.fixture(params=["sqlite", "postgres"])
def old_ledger(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Run, Settings]]:
    """An empty ledger at schema version 5, its kind, a way to run SQL on it, and settings
    that open it (PostgreSQL: in a schema of its own, dropped afterwards)."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.sqlite3"
        db = sqlite3.connect(path, isolation_level=None)

        def run(sql: str, *values: Any) -> None:
            db.execute(sql, values)

        yield "sqlite", run, Settings.from_env({}, db_path=path)
        db.close()
        return
    url = request.getfixturevalue("pg_url")
    schema = f"upgrade_{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"SET search_path TO {schema}")

    def run_pg(sql: str, *values: Any) -> None:
        conn.execute(sql.replace("?", "%s") if values else sql, values or None)

    separator = "&" if "?" in url else "?"
    settings = Settings.from_env(
        {}, database_url=f"{url}{separator}options=-csearch_path%3D{schema}"
    )
    yield "postgres", run_pg, settings
    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@contextlib.contextmanager
def upgraded(settings: Settings, clock: ManualClock) -> Iterator[Ledger]:
    """The ledger of ``settings`` opened as the service opens it, so brought up to date."""
    ledger = open_ledger(settings, clock=clock)
    assert ledger is not None
    try:
        assert ledger.schema().up_to_date
        yield ledger
    finally:
        ledger.close()


def at_version(kind: str, run: Run, version: int) -> None:
    run(schema_table(kind))
    for migration in MIGRATIONS[:version]:
        for statement in migration.statements(kind):
            run(statement)
        run("INSERT INTO schema_migrations VALUES (?, ?, 0)", migration.version, migration.name)


def test_rate_slots_become_counts_per_second(
    old_ledger: tuple[str, Run, Settings], clock: ManualClock
) -> None:
    """The slots taken before the upgrade still count after it, each in its second: a limit
    of 3 is full, and frees when that second is COUNTED_FOR old. The old table stays, for
    the instances of the release before that still run during a rolling deploy."""
    kind, run, settings = old_ledger
    at_version(kind, run, 5)
    now = clock.time()
    for at in (now - 1.5, now - 0.8, now - 0.3):
        run("INSERT INTO rate_slots (key, at) VALUES ('dub', ?)", at)
    with upgraded(settings, clock) as ledger:
        run("INSERT INTO rate_slots (key, at) VALUES ('dub', ?)", now)  # an old instance
        granted, wait = ledger.take_slots("dub", 3, 1)[:2]
        assert granted == 0 and wait == pytest.approx(COUNTED_FOR - 2)
        clock.advance(COUNTED_FOR - 2)  # the second of now - 1.5 is past
        assert ledger.take_slots("dub", 3, 5)[:2] == (1, 0.0)


def test_signatures_of_the_release_before_vouch_for_no_content(
    old_ledger: tuple[str, Run, Settings], clock: ManualClock
) -> None:
    """After the upgrade to content digests, a signature the release before recorded (its
    messageIds only) vouches for no content, and is forgotten once no event it came with
    can be accepted; the release before, still running during a rolling deploy, records
    and reads signatures as it did, and sees the messageIds of the new release's."""
    kind, run, settings = old_ledger
    at_version(kind, run, 6)
    now = clock.time()
    old_insert = (
        "INSERT INTO signatures (key, message_ids, first_seen) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO NOTHING"
    )
    run(old_insert, "before", '["a","b"]', now)
    with upgraded(settings, clock) as ledger:
        mine = Sighting(frozenset({"a"}), frozenset({"digest-a"}), now + 10 * 86400)
        assert ledger.vouch("before", mine) == Sighting(frozenset({"a", "b"}), frozenset(), 0.0)
        assert ledger.vouch("new", mine) == mine
        run(old_insert, "during", '["x"]', now)  # an instance of the release before
        run(old_insert, "new", '["y"]', now)
        assert ledger.vouch("during", mine).message_ids == {"x"}
        assert ledger.vouch("new", mine).message_ids == {"a"}  # what the release before reads
        clock.advance(2 * 86400)
        ledger.sweep(Retention(give_up_after=1e9, settled=1e9, dead=1e9, signatures=86400))
        assert ledger.vouch("before", mine) == mine  # forgotten: a first sighting again
        assert ledger.vouch("new", mine) == mine  # kept until its own keep_until


def test_activations_keep_their_order_and_the_release_before_still_publishes(
    old_ledger: tuple[str, Run, Settings], clock: ManualClock
) -> None:
    """The upgrade to the database's order changes no active set (rows keep the order their
    times gave them, a fast clock's included); afterwards a publish takes effect, and an
    instance of the release before (three columns, no author) still records activations
    that come after."""
    kind, run, settings = old_ledger
    at_version(kind, run, 6)
    now = clock.time()
    for version in ("v1", "v2", "v3"):
        run(
            "INSERT INTO mapping_sets (version, files, origin, created_at, loaded_at)"
            " VALUES (?, '[]', 'publish', ?, ?)",
            version,
            now,
            now,
        )
    insert = "INSERT INTO mapping_activations (version, origin, activated_at) VALUES (?, ?, ?)"
    run(insert, "v1", "publish", now + 3600)  # a publisher's clock an hour ahead
    run(insert, "v2", "publish", now)
    with upgraded(settings, clock) as ledger:
        active = ledger.active_mapping_set()
        assert active is not None and active.version == "v1"
        ledger.activate_mapping_set("v3", "publish", author="kim", message="new")
        active = ledger.active_mapping_set()
        assert active is not None and active.version == "v3"
        run(insert, "v2", "rollback", now)  # the release before, during a rolling deploy
        history = ledger.activations()
        assert [(a.version, a.origin, a.author) for a in history] == [
            ("v2", "rollback", None),
            ("v3", "publish", "kim"),
            ("v1", "publish", None),
            ("v2", "publish", None),
        ]


def test_rows_before_the_fewer_indexes_keep_their_queue_list_and_prune(
    old_ledger: tuple[str, Run, Settings], clock: ManualClock
) -> None:
    """Migration 14 rebuilds indexes only: a queued row of the version before is still in the
    queue (its depth and age), the list of every row still shows every row newest first,
    and a settled row is pruned once settled long enough, not by its first sighting."""
    kind, run, settings = old_ledger
    at_version(kind, run, 13)
    now = clock.time()
    insert = (
        "INSERT INTO deliveries (message_id, mapping, action, customer, state, request_body,"
        " created_at, updated_at, queued_at) VALUES (?, 'sale', 'sale', 'u-1', ?, '{}', ?, ?, ?)"
    )
    run(insert, "queued", "pending", now - 30, now - 30, now - 30)
    run(insert, "settled", "delivered", now - 20, now - 20, None)
    run(insert, "newest", "rejected", now - 10, now - 10, None)
    run(insert, "redriven", "delivered", now - 40, now + 60, None)  # first seen before all
    with upgraded(settings, clock) as ledger:
        status = ledger.queue_status()
        assert (status.depth, status.oldest) == (1, now - 30)
        listed = [row.message_id for row in ledger.browse(Browse())]
        assert listed == ["newest", "settled", "queued", "redriven"]
        assert [r.message_id for r in ledger.browse(Browse(limit=1, after=(now - 10, "newest",
                "sale")))] == ["settled"]  # fmt: skip
        clock.advance(100)
        ledger.sweep(Retention(give_up_after=1e9, settled=50, dead=1e9))
        assert [row.message_id for row in ledger.browse(Browse())] == [
            "newest",
            "queued",
            "redriven",
        ]  # it changed 40 s ago: settled retention not over

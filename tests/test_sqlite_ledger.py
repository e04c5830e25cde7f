"""What only the SQLite ledger does: it gives pruned pages back, so the file stops growing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.core.outcomes import State
from bridge.core.settings import Settings
from bridge.ledger import open_ledger
from bridge.ledger.base import ClaimRequest, Retention
from tests.helpers.fakes import ManualClock


def fill(ledger: object, prefix: str, count: int) -> None:
    body = {"metadata": {"note": "x" * 2000}}
    wanted = [
        ClaimRequest(f"{prefix}{i}", "sale", "sale", "E", f"u{i}", body) for i in range(count)
    ]
    ledger.claim_many(wanted)  # type: ignore[attr-defined]
    for w in wanted:
        ledger.finish(w.message_id, "sale", State.DELIVERED, calls=1)  # type: ignore[attr-defined]


def test_pruning_gives_the_space_back(tmp_path: Path) -> None:
    """After settled rows are pruned, the file shrinks back, instead of keeping its peak size."""
    clock = ManualClock()
    path = tmp_path / "ledger.sqlite3"
    ledger = open_ledger(Settings.from_env({}, db_path=path), clock=clock)
    assert ledger is not None
    fill(ledger, "a", 1500)
    ledger.maintain()  # checkpoint the WAL into the file
    full = path.stat().st_size
    clock.advance(8 * 86400)
    counts = ledger.sweep(Retention(give_up_after=86400, settled=7 * 86400, dead=30 * 86400))
    assert counts["pruned"] == 1500
    ledger.maintain()
    assert path.stat().st_size < full / 4, (full, path.stat().st_size)
    ledger.close()


def test_writers_of_every_thread_share_one_connection(tmp_path: Path) -> None:
    """Claims and finishes from many threads are all written, through one connection of the
    process (not one per thread, each with its own caches)."""
    from concurrent.futures import ThreadPoolExecutor

    from bridge.ledger.sqlite import SQLiteLedger

    ledger = SQLiteLedger(tmp_path / "l.db")
    ledger.upgrade()

    def deliver(i: int) -> bool:
        ledger.claim_many([ClaimRequest(f"m-{i}", "sale", "sale", "Order Completed", None, {})])
        return ledger.finish(f"m-{i}", "sale", State.DELIVERED, calls=1, status=200)

    opened = len(ledger._connections)  # the writer, and this thread's reader
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(deliver, range(200)))
    assert len(ledger._connections) == opened
    assert ledger.counts(cap=1000) == {State.DELIVERED: 200}
    ledger.close()


def _fill(ledger: Any, start: int, count: int) -> None:
    body = {"metadata": "x" * 2000}  # rows big enough to grow the WAL quickly
    for i in range(start, start + count):
        ledger.claim_many([ClaimRequest(f"w-{i}", "sale", "sale", "Order Completed", None, body)])
        ledger.finish(f"w-{i}", "sale", State.DELIVERED, calls=1, status=200)


def test_housekeeping_empties_a_wal_grown_past_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the WAL file is past its limit, housekeeping empties it (it never shrank, and grew
    under steady traffic); below the limit it is left as it is."""
    from bridge.ledger import sqlite as module

    monkeypatch.setattr(module, "WAL_LIMIT_BYTES", 1024 * 1024)
    ledger = module.SQLiteLedger(tmp_path / "l.db", background_checkpoints=True)
    ledger.upgrade()
    wal = tmp_path / "l.db-wal"
    _fill(ledger, 0, 2)
    small = wal.stat().st_size
    assert 0 < small <= module.WAL_LIMIT_BYTES
    ledger.maintain()
    assert wal.stat().st_size == small  # under the limit: copied, not emptied
    _fill(ledger, 2, 100)
    assert wal.stat().st_size > module.WAL_LIMIT_BYTES
    ledger.maintain()
    assert wal.stat().st_size == 0
    assert ledger.counts(cap=1000) == {State.DELIVERED: 102}
    ledger.close()


def test_a_reader_in_the_wal_defers_the_emptying_without_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader still using the WAL (another worker's long read) makes housekeeping leave the
    file for its next turn, after a bounded wait, with no error; the next turn empties it."""
    import sqlite3

    from bridge.ledger import sqlite as module

    monkeypatch.setattr(module, "WAL_LIMIT_BYTES", 1024 * 1024)
    monkeypatch.setattr(module, "TRUNCATE_WAIT_MS", 1)
    ledger = module.SQLiteLedger(tmp_path / "l.db", background_checkpoints=True)
    ledger.upgrade()
    _fill(ledger, 0, 2)
    reader = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (2,)
    _fill(ledger, 2, 100)
    wal = tmp_path / "l.db-wal"
    ledger.maintain()  # the reader holds frames of the WAL: not emptied, no error
    assert wal.stat().st_size > module.WAL_LIMIT_BYTES
    reader.execute("COMMIT")
    reader.close()
    ledger.maintain()
    assert wal.stat().st_size == 0
    ledger.close()

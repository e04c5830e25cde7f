"""What only the SQLite ledger does: it gives pruned pages back, so the file stops growing."""

from __future__ import annotations

from pathlib import Path

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

"""The SQLite ledger: atomic claims, leases, final states, dead letters, sweeping."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

from bridge.ledger import SQLiteLedger


def claim(ledger: SQLiteLedger, message_id: str = "m", mapping: str = "sale", **kw: Any) -> Any:
    return ledger.claim(
        message_id,
        mapping,
        action=kw.pop("action", "sale"),
        event="Order Completed",
        customer=kw.pop("customer", "u"),
        body={"amount": 1},
        **kw,
    )


def test_first_claim_wins_and_done_is_never_sent_again(tmp_path: Path) -> None:
    """A claimed row is busy for others; once delivered it is never claimed again."""
    ledger = SQLiteLedger(tmp_path / "l.db")
    assert claim(ledger).granted
    second = claim(ledger)
    assert (second.granted, second.state) == (False, "in_flight")
    ledger.finish("m", "sale", "delivered", status=200)
    third = claim(ledger)
    assert (third.granted, third.state) == (False, "delivered")
    row = ledger.get("m", "sale")
    assert row is not None and row.state == "delivered" and row.attempts == 1
    assert row.request_body == {"amount": 1} and row.status == 200


def test_pending_is_claimed_again_and_counts_attempts(tmp_path: Path) -> None:
    """A transient failure leaves the row pending; the next try claims it as attempt 2."""
    ledger = SQLiteLedger(tmp_path / "l.db")
    claim(ledger)
    ledger.finish("m", "sale", "pending", status=503, error={"code": "x"})
    again = claim(ledger)
    assert again.granted and again.attempts == 1
    assert ledger.get("m", "sale").attempts == 2  # type: ignore[union-attr]


def test_stale_lease_is_taken_over(tmp_path: Path) -> None:
    """An in_flight row whose worker died is taken over once its lease expires."""
    ledger = SQLiteLedger(tmp_path / "l.db", lease_seconds=0.2)
    assert claim(ledger).granted
    assert not claim(ledger).granted
    time.sleep(0.3)
    assert claim(ledger).granted


def test_dead_letters_only_redrive_claims_them(tmp_path: Path) -> None:
    """Rejected, uncertain and given-up rows are dead letters: only redrive sends them again."""
    ledger = SQLiteLedger(tmp_path / "l.db")
    for state in ("rejected", "uncertain", "failed"):
        claim(ledger, state)
        ledger.finish(state, "sale", state, payload={"messageId": state})
        assert not claim(ledger, state).granted
        assert claim(ledger, state, redrive=True).granted
        ledger.finish(state, "sale", state)
    ledger.record("inv", "sale", "invalid", action="sale", event="E", errors=["bad"], payload={})
    assert {r.message_id for r in ledger.dead_letters()} == {
        "rejected",
        "uncertain",
        "failed",
        "inv",
    }
    assert [r.message_id for r in ledger.dead_letters(mapping="nope")] == []
    assert ledger.dead_letters(since=time.time() + 60) == []


def test_record_does_not_overwrite_a_delivered_row(tmp_path: Path) -> None:
    """Recording an invalid plan never downgrades a row that was already delivered."""
    ledger = SQLiteLedger(tmp_path / "l.db")
    claim(ledger)
    ledger.finish("m", "sale", "delivered")
    ledger.record("m", "sale", "invalid", action="sale", event="E", errors=["x"], payload={})
    assert ledger.get("m", "sale").state == "delivered"  # type: ignore[union-attr]


def test_lead_status(tmp_path: Path) -> None:
    """A customer's lead is 'unsettled' while in flight, 'settled' once delivered; others None."""
    ledger = SQLiteLedger(tmp_path / "l.db")
    claim(ledger, "l1", "lead", action="lead", customer="u1")
    assert ledger.lead_status("u1", 60) == "unsettled"
    ledger.finish("l1", "lead", "delivered")
    assert ledger.lead_status("u1", 60) == "settled"
    assert ledger.lead_status("u2", 60) is None


def test_sweep_gives_up_and_prunes(tmp_path: Path) -> None:
    """Rows Segment stopped retrying become failed; final rows past retention are pruned."""
    ledger = SQLiteLedger(tmp_path / "l.db")
    claim(ledger, "old-pending")
    ledger.finish("old-pending", "sale", "pending")
    claim(ledger, "old-done")
    ledger.finish("old-done", "sale", "delivered")
    time.sleep(0.05)
    counts = ledger.sweep(retention_seconds=0.01, give_up_seconds=0.01)
    assert counts == {"gave_up": 1, "pruned": 1}
    assert ledger.get("old-pending", "sale").state == "failed"  # type: ignore[union-attr]
    assert ledger.get("old-done", "sale") is None


def _race(path: str, worker: int, queue: Any) -> None:
    ledger = SQLiteLedger(path)
    won = [i for i in range(50) if claim(ledger, f"m{i}").granted]
    queue.put((worker, won))


def test_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    """Four processes claiming the same 50 rows: each row is granted exactly once."""
    path = str(tmp_path / "l.db")
    SQLiteLedger(path)
    queue: Any = multiprocessing.get_context("fork").Queue()
    procs = [
        multiprocessing.get_context("fork").Process(target=_race, args=(path, w, queue))
        for w in range(4)
    ]
    for p in procs:
        p.start()
    won = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    granted = sorted(i for _, rows in won for i in rows)
    assert granted == list(range(50))

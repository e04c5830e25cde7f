"""The ledger contract, one suite run against every backend: claims, leases, concurrent claims
from threads and processes, every state transition of the table, dead letters and pruning."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.ledger import Access, open_ledger
from bridge.ledger.base import ClaimRequest, LeadStatus, Ledger
from bridge.outcomes import DEAD, FINAL, FINISHED, TRANSITIONS, State, Via, allowed
from bridge.settings import Settings
from tests.fakes import ManualClock

BACKENDS = ["sqlite", "memory"]
LEASE = 30.0
MakeLedger = Callable[[], Ledger]


def backend_settings(kind: str, tmp_path: Path) -> Settings:
    ledger = {"sqlite": "on", "memory": "memory"}[kind]
    return Settings.from_env(
        {}, ledger=ledger, db_path=tmp_path / "ledger.sqlite3", lease_seconds=LEASE
    )


@pytest.fixture(params=BACKENDS)
def make_ledger(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[MakeLedger]:
    """Opens the backend through open_ledger, as the service does; a second call gives a
    second handle on the same ledger where the backend is shared (another worker)."""
    opened: list[Ledger] = []
    shared: list[Ledger] = []

    def make() -> Ledger:
        if request.param == "memory" and shared:
            return shared[0]  # one process: every "worker" shares the one dict
        ledger = open_ledger(backend_settings(request.param, tmp_path), clock=clock)
        assert ledger is not None
        opened.append(ledger)
        shared.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: MakeLedger) -> Ledger:
    return make_ledger()


def claim(ledger: Ledger, message_id: str = "m", mapping: str = "sale", **kw: Any) -> Any:
    wanted = ClaimRequest(
        message_id,
        mapping,
        kw.pop("action", "sale"),
        "Order Completed",
        kw.pop("customer", "u"),
        {"amount": 1},
    )
    (result,) = ledger.claim_many([wanted], **kw)
    return result


# --- claims and leases ---------------------------------------------------------------------------


def test_first_claim_wins_and_done_is_never_sent_again(ledger: Ledger) -> None:
    """A claimed row is busy for others; once delivered it is never claimed again."""
    assert claim(ledger).granted
    second = claim(ledger)
    assert (second.granted, second.state) == (False, "in_flight")
    assert ledger.finish("m", "sale", State.DELIVERED, status=200)
    third = claim(ledger)
    assert (third.granted, third.state) == (False, "delivered")
    row = ledger.get("m", "sale")
    assert row is not None and row.state == "delivered" and row.attempts == 1
    assert row.request_body == {"amount": 1} and row.status == 200


def test_pending_is_claimed_again_and_counts_attempts(ledger: Ledger) -> None:
    """A transient failure leaves the row pending; the next try claims it as attempt 2."""
    claim(ledger)
    ledger.finish("m", "sale", State.PENDING, status=503, error={"code": "x"})
    again = claim(ledger)
    assert again.granted and again.attempts == 1 and again.state == "pending"
    assert ledger.get("m", "sale").attempts == 2  # type: ignore[union-attr]


def test_released_claim_returns_the_row_and_is_no_attempt(ledger: Ledger) -> None:
    """A claim given back unused restores the row's state and does not count as an attempt."""
    claim(ledger)
    ledger.finish("m", "sale", State.PENDING)
    assert claim(ledger).granted
    assert ledger.release("m", "sale")
    row = ledger.get("m", "sale")
    assert row is not None and (row.state, row.attempts) == ("pending", 1)
    claim(ledger, "new")
    assert ledger.release("new", "sale")
    assert ledger.get("new", "sale").state == "pending"  # type: ignore[union-attr]
    assert not ledger.release("new", "sale")  # not in flight any more


def test_stale_lease_is_taken_over(ledger: Ledger, clock: ManualClock) -> None:
    """An in_flight row whose worker died is taken over once its lease expires."""
    assert claim(ledger).granted
    assert not claim(ledger).granted
    clock.advance(LEASE - 1)
    assert not claim(ledger).granted
    clock.advance(2)
    taken = claim(ledger)
    assert taken.granted and taken.state == "in_flight"


def test_claim_many_grants_in_order(ledger: Ledger) -> None:
    """claim_many grants new rows and refuses rows already taken, in order."""
    wanted = [ClaimRequest(f"m{i}", "sale", "sale", "E", f"u{i}", {"a": i}) for i in range(3)]
    assert [c.granted for c in ledger.claim_many(wanted)] == [True, True, True]
    assert [c.granted for c in ledger.claim_many([*wanted, wanted[0]])] == [False] * 4


def test_claims_are_atomic_across_threads(make_ledger: MakeLedger) -> None:
    """Eight threads (each with its own handle) claiming the same 40 rows: each granted once."""
    handles = [make_ledger() for _ in range(8)]
    won: list[list[int]] = [[] for _ in handles]
    start = threading.Barrier(len(handles))

    def race(worker: int) -> None:
        start.wait()
        won[worker] = [i for i in range(40) if claim(handles[worker], f"m{i}").granted]

    threads = [threading.Thread(target=race, args=(w,)) for w in range(len(handles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(i for rows in won for i in rows) == list(range(40))


def _race(settings: Settings, worker: int, queue: Any) -> None:
    ledger = open_ledger(settings)
    assert ledger is not None
    won = [i for i in range(50) if claim(ledger, f"m{i}").granted]
    queue.put((worker, won))


def test_claims_are_atomic_across_processes(
    make_ledger: MakeLedger, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Four processes claiming the same 50 rows: each row is granted exactly once."""
    kind = request.node.callspec.params["make_ledger"]
    ledger = make_ledger()
    if not ledger.shared_across_processes:
        pytest.skip(f"the {kind} ledger lives in one process")
    context = multiprocessing.get_context("fork")
    queue: Any = context.Queue()
    settings = backend_settings(kind, tmp_path)
    procs = [context.Process(target=_race, args=(settings, w, queue)) for w in range(4)]
    for p in procs:
        p.start()
    won = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(i for _, rows in won for i in rows) == list(range(50))


# --- the transition table, walked ----------------------------------------------------------------


def into(ledger: Ledger, state: State | None, key: str) -> None:
    """Drive a fresh row into ``state`` through the public operations only."""
    if state is None:
        return
    if state is State.INVALID:
        assert ledger.record(key, "sale", State.INVALID, action="sale", event="E", errors=["x"],
                             payload={"messageId": key})  # fmt: skip
        return
    assert claim(ledger, key).granted
    if state is State.IN_FLIGHT:
        return
    if state is State.SUPERSEDED:
        assert ledger.finish(key, "sale", State.REJECTED)
        assert ledger.supersede(key, "sale")
        return
    assert ledger.finish(key, "sale", state)


SOURCES: list[State | None] = [None, *State]


def moved(ledger: Ledger, key: str, before: State | None) -> State | None:
    row = ledger.get(key, "sale")
    after = None if row is None else row.state
    return after if after != before else None


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_claims_follow_the_table(ledger: Ledger, source: State | None) -> None:
    """A plain claim takes a row exactly when the table allows CLAIM from its state."""
    into(ledger, source, "k")
    granted = claim(ledger, "k").granted
    assert granted == allowed(source, State.IN_FLIGHT, Via.CLAIM)


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_redrive_claims_follow_the_table(ledger: Ledger, source: State | None) -> None:
    """A redrive claim also takes the dead letters the table lets REDRIVE take."""
    into(ledger, source, "k")
    granted = claim(ledger, "k", redrive=True).granted
    expected = allowed(source, State.IN_FLIGHT, Via.CLAIM) or allowed(
        source, State.IN_FLIGHT, Via.REDRIVE
    )
    assert granted == expected


@pytest.mark.parametrize("target", list(State), ids=str)
@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_finish_follows_the_table(ledger: Ledger, source: State | None, target: State) -> None:
    """finish() moves a row only where the table allows FINISH, and only from in flight."""
    into(ledger, source, "k")
    if target not in FINISHED:
        with pytest.raises(ValueError, match="a call cannot end in"):
            ledger.finish("k", "sale", target)
        return
    changed = ledger.finish("k", "sale", target)
    assert changed == allowed(source, target, Via.FINISH)
    if changed:
        assert ledger.get("k", "sale").state == target  # type: ignore[union-attr]


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_record_follows_the_table(ledger: Ledger, source: State | None) -> None:
    """Recording an invalid plan never downgrades a row the table protects."""
    into(ledger, source, "k")
    changed = ledger.record("k", "sale", State.INVALID, action="sale", event="E", errors=["x"],
                            payload={})  # fmt: skip
    assert changed == allowed(source, State.INVALID, Via.RECORD)
    row = ledger.get("k", "sale")
    assert row is not None
    assert (row.state == State.INVALID) == (changed or source is State.INVALID)


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_supersede_and_release_follow_the_table(ledger: Ledger, source: State | None) -> None:
    """supersede() settles only dead letters; release() only an in-flight claim."""
    into(ledger, source, "k")
    assert ledger.supersede("k", "sale") == allowed(source, State.SUPERSEDED, Via.SUPERSEDE)
    into(ledger, source, "r")
    released = ledger.release("r", "sale")
    assert released == (source is State.IN_FLIGHT)
    if released:
        assert allowed(State.IN_FLIGHT, ledger.get("r", "sale").state, Via.RELEASE)  # type: ignore[union-attr]


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_sweep_follows_the_table(ledger: Ledger, clock: ManualClock, source: State | None) -> None:
    """The sweep gives up only on rows the table lets SWEEP take, and prunes only final rows."""
    into(ledger, source, "k")
    clock.advance(LEASE + 10)
    counts = ledger.sweep(retention_seconds=5, give_up_seconds=5)
    row = ledger.get("k", "sale")
    if source is not None and source in FINAL:
        assert row is None and counts == {"gave_up": 0, "pruned": 1}
    elif allowed(source, State.GAVE_UP, Via.SWEEP):
        assert row is not None and row.state == "gave_up" and counts["gave_up"] == 1
    else:
        assert (row is None) == (source is None) and counts == {"gave_up": 0, "pruned": 0}
        assert row is None or row.state == source


def test_the_table_is_whole() -> None:
    """Every state is reachable from nothing, and every dead letter can be redriven."""
    reachable: set[State | None] = {None}
    while True:
        more = {t.target for t in TRANSITIONS if t.source in reachable} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == {None, *State}
    assert all(allowed(state, State.IN_FLIGHT, Via.REDRIVE) for state in DEAD)
    assert not any(t.source in FINAL for t in TRANSITIONS)  # settled rows never move


# --- dead letters, leads, sweeping -----------------------------------------------------------------


def test_dead_letters_only_redrive_claims_them(ledger: Ledger, clock: ManualClock) -> None:
    """Rejected, uncertain and given-up rows are dead letters: only redrive sends them again."""
    for state in (State.REJECTED, State.UNCERTAIN, State.GAVE_UP):
        claim(ledger, state)
        ledger.finish(state, "sale", state, payload={"messageId": str(state)})
        assert not claim(ledger, state).granted
        assert claim(ledger, state, redrive=True).granted
        ledger.finish(state, "sale", state)
    ledger.record(
        "inv", "sale", State.INVALID, action="sale", event="E", errors=["bad"], payload={}
    )
    assert {r.message_id for r in ledger.dead_letters()} == {
        "rejected",
        "uncertain",
        "gave_up",
        "inv",
    }
    assert ledger.get("rejected", "sale").payload == {"messageId": "rejected"}  # type: ignore[union-attr]
    assert [r.message_id for r in ledger.dead_letters(mapping="nope")] == []
    assert ledger.dead_letters(since=clock.time() + 60) == []
    assert ledger.counts() == {"rejected": 1, "uncertain": 1, "gave_up": 1, "invalid": 1}


def test_lead_status(ledger: Ledger) -> None:
    """A customer's lead is 'unsettled' while in flight, 'settled' once delivered; others None."""
    claim(ledger, "l1", "lead", action="lead", customer="u1")
    assert ledger.lead_status("u1", 60) is LeadStatus.UNSETTLED
    ledger.finish("l1", "lead", State.DELIVERED)
    assert ledger.lead_status("u1", 60) is LeadStatus.SETTLED
    assert ledger.lead_status("u2", 60) is None


def test_sweep_gives_up_and_prunes(ledger: Ledger, clock: ManualClock) -> None:
    """Rows Segment stopped retrying are given up; final rows past retention are pruned."""
    claim(ledger, "old-pending")
    ledger.finish("old-pending", "sale", State.PENDING)
    claim(ledger, "old-done")
    ledger.finish("old-done", "sale", State.DELIVERED)
    clock.advance(0.05)
    counts = ledger.sweep(retention_seconds=0.01, give_up_seconds=0.01)
    assert counts == {"gave_up": 1, "pruned": 1}
    assert ledger.get("old-pending", "sale").state == "gave_up"  # type: ignore[union-attr]
    assert ledger.get("old-done", "sale") is None


def test_taint_survives_and_is_reported(ledger: Ledger) -> None:
    """A lead whose attempt may have reached Dub stays tainted for its next claim."""
    claim(ledger, "t", "lead", action="lead")
    ledger.finish("t", "lead", State.PENDING, tainted=True)
    again = claim(ledger, "t", "lead", action="lead")
    assert again.granted and again.tainted


def test_read_only_access_never_writes(tmp_path: Path, clock: ManualClock) -> None:
    """A ledger opened for reading cannot claim (the SQLite file is opened read-only)."""
    settings = backend_settings("sqlite", tmp_path)
    writer = open_ledger(settings, clock=clock)
    assert writer is not None
    claim(writer, "x")
    writer.close()
    reader = open_ledger(settings, Access.READ, clock=clock)
    assert reader is not None
    assert reader.get("x", "sale") is not None
    with pytest.raises(Exception, match="readonly|read-only"):
        claim(reader, "y")
    reader.close()

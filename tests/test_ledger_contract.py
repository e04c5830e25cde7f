"""The ledger contract, one suite run against every backend (SQLite, memory, PostgreSQL): claims,
leases, concurrent claims from threads and processes, every transition of the table, dead
letters, the outbox's view, the shared rate limit, cluster locks and housekeeping."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.clock import SYSTEM
from bridge.delivery.ratelimit import SharedWindow
from bridge.ledger import Access, open_ledger
from bridge.ledger.base import (
    COUNTED_FOR,
    HELD_SECONDS,
    ClaimRequest,
    LeadStatus,
    Ledger,
    Retention,
    Sighting,
)
from bridge.outcomes import DEAD, FINAL, FINISHED, TRANSITIONS, State, Via, allowed
from bridge.settings import Settings
from tests.fakes import ManualClock

BACKENDS = ["sqlite", "memory", "postgres"]
LEASE = 30.0
MakeLedger = Callable[..., Ledger]
SOURCES: list[State | None] = [None, *State]


def backend_settings(kind: str, tmp_path: Path, pg_url: str | None = None) -> Settings:
    values: dict[str, Any] = {
        "ledger": "memory" if kind == "memory" else "on",
        "db_path": tmp_path / "ledger.sqlite3",
        "lease_seconds": LEASE,
    }
    if kind == "postgres":
        values["database_url"] = pg_url
    return Settings.from_env({}, **values)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    pg_url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    return backend_settings(kind, tmp_path, pg_url)


@pytest.fixture
def make_ledger(settings_for: Settings, clock: ManualClock) -> Iterator[MakeLedger]:
    """Opens the backend through open_ledger, as the service does; a second call gives a
    second handle on the same ledger where the backend is shared (another worker)."""
    opened: list[Ledger] = []

    def make(real_time: bool = False) -> Ledger:
        if settings_for.ledger == "memory" and opened:
            return opened[0]  # one process: every "worker" shares the one dict
        # real_time: for handles that race each other for real, whose waits for the lock
        # must be real waits (on the manual clock they would give up in a few spins).
        ledger = open_ledger(settings_for, clock=SYSTEM if real_time else clock)
        assert ledger is not None
        opened.append(ledger)
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
    assert ledger.finish("m", "sale", State.DELIVERED, calls=1, status=200)
    third = claim(ledger)
    assert (third.granted, third.state) == (False, "delivered")
    row = ledger.get("m", "sale")
    assert row is not None and row.state == "delivered" and row.attempts == 1
    assert row.request_body == {"amount": 1} and row.status == 200


def test_attempts_count_calls_made_not_claims(ledger: Ledger) -> None:
    """A claim is no attempt; only the calls finish() reports count, so a claim that could not
    be sent (rate limit, budget) never brings a row closer to being given up."""
    first = claim(ledger)
    assert first.granted and first.attempts == 0 and first.state is None
    ledger.finish("m", "sale", State.PENDING, calls=2, status=503, error={"code": "x"})
    again = claim(ledger)
    assert again.granted and again.attempts == 2 and again.state == "pending"
    ledger.finish("m", "sale", State.PENDING, calls=0)  # rate-limited: no call made
    assert claim(ledger).attempts == 2
    assert ledger.get("m", "sale").attempts == 2  # type: ignore[union-attr]


def test_released_claim_returns_the_row(ledger: Ledger) -> None:
    """A claim given back unused restores the row's state and keeps its payload for later."""
    claim(ledger)
    ledger.finish("m", "sale", State.PENDING, calls=1)
    assert claim(ledger).granted
    assert ledger.release("m", "sale", payload={"messageId": "m"})
    row = ledger.get("m", "sale")
    assert row is not None and (row.state, row.attempts) == ("pending", 1)
    assert row.payload == {"messageId": "m"}
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


def test_a_longer_lease_holds_longer(ledger: Ledger, clock: ManualClock) -> None:
    """A claim asked for a lease longer than the default holds that long."""
    assert claim(ledger, lease=LEASE * 3).granted
    clock.advance(LEASE * 2)
    assert not claim(ledger).granted
    clock.advance(LEASE * 2)
    assert claim(ledger).granted


def test_claim_many_grants_in_order_and_a_repeat_once(ledger: Ledger, clock: ManualClock) -> None:
    """claim_many grants new rows in order, refuses rows already taken, and a row wanted twice
    in one batch is granted once."""
    wanted = [ClaimRequest(f"m{i}", "sale", "sale", "E", f"u{i}", {"a": i}) for i in range(3)]
    first = ledger.claim_many([wanted[2], wanted[0], wanted[2], wanted[1]])
    assert [c.granted for c in first] == [True, True, False, True]
    assert first[2].state == "in_flight"
    assert {c.created_at for c in first} == {clock.time()}
    assert [c.granted for c in ledger.claim_many([*wanted, wanted[0]])] == [False] * 4


def test_claims_are_atomic_across_threads(make_ledger: MakeLedger) -> None:
    """Eight threads (each with its own handle) claiming the same 40 rows: each granted once."""
    handles = [make_ledger(True) for _ in range(8)]
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
    ledger.close()
    queue.put((worker, won))


@pytest.mark.slow
def test_claims_are_atomic_across_processes(
    kind: str, ledger: Ledger, settings_for: Settings
) -> None:
    """Four processes claiming the same 50 rows: each row is granted exactly once."""
    if not ledger.shared_across_processes:
        pytest.skip(f"the {kind} ledger lives in one process")
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    procs = [context.Process(target=_race, args=(settings_for, w, queue)) for w in range(4)]
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
    if state in (State.INVALID, State.UNVERIFIED):
        assert ledger.record(key, "sale", state, action="sale", event="E", errors=["x"],
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


def test_claims_follow_the_table(ledger: Ledger) -> None:
    """A plain claim takes a row exactly when the table allows CLAIM from its state; a redrive
    claim also takes what the table lets REDRIVE take."""
    for source in SOURCES:
        into(ledger, source, f"c-{source}")
        into(ledger, source, f"r-{source}")
        assert claim(ledger, f"c-{source}").granted == allowed(source, State.IN_FLIGHT, Via.CLAIM)
        expected = allowed(source, State.IN_FLIGHT, Via.CLAIM) or allowed(
            source, State.IN_FLIGHT, Via.REDRIVE
        )
        assert claim(ledger, f"r-{source}", redrive=True).granted == expected, source


def test_finish_follows_the_table(ledger: Ledger) -> None:
    """finish() moves a row only where the table allows FINISH, and only from in flight; a
    state no call can end in is a bug, refused loudly."""
    for source in SOURCES:
        for target in State:
            key = f"k-{source}-{target}"
            into(ledger, source, key)
            if target not in FINISHED:
                with pytest.raises(ValueError, match="a call cannot end in"):
                    ledger.finish(key, "sale", target)
                continue
            changed = ledger.finish(key, "sale", target)
            assert changed == allowed(source, target, Via.FINISH), (source, target)
            if changed:
                assert ledger.get(key, "sale").state == target  # type: ignore[union-attr]


def test_record_supersede_and_release_follow_the_table(ledger: Ledger) -> None:
    """record() never downgrades a protected row; supersede() settles only dead letters;
    release() only an in-flight claim, back to a state the table allows."""
    for source in SOURCES:
        for target in (State.INVALID, State.UNVERIFIED):
            key = f"rec-{source}-{target}"
            into(ledger, source, key)
            changed = ledger.record(key, "sale", target, action="sale", event="E", errors=["x"],
                                    payload={})  # fmt: skip
            assert changed == allowed(source, target, Via.RECORD), (source, target)
        with pytest.raises(ValueError, match="record\\(\\) notes only"):
            ledger.record(f"rec-{source}", "sale", State.DELIVERED, action="sale", event="E",
                          errors=[], payload={})  # fmt: skip
        into(ledger, source, f"sup-{source}")
        assert ledger.supersede(f"sup-{source}", "sale") == allowed(
            source, State.SUPERSEDED, Via.SUPERSEDE
        )
        into(ledger, source, f"rel-{source}")
        released = ledger.release(f"rel-{source}", "sale")
        assert released == (source is State.IN_FLIGHT)
        if released:
            back = ledger.get(f"rel-{source}", "sale")
            assert back is not None and allowed(State.IN_FLIGHT, back.state, Via.RELEASE)


def test_sweep_follows_the_table(ledger: Ledger, clock: ManualClock) -> None:
    """The sweep gives up only on rows the table lets SWEEP take, and prunes only settled
    rows and dead letters past their retention."""
    for source in SOURCES:
        into(ledger, source, f"s-{source}")
    clock.advance(LEASE + 10)
    counts = ledger.sweep(Retention(give_up_after=5, settled=5, dead=5, batch=2))
    gave_up = [s for s in SOURCES if allowed(s, State.GAVE_UP, Via.SWEEP)]
    pruned = [s for s in SOURCES if s is not None and (s in FINAL or s in DEAD)]
    assert counts == {"gave_up": len(gave_up), "pruned": len(pruned)}
    for source in SOURCES:
        row = ledger.get(f"s-{source}", "sale")
        if source in gave_up:
            assert row is not None and row.state == "gave_up"
        elif source in pruned or source is None:
            assert row is None, source
        else:
            assert row is not None and row.state == source


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


# --- dead letters, leads, retention --------------------------------------------------------------


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


def test_sweep_gives_up_by_age_and_prunes_by_retention(ledger: Ledger, clock: ManualClock) -> None:
    """Unsettled rows past the outbox's age are given up; settled rows and dead letters go
    after their own retention, in batches until none is left."""
    for i in range(5):
        claim(ledger, f"old-pending-{i}")
        ledger.finish(f"old-pending-{i}", "sale", State.PENDING, payload={"m": i})
        claim(ledger, f"old-done-{i}")
        ledger.finish(f"old-done-{i}", "sale", State.DELIVERED)
    claim(ledger, "dead")
    ledger.finish("dead", "sale", State.REJECTED)
    clock.advance(100)
    claim(ledger, "young")
    ledger.finish("young", "sale", State.PENDING)
    counts = ledger.sweep(Retention(give_up_after=50, settled=50, dead=500, batch=2))
    assert counts == {"gave_up": 5, "pruned": 5}
    assert ledger.get("old-pending-0", "sale").state == "gave_up"  # type: ignore[union-attr]
    assert ledger.get("old-pending-0", "sale").payload == {"m": 0}  # type: ignore[union-attr]
    assert ledger.get("old-done-0", "sale") is None
    assert ledger.get("young", "sale").state == "pending"  # type: ignore[union-attr]
    assert ledger.get("dead", "sale") is not None
    clock.advance(401)  # "dead" is now 501 s old, the rows given up 401 s: only it goes
    assert ledger.sweep(Retention(give_up_after=1e6, settled=1e6, dead=500))["pruned"] == 1
    clock.advance(100)
    assert ledger.sweep(Retention(give_up_after=1e6, settled=1e6, dead=500))["pruned"] == 5


def test_taint_survives_and_is_reported(ledger: Ledger) -> None:
    """A lead whose attempt may have reached Dub stays tainted for its next claim."""
    claim(ledger, "t", "lead", action="lead")
    ledger.finish("t", "lead", State.PENDING, tainted=True)
    again = claim(ledger, "t", "lead", action="lead")
    assert again.granted and again.tainted


# --- the outbox's view -----------------------------------------------------------------------------


def test_due_lists_old_unsettled_rows_nobody_holds(ledger: Ledger, clock: ManualClock) -> None:
    """due() gives unsettled rows first seen before the cut, oldest first, not those in a
    live claim or deferred, nor settled ones; an expired claim is due again."""
    for name in ("a-pending", "b-held", "c-done", "d-deferred"):
        claim(ledger, name)
        clock.advance(1)
    ledger.finish("a-pending", "sale", State.PENDING)
    ledger.finish("c-done", "sale", State.DELIVERED)
    ledger.finish("d-deferred", "sale", State.PENDING)
    assert ledger.defer("d-deferred", "sale", clock.time() + 100)
    claim(ledger, "late")
    ledger.finish("late", "sale", State.PENDING)
    cut = clock.time()
    assert [r.message_id for r in ledger.due(first_seen_before=cut, limit=10)] == ["a-pending"]
    clock.advance(LEASE + 1)
    due = [r.message_id for r in ledger.due(first_seen_before=cut, limit=10)]
    assert due == ["a-pending", "b-held"]
    assert ledger.due(first_seen_before=cut, limit=10)[0].request_body == {"amount": 1}
    clock.advance(100)
    assert len(ledger.due(first_seen_before=cut, limit=10)) == 3
    assert len(ledger.due(first_seen_before=cut, limit=1)) == 1
    assert not ledger.defer("c-done", "sale", 0)  # only pending rows wait


def queue(ledger: Ledger, name: str, **kw: Any) -> None:
    """A row claimed and queued (Dub's rate limit was full), as the webhook does."""
    assert claim(ledger, name, **kw).granted
    assert ledger.finish(name, "sale", State.PENDING, payload={"p": name}, queued=True)


def taken_ids(ledger: Ledger, limit: int = 10, before: float = 0.0) -> list[str]:
    return [t.row.message_id for t in ledger.take(first_seen_before=before, limit=limit, lease=60)]


def test_take_claims_queued_rows_in_the_order_queued(ledger: Ledger, clock: ManualClock) -> None:
    """take() claims queued rows, the first queued first, with their request and payload;
    a taken row is in flight (no one else takes or claims it) until its lease ends."""
    for name in ("q-2", "q-1", "q-3"):
        queue(ledger, name, customer=name)
        clock.advance(1)
    claim(ledger, "not-queued")
    ledger.finish("not-queued", "sale", State.PENDING)  # Segment's, not the queue's
    assert ledger.queue_status().depth == 3
    taken = ledger.take(first_seen_before=0.0, limit=2, lease=60)
    assert [t.row.message_id for t in taken] == ["q-2", "q-1"]
    assert taken[0].row.request_body == {"amount": 1} and taken[0].row.payload == {"p": "q-2"}
    assert taken[0].claim.granted and taken[0].claim.state == "pending"
    refused = claim(ledger, "q-2", customer="q-2")
    assert not refused.granted and refused.queued  # Segment's redelivery: the queue has it
    assert taken_ids(ledger) == ["q-3"]
    assert taken_ids(ledger) == []
    clock.advance(61)
    assert taken_ids(ledger) == ["q-2", "q-1", "q-3"]  # their sender died: taken over


def test_take_skips_backed_off_and_settled_rows(ledger: Ledger, clock: ManualClock) -> None:
    """A queued row Dub failed waits for its backoff; a settled one leaves the queue, and
    counts in the queue's send rate for a minute."""
    queue(ledger, "q-a", customer="a")
    queue(ledger, "q-b", customer="b")
    (a,) = ledger.take(first_seen_before=0.0, limit=1, lease=60)
    assert a.row.message_id == "q-a"
    assert ledger.finish("q-a", "sale", State.PENDING, calls=1, status=503)
    assert ledger.defer("q-a", "sale", clock.time() + 100)
    assert taken_ids(ledger) == ["q-b"]
    assert ledger.finish("q-b", "sale", State.DELIVERED, calls=1, status=200)
    status = ledger.queue_status()
    assert (status.depth, status.sent_last_minute) == (1, 1)
    clock.advance(101)
    assert taken_ids(ledger) == ["q-a"]
    assert ledger.get("q-a", "sale").attempts == 1  # type: ignore[union-attr]
    clock.advance(61)
    assert ledger.queue_status().sent_last_minute == 0


def test_take_holds_a_sale_behind_its_customers_unsettled_lead(
    ledger: Ledger, clock: ManualClock
) -> None:
    """No sale is taken while a lead of its customer is pending or in flight (Dub would
    answer sale: null); once the lead is settled, the sale is."""
    queue(ledger, "sale-1", customer="c")
    clock.advance(1)
    assert claim(ledger, "lead-1", mapping="sale", action="lead", customer="c").granted
    ledger.finish("lead-1", "sale", State.PENDING, queued=True)
    queue(ledger, "other", customer="d")
    assert taken_ids(ledger) == ["lead-1", "other"]
    assert taken_ids(ledger) == []  # the lead is in flight
    ledger.finish("lead-1", "sale", State.DELIVERED, calls=1)
    assert taken_ids(ledger) == ["sale-1"]


def test_take_also_takes_what_segment_stopped_retrying(ledger: Ledger, clock: ManualClock) -> None:
    """Unsettled rows first seen before the cut are the outbox's too, never those younger."""
    claim(ledger, "old")
    ledger.finish("old", "sale", State.PENDING)
    clock.advance(10)
    claim(ledger, "young")
    ledger.finish("young", "sale", State.PENDING)
    assert taken_ids(ledger, before=clock.time() - 5) == ["old"]
    assert ledger.queue_status().depth == 0  # not queued: Segment's window passed


def test_takes_racing_from_threads_never_share_a_row(make_ledger: MakeLedger) -> None:
    """Senders taking at once (threads, each its own handle) get each queued row once."""
    first = make_ledger(real_time=True)
    for i in range(60):
        queue(first, f"r-{i:02d}", customer=f"c-{i}")
    handles = [make_ledger(real_time=True) for _ in range(4)]
    got: list[str] = []
    lock = threading.Lock()

    def sender(handle: Ledger) -> None:
        while True:
            batch = [t.row.message_id for t in
                     handle.take(first_seen_before=0.0, limit=7, lease=60)]  # fmt: skip
            if not batch:
                return
            with lock:
                got.extend(batch)

    threads = [threading.Thread(target=sender, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"r-{i:02d}" for i in range(60)]


# --- across processes: the rate limit and cluster locks ---------------------------------------------


def test_rate_limit_window_is_shared(make_ledger: MakeLedger, clock: ManualClock) -> None:
    """Slots of one key are counted over every handle: the limit holds for all of them
    together (a batch gets what is left), frees as the window slides (a minute, the time a
    call may take to reach Dub, and the second it was taken in), and another key is
    untouched."""
    assert clock.time() == int(clock.time())  # at the start of a second
    first, second = make_ledger(), make_ledger()
    assert first.take_slots("k", 3, 2)[:2] == (2, 0.0)
    assert second.take_slots("k", 3, 5)[:2] == (1, 0.0)
    granted, wait = first.take_slots("k", 3, 1)[:2]
    assert granted == 0 and wait == pytest.approx(COUNTED_FOR)
    assert second.take_slots("other", 3, 1)[:2] == (1, 0.0)
    clock.advance(30)
    assert second.take_slots("k", 3, 1)[1] == pytest.approx(COUNTED_FOR - 30)
    clock.advance(COUNTED_FOR - 30)
    assert second.take_slots("k", 3, 3)[:2] == (3, 0.0)


def test_a_slot_counts_at_least_a_minute_and_a_second(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """A slot taken late in a second still counts HELD_SECONDS after it was taken (slots are
    counted per second, so the whole second counts until it is COUNTED_FOR old)."""
    ledger = make_ledger()
    clock.advance(0.9)
    assert ledger.take_slots("k", 1, 1)[:2] == (1, 0.0)
    clock.advance(HELD_SECONDS - 0.01)
    assert ledger.take_slots("k", 1, 1)[0] == 0
    clock.advance(COUNTED_FOR - HELD_SECONDS - 0.9 + 0.01)  # the second is COUNTED_FOR old
    assert ledger.take_slots("k", 1, 1)[:2] == (1, 0.0)


def test_a_busy_window_counts_the_last_seconds(make_ledger: MakeLedger, clock: ManualClock) -> None:
    """Under a steady stream (40 slots a second for two minutes) the window holds exactly
    the slots of the seconds that still count: the last 61 whole seconds."""
    ledger = make_ledger()
    taken = 0
    for _ in range(960):
        taken += ledger.take_slots("k", 1_000_000, 5)[0]
        clock.advance(0.125)  # exact in binary: the seconds are whole where they should be
    assert taken == 4800
    # now = start + 120: the seconds start+59 .. start+119 count (each is < COUNTED_FOR old)
    counting = int(COUNTED_FOR) - 1
    assert ledger.take_slots("k", 10_000, 10_000)[0] == 10_000 - 40 * counting


def test_a_pause_stops_every_handle(make_ledger: MakeLedger, clock: ManualClock) -> None:
    """Dub's 429 pauses the key for every process until the time it said, never less."""
    first, second = make_ledger(), make_ledger()
    first.pause("k", clock.time() + 20)
    first.pause("k", clock.time() + 5)  # an earlier end never shortens a pause
    assert second.take_slots("k", 100, 1)[:2] == (0, pytest.approx(20.0))
    clock.advance(20)
    assert second.take_slots("k", 100, 1)[:2] == (1, 0.0)


def test_a_slot_given_back_no_longer_counts(make_ledger: MakeLedger, clock: ManualClock) -> None:
    """A slot whose call was not made is given back to its own second, from any handle: the
    window has room again at once; a second already out of the window is left alone."""
    first, second = make_ledger(), make_ledger()
    taken = first.take_slots("k", 2, 2)
    assert taken.granted == 2 and first.take_slots("k", 2, 1).granted == 0
    clock.advance(0.5)
    second.give_back_slots("k", taken.second, 1)
    assert second.take_slots("k", 2, 5)[:2] == (1, 0.0)
    clock.advance(COUNTED_FOR)
    first.give_back_slots("k", taken.second, 2)  # long gone: nothing to give back to
    assert first.take_slots("k", 2, 5)[:2] == (2, 0.0)


def test_the_per_second_allowance_holds_within_the_minute(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """With a per-second allowance, one second of the clock gives no more than it, and the
    refusal says to wait for the next second; the minute's limit still holds over both."""
    first, second = make_ledger(), make_ledger()
    clock.advance(0.25)
    assert first.take_slots("k", 5, 2, per_second=3)[:2] == (2, 0.0)
    assert second.take_slots("k", 5, 2, per_second=3)[:2] == (1, 0.0)
    assert second.take_slots("k", 5, 1, per_second=3)[:2] == (0, pytest.approx(0.75))
    clock.advance(0.75)
    assert first.take_slots("k", 5, 9, per_second=3)[:2] == (2, 0.0)  # the minute: 5
    granted, wait = first.take_slots("k", 5, 1, per_second=3)[:2]
    assert granted == 0 and wait == pytest.approx(COUNTED_FOR - 1)


# --- the shared window under sustained demand, several limiters on one ledger ----------------

STEP = 1 / 16  # exact in binary, so simulated seconds stay whole where they should


def simulate(
    limiters: list[SharedWindow], clock: ManualClock, *, seconds: float, demand_every: float
) -> list[float]:
    """Each limiter is a worker that receives a request wanting one Dub call every
    ``demand_every`` seconds (Segment's retries included), holds four at a time (its
    threads; a fifth is answered 503 at once) and gives each one second: a request refused
    a slot waits as long as the refusal said, if that fits, else it is answered 503 (its
    retry is one of the later requests). The moments of the calls made."""
    start = clock.time()
    waiting: list[list[tuple[float, float]]] = [[] for _ in limiters]  # (try at, give up at)
    arrived = [0.0] * len(limiters)
    calls: list[float] = []
    while clock.time() < start + seconds:
        now = clock.time()
        for limiter, requests, i in zip(limiters, waiting, range(len(limiters)), strict=True):
            arrived[i] += STEP / demand_every
            while arrived[i] >= 1:
                arrived[i] -= 1
                if len(requests) < 4:
                    requests.append((now, now + 1.0))
            for request in [r for r in requests if r[0] <= now]:
                requests.remove(request)
                grant = limiter.acquire(clock.monotonic())  # no waiting: a refusal at once
                if grant.granted:
                    calls.append(now)
                elif now + grant.wait <= request[1]:
                    requests.append((now + grant.wait, request[1]))
        clock.advance(STEP)
    return calls


def most_in_any_minute(calls: list[float]) -> int:
    """The most calls within any 60 s (both ends included), as Dub's window would see."""
    most, first = 0, 0
    for last, at in enumerate(calls):
        while at - calls[first] > 60:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.parametrize(
    ("workers", "per_minute", "per_second", "demand_every"),
    [
        # The finding (issue 25): six workers, 10 calls a second allowed, 12 wanted. The
        # release before made 51% of the plan here, and counted 600 slots for 306 calls.
        pytest.param(6, 600, None, 0.5, id="finding"),
        pytest.param(6, 600, 12, 1 / 3, id="minute-binds"),  # three instances of two workers
        pytest.param(6, 1200, 8, 0.5, id="second-binds"),  # below the minute's average
    ],
)
def test_sustained_demand_gets_the_plan_and_never_more(
    make_ledger: MakeLedger,
    clock: ManualClock,
    workers: int,
    per_minute: int,
    per_second: int | None,
    demand_every: float,
) -> None:
    """Several workers on one ledger, wanting more than the plan for three minutes: the
    slots the ledger counts are exactly the calls made, every minute after the first makes
    at least 90% of the plan, no 60 s hold more than the minute's limit, and no second of
    the clock more than the per-second allowance."""
    limiters = [
        SharedWindow(make_ledger(), "dub", per_minute, per_second=per_second, clock=clock)
        for _ in range(workers)
    ]
    start = clock.time()
    calls = simulate(limiters, clock, seconds=180, demand_every=demand_every)
    plan = min(per_minute, 60 * per_second) if per_second else per_minute
    for minute in (1, 2):
        made = sum(1 for at in calls if start + 60 * minute <= at < start + 60 * (minute + 1))
        assert made >= 0.9 * plan, f"minute {minute}: {made} calls of a plan of {plan}"
    assert most_in_any_minute(calls) <= per_minute
    if per_second is not None:
        assert max(Counter(int(at) for at in calls).values()) <= per_second
    # What the window counts now (the seconds not yet COUNTED_FOR old) is the calls made.
    huge = 10**9
    counted = huge - make_ledger().take_slots("dub", huge, huge).granted
    assert counted == sum(1 for at in calls if int(at) > clock.time() - COUNTED_FOR)


def test_exclusive_is_held_by_one_at_a_time(make_ledger: MakeLedger) -> None:
    """A named lock is held by one handle at a time and is free again once released."""
    first, second = make_ledger(), make_ledger()
    with first.exclusive("outbox") as mine:
        assert mine
        with second.exclusive("outbox") as theirs:
            assert not theirs
        with second.exclusive("housekeeping") as other:
            assert other
    with second.exclusive("outbox") as now_theirs:
        assert now_theirs


# --- schema and access ------------------------------------------------------------------------------


def test_schema_is_current_after_opening(ledger: Ledger) -> None:
    """Opening a ledger to write applies every migration; applying again changes nothing."""
    assert ledger.schema().up_to_date
    assert ledger.upgrade() == []


def test_read_only_access_never_writes(settings_for: Settings, clock: ManualClock) -> None:
    """A ledger opened for reading reads but cannot claim."""
    writer = open_ledger(settings_for, clock=clock)
    assert writer is not None
    claim(writer, "x")
    if not writer.shared_across_processes:
        writer.close()
        pytest.skip("the memory ledger has no separate reader")
    writer.close()
    reader = open_ledger(settings_for, Access.READ, clock=clock)
    assert reader is not None
    assert reader.get("x", "sale") is not None
    with pytest.raises(Exception, match="readonly|read-only"):
        claim(reader, "y")
    reader.close()


# --- mapping sets ---------------------------------------------------------------------------------


def test_mapping_sets_are_kept_and_the_last_good_one_found(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """A set kept by one worker is found by another; the last loaded is the last good one,
    and loading an old set again makes it the last good one."""
    first, second = make_ledger(), make_ledger()
    assert second.last_good_mapping_set() is None
    first.keep_mapping_set("v1", [("a.yaml", "one: 1\n")], "files")
    clock.advance(1)
    first.keep_mapping_set("v2", [("a.yaml", "two: 2\n"), ("b.yaml", "é\n")], "files")
    last = second.last_good_mapping_set()
    assert last is not None and last.version == "v2"
    assert last.files == (("a.yaml", "two: 2\n"), ("b.yaml", "é\n"))
    clock.advance(1)
    second.keep_mapping_set("v1", [("a.yaml", "one: 1\n")], "files")
    again = first.last_good_mapping_set()
    assert again is not None and again.version == "v1" and again.created_at < again.loaded_at
    assert first.mapping_set("nope") is None


def test_activations_pick_the_set_every_instance_follows(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """The latest activation is the active set, for every handle; history is newest first."""
    first, second = make_ledger(), make_ledger()
    assert second.active_mapping_set() is None
    for version in ("v1", "v2"):
        first.keep_mapping_set(version, [("m.yaml", version)], "publish")
    first.activate_mapping_set("v1", "publish")
    clock.advance(1)
    first.activate_mapping_set("v2", "publish")
    clock.advance(1)
    first.activate_mapping_set("v1", "rollback")
    active = second.active_mapping_set()
    assert active is not None and active.version == "v1"
    history = second.activations()
    assert [(a.version, a.origin) for a in history] == [
        ("v1", "rollback"),
        ("v2", "publish"),
        ("v1", "publish"),
    ]
    assert len(second.activations(limit=1)) == 1


def test_activations_keep_the_ledgers_order_whatever_the_clock_says(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """A publisher whose clock runs an hour ahead pins nothing: the later activation is the
    active one, and each records who and why."""
    first, second = make_ledger(), make_ledger()
    for version in ("v1", "v2"):
        first.keep_mapping_set(version, [("m.yaml", version)], "publish")
    clock.advance(3600)
    first.activate_mapping_set("v1", "publish", author="fast-clock", message="ahead")
    clock.advance(-3600)
    second.activate_mapping_set("v2", "publish", author="kim")
    active = first.active_mapping_set()
    assert active is not None and active.version == "v2"
    history = first.activations()
    assert [(a.version, a.author, a.message) for a in history] == [
        ("v2", "kim", None),
        ("v1", "fast-clock", "ahead"),
    ]
    second.activate_mapping_set("v1", "rollback")
    active = first.active_mapping_set()
    assert active is not None and active.version == "v1"


def test_kept_sets_are_listed_last_loaded_first(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """mapping_sets() lists what a release may fall back on, the most recently loaded first."""
    ledger = make_ledger()
    for version in ("v1", "v2", "v3"):
        ledger.keep_mapping_set(version, [("m.yaml", version)], "files")
        clock.advance(1)
    ledger.keep_mapping_set("v1", [("m.yaml", "v1")], "files")
    assert [s.version for s in ledger.mapping_sets()] == ["v1", "v3", "v2"]
    assert [s.version for s in ledger.mapping_sets(2)] == ["v1", "v3"]


def test_ping_answers_when_the_ledger_does(ledger: Ledger) -> None:
    """ping() returns quietly while the ledger answers."""
    ledger.ping()


def test_probe_write_commits_when_the_ledger_takes_writes(ledger: Ledger) -> None:
    """probe_write() returns quietly while a write commits, again and again."""
    ledger.probe_write()
    ledger.probe_write()


def test_oldest_unsettled_is_the_first_seen_of_what_is_open(
    ledger: Ledger, clock: ManualClock
) -> None:
    """The age alert's figure: the first sighting of the oldest pending or in-flight row."""
    assert ledger.oldest_unsettled() is None
    claim(ledger, "done")
    ledger.finish("done", "sale", State.DELIVERED)
    start = clock.time()
    clock.advance(5)
    claim(ledger, "open")
    assert ledger.oldest_unsettled() == pytest.approx(start + 5)
    ledger.finish("open", "sale", State.PENDING)
    assert ledger.oldest_unsettled() == pytest.approx(start + 5)


def test_a_signature_vouches_for_what_it_first_came_with(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """The first sighting of a signature (its messageIds and content digests) fixes what it
    vouches for, for every handle; it is kept until its keep_until, whatever the retention
    of rows, and forgotten after."""
    first, second = make_ledger(), make_ledger()
    now = clock.time()
    seen = Sighting(frozenset({"a", "b"}), frozenset({"da", "db"}), now + 3 * 86400)
    other = Sighting(frozenset({"a", "x"}), frozenset({"dx"}), now + 86400)
    assert first.vouch("sig", seen) == seen
    assert second.vouch("sig", other) == seen
    assert second.vouch("other", other) == other
    clock.advance(2 * 86400)
    first.sweep(Retention(give_up_after=1, settled=1, dead=1, signatures=1))
    assert second.vouch("sig", other) == seen  # past every retention, not past keep_until
    assert second.vouch("other", seen) == seen  # forgotten: this is a first sighting again


def test_a_verified_claim_takes_over_an_unverified_row_afresh(
    ledger: Ledger, clock: ManualClock
) -> None:
    """A claim takes an `unverified` row (a verified arrival wins over a forged copy): its
    payload, error and first sighting are dropped, and it is granted once; a later forged
    copy changes nothing. rows_of lists a messageId's rows under every mapping."""
    assert ledger.record("m", "sale", State.UNVERIFIED, action="sale", event="E",
                         errors=["forged"], payload={"forged": True})  # fmt: skip
    assert ledger.record("m", "lead", State.UNVERIFIED, action="lead", event="E",
                         errors=["forged"], payload={"forged": True})  # fmt: skip
    clock.advance(3600)
    taken = claim(ledger, "m")
    assert taken.granted and taken.state is State.UNVERIFIED
    assert taken.created_at == clock.time()
    row = ledger.get("m", "sale")
    assert row is not None and row.payload is None and row.error is None
    assert row.created_at == clock.time()
    assert not claim(ledger, "m").granted
    assert ledger.finish("m", "sale", State.DELIVERED)
    assert not ledger.record("m", "sale", State.UNVERIFIED, action="sale", event="E",
                             errors=["forged"], payload={"forged": True})  # fmt: skip
    assert [(r.mapping, r.state) for r in ledger.rows_of("m")] == [
        ("lead", State.UNVERIFIED),
        ("sale", State.DELIVERED),
    ]
    assert ledger.rows_of("nothing") == []

"""The ledger contract for deliveries, one suite run against every backend (SQLite, memory,
PostgreSQL): claims, leases, concurrent claims from threads and processes, every transition
of the table, dead letters, the outbox's view, cluster locks and housekeeping. The rate
window, signatures and mapping sets have suites of their own beside it."""

from __future__ import annotations

import json
import multiprocessing
import threading
from typing import Any

import pytest

from bridge.core.outcomes import DEAD, FINAL, FINISHED, TRANSITIONS, State, Via, allowed
from bridge.core.settings import Settings
from bridge.ledger import Access, open_ledger
from bridge.ledger.base import (
    ANSWER_LIMIT,
    KEPT_ATTEMPTS,
    Attempt,
    Browse,
    ClaimRequest,
    Finish,
    LeadStatus,
    Ledger,
    Retention,
)
from tests.helpers.fakes import ManualClock
from tests.helpers.ledgers import LEASE, SOURCES, MakeLedger, claim

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


def test_finish_many_follows_the_table(ledger: Ledger) -> None:
    """finish_many() moves each row as finish() would, in one statement: only where the
    table allows FINISH and only from in flight, saying which moved; a state no call can end
    in refuses the whole batch before anything is written."""
    wanted: list[Finish] = []
    for source in SOURCES:
        for target in sorted(FINISHED):
            key = f"k-{source}-{target}"
            into(ledger, source, key)
            wanted.append(Finish(key, "sale", target, calls=1, status=200))
    with pytest.raises(ValueError, match="a call cannot end in"):
        ledger.finish_many([*wanted, Finish("k-None-x", "sale", State.IN_FLIGHT)])
    flying = {f.message_id for f in wanted if f.message_id.startswith("k-in_flight")}
    assert {ledger.get(k, "sale").state for k in flying} == {State.IN_FLIGHT}  # type: ignore[union-attr]
    changed = ledger.finish_many(wanted)
    for f, moved in zip(wanted, changed, strict=True):
        source = f.message_id.split("-")[1]
        was = None if source == "None" else State(source)
        assert moved == allowed(was, f.state, Via.FINISH), f
        if moved:
            row = ledger.get(f.message_id, "sale")
            assert row is not None and row.state == f.state and row.status == 200


def test_finish_many_writes_each_rows_own_values(ledger: Ledger, clock: ManualClock) -> None:
    """Each row of a finish_many() gets its own outcome, calls, status, error, payload and
    queue mark, exactly as finish() one by one would leave them; a row given twice is
    finished by its first, and an empty batch writes nothing."""
    assert ledger.finish_many([]) == []
    for key in ("a", "b", "c", "d"):
        assert claim(ledger, key).granted
    ledger.finish("d", "sale", State.PENDING, calls=1)  # no longer in flight
    clock.advance(5)
    changed = ledger.finish_many(
        [
            Finish("b", "sale", State.DELIVERED, calls=2, status=200, payload={"p": "b"}),
            Finish(
                "a",
                "sale",
                State.PENDING,
                calls=1,
                status=429,
                error={"code": "limited"},
                payload={"p": "a"},
                queued=True,
            ),
            Finish(
                "c",
                "sale",
                State.REJECTED,
                calls=1,
                status=422,
                error={"code": "bad"},
                tainted=True,
            ),
            Finish("b", "sale", State.UNCERTAIN, calls=9),
            Finish("d", "sale", State.DELIVERED, calls=1),
        ]
    )
    assert changed == [True, True, True, False, False]
    a, b, c, d = (ledger.get(k, "sale") for k in "abcd")
    assert a is not None and b is not None and c is not None and d is not None
    assert (a.state, a.attempts, a.status, a.error, a.payload) == (
        State.PENDING, 1, 429, {"code": "limited"}, {"p": "a"},
    )  # fmt: skip
    assert (b.state, b.attempts, b.status, b.payload) == (State.DELIVERED, 2, 200, {"p": "b"})
    assert (c.state, c.status, c.error) == (State.REJECTED, 422, {"code": "bad"})
    assert (d.state, d.attempts) == (State.PENDING, 1)
    assert a.updated_at == b.updated_at == clock.time()
    assert ledger.queue_status().depth == 1  # "a" is in the outbox's queue
    again = claim(ledger, "a")
    assert again.granted and again.queued and again.attempts == 1


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
        more = {t.target for t in TRANSITIONS if t.before in reachable} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == {None, *State}
    assert all(allowed(state, State.IN_FLIGHT, Via.REDRIVE) for state in DEAD)
    assert not any(t.before in FINAL for t in TRANSITIONS)  # settled rows never move


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


def test_a_prune_keeps_rows_changed_lately_among_older_ones(
    ledger: Ledger, clock: ManualClock
) -> None:
    """Settled rows go once settled longer than their retention, a batch at a time, each batch
    after the last: rows first seen as long ago but redriven lately stay, wherever they lie."""
    for i in range(7):
        claim(ledger, f"r{i}")
        ledger.finish(f"r{i}", "sale", State.DELIVERED if i % 2 == 0 else State.REJECTED)
        if i % 3 == 2:  # some first seen in the same second: the batches' order is the key's
            clock.advance(1)
    clock.advance(90)
    for i in (1, 3, 5):  # redriven: first seen long ago, delivered now
        assert claim(ledger, f"r{i}", redrive=True).granted
        ledger.finish(f"r{i}", "sale", State.DELIVERED)
    clock.advance(10)
    counts = ledger.sweep(Retention(give_up_after=1e6, settled=50, dead=1e6, batch=2))
    assert counts["pruned"] == 4
    kept = {r for r in (f"r{i}" for i in range(7)) if ledger.get(r, "sale") is not None}
    assert kept == {"r1", "r3", "r5"}
    clock.advance(50)
    assert ledger.sweep(Retention(give_up_after=1e6, settled=50, dead=1e6, batch=2)) == {
        "gave_up": 0,
        "pruned": 3,
    }


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


def test_a_row_keeps_the_way_in_it_first_came_by(ledger: Ledger) -> None:
    """A row's source is the one of its first claim or record; a later claim (another way
    in, the outbox without one) leaves it; none given stays none."""
    wanted = ClaimRequest("src", "sale", "sale", "Order Completed", "c", {"amount": 1}, "shop")
    (first,) = ledger.claim_many([wanted])
    assert first.granted
    ledger.finish("src", "sale", State.PENDING)
    (again,) = ledger.claim_many([ClaimRequest("src", "sale", "sale", None, "c", None, None)])
    assert again.granted
    row = ledger.get("src", "sale")
    assert row is not None and row.source == "shop" and row.to_dict()["source"] == "shop"
    assert ledger.record("bad", "sale", State.INVALID, action="sale", event=None, errors=[],
                         payload={}, source="rudderstack")  # fmt: skip
    bad = ledger.get("bad", "sale")
    assert bad is not None and bad.source == "rudderstack"
    claim(ledger, "hook")
    hook = ledger.get("hook", "sale")
    assert hook is not None and hook.source is None


def test_a_row_handed_over_is_due_whatever_its_age(ledger: Ledger, clock: ManualClock) -> None:
    """A pending row given a next try (an SDK's message handed to the outbox) is due once
    that time comes, though first seen after the cut; a fresh row with none is not."""
    for name in ("handed", "fresh"):
        claim(ledger, name)
        ledger.finish(name, "sale", State.PENDING)
    cut = clock.time() - 3600  # both rows are younger than the outbox's age
    assert ledger.due(first_seen_before=cut, limit=10) == []
    assert ledger.defer("handed", "sale", clock.time() + 5)
    assert ledger.due(first_seen_before=cut, limit=10) == []
    clock.advance(5)
    assert [r.message_id for r in ledger.due(first_seen_before=cut, limit=10)] == ["handed"]


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


def test_take_takes_a_row_handed_over_whatever_its_age(ledger: Ledger, clock: ManualClock) -> None:
    """A young row an SDK's request handed to the outbox (``defer``) is taken once its next
    try comes, like ``due`` finds it; a young row with none is not."""
    for name in ("handed", "fresh"):
        claim(ledger, name, customer=name)
        ledger.finish(name, "sale", State.PENDING)
    cut = clock.time() - 3600
    assert ledger.defer("handed", "sale", clock.time() + 5)
    assert taken_ids(ledger, before=cut) == []
    clock.advance(5)
    assert taken_ids(ledger, before=cut) == ["handed"]


def test_one_claim_statement_keeps_each_rows_body_and_source(ledger: Ledger) -> None:
    """Claimed together, a row that keeps its pinned body keeps it, one that does not takes
    the new body, and each row keeps the way in it first came by."""
    first = [
        ClaimRequest("k", "sale", "refund", None, "c", {"pinned": 1}, "shop"),
        ClaimRequest("n", "sale", "sale", None, "c", {"amount": 1}, "app"),
    ]
    assert all(c.granted for c in ledger.claim_many(first))
    for name in ("k", "n"):
        ledger.finish(name, "sale", State.PENDING)
    again = [
        ClaimRequest("k", "sale", "refund", None, "c", {"new": 1}, None, keep=True),
        ClaimRequest("n", "sale", "sale", None, "c", {"amount": 2}, None),
    ]
    kept, replaced = ledger.claim_many(again)
    assert kept.granted and kept.body == {"pinned": 1}
    assert replaced.granted and replaced.body == {"amount": 2}
    k, n = ledger.get("k", "sale"), ledger.get("n", "sale")
    assert k is not None and (k.request_body, k.source) == ({"pinned": 1}, "shop")
    assert n is not None and (n.request_body, n.source) == ({"amount": 2}, "app")


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


# --- cluster locks ----------------------------------------------------------------------------


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


def test_rows_of_many_is_rows_of_for_each(ledger: Ledger) -> None:
    """rows_of_many answers, in one look-up, what rows_of answers for each messageId (ids
    without rows left out), across the statement's parameter bound."""
    ids = [f"many-{i}" for i in range(1203)]
    for index, message_id in enumerate(ids[:1201]):
        for mapping in ("sale", "lead")[: 1 + index % 2]:
            ledger.record(message_id, mapping, State.INVALID, action=mapping, event="E",
                          errors=["x"], payload={"i": index})  # fmt: skip
    found = ledger.rows_of_many([*ids, ids[0]])
    assert set(found) == set(ids[:1201])
    for message_id in (ids[0], ids[1], ids[1000], ids[1200]):
        assert found[message_id] == ledger.rows_of(message_id)
    assert ledger.rows_of_many([]) == {}


# --- the conversion lifecycle: pinned bodies, invoices, erasure -----------------------------------


def _claim_body(ledger: Ledger, body: dict[str, Any], *, keep: bool, message_id: str = "r") -> Any:
    wanted = ClaimRequest(message_id, "refund", "refund", "Order Refunded", None, body, keep=keep)
    (result,) = ledger.claim_many([wanted])
    return result


def test_a_pinned_body_survives_later_claims_that_keep(ledger: Ledger, clock: ManualClock) -> None:
    """A body pinned by a refund's holder is the one every later claim (keep) gets back,
    after a crash (lease ran out) or a failed call; without keep, a claim replaces it."""
    first = _claim_body(ledger, {"invoiceId": "I"}, keep=True)
    assert first.granted and first.body == {"invoiceId": "I"}
    pinned = {"invoiceId": "I", "pin": {"commission": "cm_1", "patch": {"saleAmount": 50}}}
    assert ledger.pin("r", "refund", pinned)
    clock.advance(LEASE + 1)  # the holder died between its GET and its PATCH
    again = _claim_body(ledger, {"invoiceId": "I"}, keep=True)
    assert again.granted and again.body == pinned
    ledger.finish("r", "refund", State.PENDING, calls=1)
    third = _claim_body(ledger, {"invoiceId": "I"}, keep=True)
    assert third.body == pinned
    assert not ledger.pin("x", "refund", pinned)  # no such row in flight
    ledger.finish("r", "refund", State.DELIVERED, calls=1)
    row = ledger.get("r", "refund")
    assert row is not None and row.request_body == pinned


def test_a_claim_without_keep_replaces_the_body(ledger: Ledger) -> None:
    """Leads and sales keep today's rule: each claim stores the body it plans."""
    _claim_body(ledger, {"invoiceId": "I"}, keep=False)
    ledger.pin("r", "refund", {"invoiceId": "I", "pin": {}})
    ledger.release("r", "refund")
    assert _claim_body(ledger, {"invoiceId": "J"}, keep=False).body == {"invoiceId": "J"}


def test_invoice_rows_finds_what_was_delivered_for_an_invoice(ledger: Ledger) -> None:
    """The sale (and refunds) delivered for an invoice, matched exactly (LIKE wildcards in
    the id are literal), oldest first; unsettled rows are left out."""
    for message_id, invoice, state in [
        ("s1", "INV_1%", State.DELIVERED),
        ("s2", "INVX1x", State.DELIVERED),
        ("s3", "INV_1%", State.PENDING),
    ]:
        wanted = ClaimRequest(message_id, "sale", "sale", "Order Completed", "u",
                              {"invoiceId": invoice, "amount": 100})  # fmt: skip
        ledger.claim_many([wanted])
        ledger.finish(message_id, "sale", state, calls=1)
    assert [r.message_id for r in ledger.invoice_rows("INV_1%")] == ["s1"]
    assert ledger.invoice_rows("nothing") == []


def test_erase_replaces_a_users_personal_data_and_keeps_the_rest(ledger: Ledger) -> None:
    """Erasure replaces the payload and request body of every row of the user (by customer
    or by the payload's userId) with the note; ids, states, attempts and counts stay."""
    wanted = ClaimRequest("m1", "lead", "lead", "Sign Up", "u-1",
                          {"customerExternalId": "u-1", "customerEmail": "a@example.com"})  # fmt: skip
    ledger.claim_many([wanted])
    ledger.finish("m1", "lead", State.REJECTED, calls=1, payload={"userId": "u-1", "x": 1})
    ledger.record("m2", "lead", State.INVALID, action="lead", event="Sign Up", errors=["bad"],
                  payload={"userId": "u-1", "traits": {"email": "a@example.com"}})  # fmt: skip
    ledger.record("m3", "lead", State.INVALID, action="lead", event="Sign Up", errors=["bad"],
                  payload={"userId": "u-10", "traits": {"email": "b@example.com"}})  # fmt: skip
    before = ledger.counts()
    note = {"erased": "personal data erased by deletion d-1"}
    assert ledger.erase("u-1", note) == 2
    for message_id in ("m1", "m2"):
        row = ledger.get(message_id, "lead")
        assert row is not None
        assert row.payload == note
        assert row.request_body in (None, note)
    kept = ledger.get("m3", "lead")
    assert kept is not None and kept.payload["userId"] == "u-10"
    assert ledger.counts() == before
    first = ledger.get("m1", "lead")
    assert first is not None and first.attempts == 1 and first.state == State.REJECTED


def test_one_pinned_change_of_an_invoice_at_a_time(ledger: Ledger) -> None:
    """pin(invoice=) refuses while another unsettled row of that invoice holds a pinned body
    (its PATCH may not be applied yet); once that row settles, the next one may pin."""
    _claim_body(ledger, {"invoiceId": "I"}, keep=True, message_id="r1")
    _claim_body(ledger, {"invoiceId": "I"}, keep=True, message_id="r2")
    _claim_body(ledger, {"invoiceId": "J"}, keep=True, message_id="r3")
    assert ledger.pin("r1", "refund", {"invoiceId": "I", "pin": {"patch": {}}}, invoice="I")
    assert not ledger.pin("r2", "refund", {"invoiceId": "I", "pin": {"patch": {}}}, invoice="I")
    assert ledger.pin("r3", "refund", {"invoiceId": "J", "pin": {"patch": {}}}, invoice="J")
    # its own pin again (a retry) is fine
    assert ledger.pin("r1", "refund", {"invoiceId": "I", "pin": {"patch": {}}}, invoice="I")
    ledger.finish("r1", "refund", State.DELIVERED, calls=2)
    assert ledger.pin("r2", "refund", {"invoiceId": "I", "pin": {"patch": {}}}, invoice="I")


# --- the console's events list -------------------------------------------------------------------


def test_browse_pages_newest_first_with_every_filter(ledger: Ledger, clock: ManualClock) -> None:
    """browse(): newest first, keyset pages without overlap, and each filter (states,
    mapping, since, messageId or customer) chooses exactly its rows, on every backend."""
    for i in range(7):
        claim(ledger, f"m{i}", "sale" if i % 2 else "lead", customer=f"c{i % 3}")
        ledger.finish(f"m{i}", "sale" if i % 2 else "lead", State.DELIVERED, calls=1, status=200)
        clock.advance(10)
    ledger.record("bad", "sale", State.INVALID, action="sale", event="E", errors=["x"], payload={})
    everything = ledger.browse(Browse(limit=100))
    assert [r.message_id for r in everything] == ["bad", *(f"m{i}" for i in range(6, -1, -1))]
    first = ledger.browse(Browse(limit=3))
    second = ledger.browse(Browse(after=Browse.key(first[-1]), limit=3))
    third = ledger.browse(Browse(after=Browse.key(second[-1]), limit=3))
    assert [r.message_id for r in first + second + third] == [r.message_id for r in everything]
    assert [r.message_id for r in ledger.browse(Browse(states=DEAD))] == ["bad"]
    assert [r.message_id for r in ledger.browse(Browse(states=frozenset()))] == []
    assert {r.message_id for r in ledger.browse(Browse(mapping="lead"))} == {"m0", "m2", "m4", "m6"}
    start = clock.time() - 25
    assert [r.message_id for r in ledger.browse(Browse(since=start))] == ["bad", "m6", "m5"]
    assert [r.message_id for r in ledger.browse(Browse(search="m3"))] == ["m3"]
    assert {r.message_id for r in ledger.browse(Browse(search="c1"))} == {"m1", "m4"}


def test_browse_merges_states_in_order_page_after_page(ledger: Ledger, clock: ManualClock) -> None:
    """A filter of several states, with or without a mapping, pages newest first across
    the states (read one state at a time, merged), rows sharing a time ordered by id."""
    for i in range(12):
        mapping = "sale" if i % 3 else "lead"
        if i % 4 == 0:
            ledger.record(f"r{i:02d}", mapping, State.INVALID, action="sale", event="E",
                          errors=["x"], payload={})  # fmt: skip
        else:
            claim(ledger, f"r{i:02d}", mapping)
            state = State.DELIVERED if i % 2 else State.PENDING
            ledger.finish(f"r{i:02d}", mapping, state, calls=1)
        if i % 2:
            clock.advance(5)  # pairs share a first sighting
    everything = ledger.browse(Browse(limit=100))
    for wanted, mapping in (
        (frozenset({State.INVALID, State.DELIVERED, State.PENDING}), None),
        (frozenset({State.INVALID, State.PENDING}), None),
        (None, "sale"),
        (frozenset({State.DELIVERED, State.INVALID}), "sale"),
    ):
        expected = [
            r.message_id
            for r in everything
            if (wanted is None or r.state in wanted) and mapping in (None, r.mapping)
        ]
        paged: list[str] = []
        after = None
        while True:
            page = ledger.browse(Browse(states=wanted, mapping=mapping, after=after, limit=2))
            paged += [r.message_id for r in page]
            if len(page) < 2:
                break
            after = Browse.key(page[-1])
        assert paged == expected, (wanted, mapping)
        assert expected


def test_counts_with_a_cap_stop_there(ledger: Ledger) -> None:
    """counts(cap): each state's count, no higher than the cap; states without rows left
    out, as without a cap."""
    for i in range(5):
        ledger.record(f"i{i}", "sale", State.INVALID, action="sale", event="E", errors=[],
                      payload={})  # fmt: skip
    claim(ledger, "p0")
    ledger.finish("p0", "sale", State.DELIVERED, calls=1, status=200)
    assert ledger.counts() == {State.INVALID: 5, State.DELIVERED: 1}
    assert ledger.counts(cap=3) == {State.INVALID: 3, State.DELIVERED: 1}


# --- Dub's answer to each call ---------------------------------------------------------------


def answer(at: float, status: int | None, text: str | None = '{"ok":true}', **kw: Any) -> Attempt:
    return Attempt(at, kw.pop("method", "POST"), kw.pop("path", "/track/sale"), status, text, **kw)


def test_each_call_is_kept_with_its_answer_numbered_across_finishes(ledger: Ledger) -> None:
    """finish() keeps each call's answer with the row, numbered on from the calls before
    (across claims), by mapping then number; a finish that was refused keeps nothing."""
    claim(ledger)
    tried = [answer(1.0, 503, '{"error":"busy"}', retry_after=2.0), answer(3.0, None, None)]
    assert ledger.finish("m", "sale", State.PENDING, calls=2, status=None, answers=tried)
    assert not ledger.finish("m", "sale", State.DELIVERED, calls=1, answers=[answer(4.0, 200)])
    claim(ledger)
    claim(ledger, "m", "lead", action="lead")
    ledger.finish("m", "lead", State.DELIVERED, calls=1, answers=[answer(5.0, 200)])
    ledger.finish("m", "sale", State.DELIVERED, calls=1, status=200, answers=[answer(6.0, 200)])
    claim(ledger, "other")
    ledger.finish("other", "sale", State.DELIVERED, calls=1, answers=[answer(7.0, 200)])
    found = ledger.attempts_of("m")
    assert [(a.mapping, a.number, a.at, a.status) for a in found] == [
        ("lead", 1, 5.0, 200),
        ("sale", 1, 1.0, 503),
        ("sale", 2, 3.0, None),
        ("sale", 3, 6.0, 200),
    ]
    first = found[1]
    assert (first.method, first.path, first.answer, first.retry_after) == (
        "POST", "/track/sale", '{"error":"busy"}', 2.0,
    )  # fmt: skip
    assert found[2].answer is None and found[2].retry_after is None
    assert ledger.get("m", "sale").attempts == 3  # type: ignore[union-attr]
    assert ledger.attempts_of("nothing") == []


def test_finish_many_keeps_each_rows_answers_as_finish_does(ledger: Ledger) -> None:
    """finish_many keeps each finished row's answers, numbered on from its calls before, and
    keeps none for a row it did not finish (not in flight)."""
    claim(ledger, "a")
    ledger.finish("a", "sale", State.PENDING, calls=1, answers=[answer(1.0, 503)])
    claim(ledger, "a")
    claim(ledger, "b")
    done = ledger.finish_many([
        Finish("a", "sale", State.DELIVERED, calls=2, status=200,
               answers=(answer(2.0, 503), answer(3.0, 200))),
        Finish("b", "sale", State.REJECTED, calls=1, status=400, answers=(answer(4.0, 400),)),
        Finish("c", "sale", State.DELIVERED, calls=1, answers=(answer(5.0, 200),)),
    ])  # fmt: skip
    assert done == [True, True, False]
    assert [(a.number, a.at) for a in ledger.attempts_of("a")] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [(a.number, a.status) for a in ledger.attempts_of("b")] == [(1, 400)]
    assert ledger.attempts_of("c") == []


def test_a_large_finish_many_keeps_every_rows_last_answers(ledger: Ledger) -> None:
    """finish_many of rows with many answers each (more parameters than one statement
    takes) finishes every row and keeps each row's last KEPT_ATTEMPTS answers, numbered."""
    keys = [f"m{i:03}" for i in range(400)]
    for key in keys:
        claim(ledger, key)
    calls = KEPT_ATTEMPTS + 5
    done = ledger.finish_many([
        Finish(key, "sale", State.PENDING, calls=calls,
               answers=tuple(answer(float(n), 503) for n in range(calls)))
        for key in keys
    ])  # fmt: skip
    assert done == [True] * len(keys)
    # On PostgreSQL the statements split after 157 rows (190 parameters a row).
    for key in (keys[0], keys[156], keys[157], keys[-1]):
        found = ledger.attempts_of(key)
        assert [a.number for a in found] == list(range(6, calls + 1)), key
        assert [a.at for a in found] == [float(n) for n in range(5, calls)], key


def test_a_row_keeps_its_last_calls_and_answers_cut_short(ledger: Ledger) -> None:
    """Only the last KEPT_ATTEMPTS calls of a row stay, and each answer at most
    ANSWER_LIMIT characters (the cut marked)."""
    for round_ in range(3):
        claim(ledger)
        tried = [answer(float(round_ * 10 + i), 503) for i in range(10)]
        ledger.finish("m", "sale", State.PENDING, calls=10, answers=tried)
    claim(ledger)
    ledger.finish("m", "sale", State.PENDING, calls=1, answers=[answer(99.0, 200, "x" * 5000)])
    found = ledger.attempts_of("m")
    assert [a.number for a in found] == list(range(12, 32))
    assert len(found) == KEPT_ATTEMPTS
    last = found[-1].answer
    assert last is not None and len(last) == ANSWER_LIMIT and last.endswith("\u2026")


def test_calls_go_with_their_row_and_with_erasure(ledger: Ledger, clock: ManualClock) -> None:
    """Pruning a row drops its calls; erasing its customer replaces their answers with the
    note and keeps the rest of each call."""
    claim(ledger, "gone")
    ledger.finish("gone", "sale", State.DELIVERED, calls=1, answers=[answer(1.0, 200)])
    claim(ledger, "kept", customer="u-1")
    ledger.finish("kept", "sale", State.REJECTED, calls=1,
                  answers=[answer(1.0, 422, '{"email":"a@example.com"}')])  # fmt: skip
    clock.advance(100)
    assert ledger.sweep(Retention(give_up_after=1e6, settled=50, dead=1e6))["pruned"] == 1
    assert ledger.attempts_of("gone") == []
    note = {"erased": "personal data erased by deletion d-1"}
    assert ledger.erase("u-1", note) == 1
    (kept,) = ledger.attempts_of("kept")
    assert kept.answer is not None and json.loads(kept.answer) == note
    assert (kept.status, kept.number) == (422, 1)

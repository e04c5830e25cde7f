"""Claims as Segment sees them: a refused claim is a duplicate only when its row is final,
a body holding one event twice settles both copies as one, and attempts never pass
``BRIDGE_MAX_ATTEMPTS`` nor give anything up while Segment still retries it."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.inputs import Item
from bridge.core.outcomes import DEAD, FINAL, Outcome, State
from bridge.core.results import Result
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.handover import handed_to_outbox
from bridge.delivery.ratelimit import SlidingWindow
from bridge.delivery.retry import RetryPolicy
from bridge.dub.client import DubClient
from bridge.ledger import open_ledger, retention_of
from bridge.ledger.base import Claim, ClaimRequest, Ledger
from bridge.ledger.memory import MemoryLedger
from bridge.ledger.sql import SQLLedger
from bridge.mapping.batch import plan_all
from bridge.mapping.engine import Engine
from bridge.web.app import create_app
from tests.conftest import DUB, make_settings, order, sale_ok
from tests.helpers.fakedub import FakeDub, Status
from tests.helpers.fakes import ManualClock
from tests.helpers.faultkit import (
    MAPPINGS,
    Answer,
    assert_recorded_once,
    key_for,
    sale_event,
    segment_retry,
)
from tests.helpers.ledgers import BACKENDS, backend_settings
from tests.helpers.procs import ProcfileWeb, clean_env, instances

KEY = ("race-1", "order-sale")


@pytest.fixture(params=BACKENDS)
def two_handles(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[tuple[Ledger, Ledger]]:
    """Two workers' handles on one ledger (the memory ledger: one object, one process)."""
    pg_url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = backend_settings(str(request.param), tmp_path, pg_url)
    holder = open_ledger(settings, clock=clock)
    assert holder is not None
    claimant = holder if request.param == "memory" else open_ledger(settings, clock=clock)
    assert claimant is not None
    yield holder, claimant
    for ledger in {id(holder): holder, id(claimant): claimant}.values():
        ledger.close()


def deliverer_on(ledger: Ledger | None, clock: ManualClock, max_attempts: int = 20) -> Deliverer:
    return Deliverer(
        DubClient(DUB, "k"),
        ledger,
        limiter=SlidingWindow(1200, clock=clock),
        policy=RetryPolicy(rng=random.Random(3)),
        clock=clock,
        max_attempts=max_attempts,
    )


def planned(engine: Engine, events: list[dict[str, Any]]) -> tuple[list[Result], dict[str, Any]]:
    return plan_all(engine, [Item(e) for e in events])


def holder_finishes_between(claimant: Ledger, finish: Callable[[], None]) -> None:
    """Run ``finish`` at the worst moment for ``claimant``'s next refused claim: on SQL
    backends between the refused upsert and the read of the row's state (two statements);
    the memory backend refuses and reads under one lock, so there it runs right after."""
    if isinstance(claimant, SQLLedger):
        run = claimant._run

        class Between:
            def __init__(self, db: Any):
                self.db = db

            def execute(self, sql: str, params: Any = None) -> Any:
                if sql.startswith("SELECT message_id, mapping, state, attempts"):
                    finish()
                return self.db.execute(sql, params)

        claimant._run = lambda work, **kw: run(lambda db: work(Between(db)), **kw)  # type: ignore[method-assign]
        return
    claim_many = claimant.claim_many

    def then_finish(*args: Any, **kw: Any) -> Any:
        granted = claim_many(*args, **kw)
        finish()
        return granted

    claimant.claim_many = then_finish  # type: ignore[method-assign]


# --- 1. only a final row is a duplicate -----------------------------------------------------


def test_a_claim_refused_while_the_holder_fails_is_pending_not_duplicate(
    two_handles: tuple[Ledger, Ledger], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """A claim refused while another worker holds the row, whose holder then finishes
    `pending` (Dub failed), is answered pending (503), never duplicate; Segment's retry then
    sends it, once."""
    holder, claimant = two_handles
    (held,) = holder.claim_many([ClaimRequest(*KEY, "sale", "Order Completed", "user_1", {})])
    assert held.granted
    holder_finishes_between(
        claimant, lambda: holder.finish(*KEY, State.PENDING, calls=1, status=503)
    )
    deliverer = deliverer_on(claimant, clock)
    try:
        results, payloads = planned(engine, [order("race-1")])
        (answer,) = deliverer.deliver(results, 2.0, payloads)
        assert answer.outcome == "pending", answer.reason
        assert len(dub.calls) == 0
        row = holder.get(*KEY)
        assert row is not None and row.state is State.PENDING
        dub.post(f"{DUB}/track/sale", json=sale_ok())
        fresh = deliverer_on(holder, clock)
        try:
            (retried,) = fresh.deliver(results, 2.0, payloads)
        finally:
            fresh.close()
        assert retried.outcome == "delivered" and len(dub.calls) == 1
    finally:
        deliverer.close()


@pytest.mark.parametrize("state", sorted(State))
def test_a_refused_claim_is_a_duplicate_only_when_its_row_is_final(state: State) -> None:
    """One rule for every state a refused claim may read: final is a duplicate, a dead
    letter is answered as what it is (not retried), anything else is pending (Segment
    retries)."""
    from bridge.delivery.decide import refused

    outcome = refused(state).outcome
    if state in FINAL:
        assert outcome == "duplicate"
    elif state in DEAD:
        assert outcome == state.value
    else:
        assert outcome == "pending"
    assert refused(None).outcome == "pending"  # the row went away between the two reads


# --- 2. a body holding one event twice ------------------------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
def webhook(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    ledger = "on" if request.param == "sqlite" else "memory"
    app = create_app(make_settings(tmp_path, ledger=ledger), clock=clock)
    yield app
    app.extensions["bridge"].close()


def post(app: Any, events: list[dict[str, Any]]) -> Any:
    body = json.dumps({"batch": events})
    return app.test_client().post("/segment", data=body, content_type="application/json")


def test_a_body_repeating_an_event_is_settled_as_one(
    webhook: Any, dub: responses.RequestsMock
) -> None:
    """The same event twice in one body: one call, the copy `duplicate`, and a 200."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    answer = post(webhook, [order("twice"), order("twice")])
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["counts"] == {"delivered": 1, "duplicate": 1}
    assert len(dub.calls) == 1


def test_a_repeated_event_that_failed_is_settled_by_segments_retry(
    webhook: Any, dub: responses.RequestsMock
) -> None:
    """While the first copy is unsettled both are (503); once Dub takes it, Segment's retry
    gets 200, not a 503 for the copy until the outbox takes over."""
    down = {"error": {"code": "internal_server_error", "message": "down"}}
    dub.post(f"{DUB}/track/sale", status=500, json=down)
    first = post(webhook, [order("twice"), order("twice")])
    assert first.status_code == 503
    assert set(first.get_json()["counts"]) <= {"failed", "pending"}
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    tried = len(dub.calls)
    retry = post(webhook, [order("twice"), order("twice")])
    assert retry.status_code == 200, retry.get_json()
    assert retry.get_json()["counts"] == {"delivered": 1, "duplicate": 1}
    assert len(dub.calls) == tried + 1


# --- 3. attempts within BRIDGE_MAX_ATTEMPTS, nothing given up while Segment retries --------


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_429s_without_retry_after_never_pass_the_cap_nor_give_up_early(
    backend: str, tmp_path: Path, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Not queueing, Dub answers 429 without Retry-After to everything while Segment retries a
    batch for four hours: the stored attempts never pass BRIDGE_MAX_ATTEMPTS, every answer is 503
    (nothing given up with a 200), and the rows become dead letters only at the outbox's
    age."""
    limited = {"error": {"code": "rate_limit_exceeded", "message": "slow down"}}
    dub.post(f"{DUB}/track/sale", status=429, json=limited)
    cap = 5
    settings = make_settings(
        tmp_path,
        ledger="on" if backend == "sqlite" else "memory",
        max_attempts=cap,
        queue_when_limited=False,
    )
    app = create_app(settings, clock=clock)
    service = app.extensions["bridge"]
    try:
        ledger = service.ledger
        events = [order(f"busy-{i}") for i in range(8)]
        keys = [(e["messageId"], "order-sale") for e in events]
        window = settings.outbox_after_hours * 3600
        started = clock.time()
        statuses = []
        while clock.time() - started < window - 120:
            answer = post(app, events)
            statuses.append(answer.status_code)
            assert answer.status_code == 503, answer.get_json()
            assert "gave_up" not in answer.get_json()["counts"]
            attempts = [ledger.get(*key).attempts for key in keys]
            assert max(attempts) <= cap, attempts
            assert State.GAVE_UP not in ledger.counts()
            clock.advance(random.Random(len(statuses)).uniform(30, 900))  # Segment's backoff
        assert len(statuses) > cap and all(ledger.get(*k).attempts == cap for k in keys)
        calls = len(dub.calls)
        # Past Segment's window: answered 200 `queued`; the outbox makes no call past the cap.
        clock.advance(240)
        late = post(app, events)
        assert late.status_code == 200 and late.get_json()["counts"] == {"queued": 8}
        assert service.outbox is not None
        service.outbox.run_once()
        assert len(dub.calls) == calls
        assert State.GAVE_UP not in ledger.counts()
        clock.advance(settings.outbox_max_age_hours * 3600 - window)
        ledger.sweep(retention_of(settings))
        assert ledger.counts() == {State.GAVE_UP: 8}
        assert all(ledger.get(*key).attempts == cap for key in keys)
    finally:
        service.close()


# --- 1, with real processes: two instances on one PostgreSQL --------------------------------


@pytest.fixture
def pair(pg_url: str, tmp_path: Path) -> Iterator[tuple[FakeDub, list[ProcfileWeb]]]:
    """Two Procfile instances sharing one PostgreSQL ledger, in front of a fake Dub."""
    fake = FakeDub(api_key="test-key").start()
    env = clean_env(
        DUB_API_KEY="test-key",
        DUB_API_URL=fake.url,
        DATABASE_URL=pg_url,
        BRIDGE_MAPPINGS_DIR=str(MAPPINGS),
        BRIDGE_RELOAD_SECONDS="0",
        BRIDGE_DEADLINE_SECONDS="1",
        DUB_CONNECT_TIMEOUT="0.3",
        DUB_READ_TIMEOUT="0.5",
        BRIDGE_LEASE_SECONDS="2",
        BRIDGE_LOG_LEVEL="WARNING",
        WEB_CONCURRENCY="2",
        # The race under test is a refused claim reading a row its holder just finished
        # pending: rate-limited events are answered 503 here, not queued.
        BRIDGE_QUEUE_WHEN_LIMITED="0",
    )
    try:
        with instances(env, tmp_path, 2) as webs:
            yield fake, webs
    finally:
        fake.stop()


def post_to(url: str, events: list[dict[str, Any]]) -> Answer:
    try:
        response = requests.post(url + "/segment", json={"batch": events}, timeout=15)
    except requests.RequestException as exc:
        return Answer(599, {"error": {"code": "transport", "message": str(exc)}})
    return Answer(response.status_code, response.json(), dict(response.headers))


@pytest.mark.slow
def test_two_instances_never_answer_200_for_an_unsent_conversion(
    pair: tuple[FakeDub, list[ProcfileWeb]],
) -> None:
    """Not queueing, the same event posted to two instances at once, over and over, while Dub
    answers 429: no answer is 200 while the conversion is unsent; once Dub recovers, Segment's
    retries deliver each one exactly once."""
    fake, webs = pair
    # A far Retry-After ends each try at once, so a holder finishes `pending` within
    # milliseconds of its claim: the moment a refused claim reads the row.
    fake.plan = lambda call: Status(429, retry_after_in=1.5)
    events = [sale_event(f"race{i}") for i in range(80)]
    posters = [webs[0].url, webs[1].url] * 2
    answers: list[Answer] = []
    with ThreadPoolExecutor(len(posters)) as pool:
        for event in events:
            barrier = threading.Barrier(len(posters))

            def at_once(url: str, event: dict[str, Any] = event, gate: Any = barrier) -> Answer:
                gate.wait(10)
                return post_to(url, [event])

            answers += list(pool.map(at_once, posters))
    counts = Counter(a.status for a in answers)
    assert fake.recorded_count() == 0
    assert counts[200] == 0, f"answered 200 while unsent: {counts}"
    assert set(counts) == {503}, counts

    fake.plan = None
    for event in events:
        final = segment_retry(lambda e=event: post_to(webs[0].url, [e]), attempts=40, pause=0.2)
        assert final[-1].status == 200, final[-1].body
    assert_recorded_once(fake, {key_for(e) for e in events})


def test_a_429_without_retry_after_pauses_every_worker(
    engine: Engine, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A 429 without Retry-After is the key's limit, not the row's: the shared limiter
    pauses by the backoff, so no worker calls at once, even when this row's calls are
    spent."""
    dub.post(f"{DUB}/track/sale", status=429, json={"error": {"code": "x", "message": "x"}})
    deliverer = deliverer_on(None, clock, max_attempts=1)
    try:
        results, payloads = planned(engine, [order("limited")])
        (result,) = deliverer.deliver(results, 2.0, payloads)
        assert (result.outcome, result.attempts, len(dub.calls)) == ("failed", 1, 1)
        assert not deliverer.limiter.acquire(clock.monotonic()).granted  # paused: no slot now
    finally:
        deliverer.close()


def test_a_redrive_sends_a_row_whose_calls_are_spent(
    tmp_path: Path, engine: Engine, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A person's redrive of a dead letter whose calls reached the cap sends it (a round of
    its own), instead of giving it up again without a call."""
    ledger = open_ledger(backend_settings("sqlite", tmp_path), clock=clock)
    assert ledger is not None
    deliverer = deliverer_on(ledger, clock, max_attempts=3)
    try:
        ledger.claim_many([ClaimRequest("spent", "order-sale", "sale", None, "user_1", {})])
        ledger.finish("spent", "order-sale", State.GAVE_UP, calls=3, status=503)
        dub.post(f"{DUB}/track/sale", json=sale_ok())
        results, payloads = planned(engine, [order("spent")])
        (result,) = deliverer.deliver(results, 2.0, payloads, redrive=True)
        assert (result.outcome, len(dub.calls)) == ("delivered", 1)
        row = ledger.get("spent", "order-sale")
        assert row is not None and (row.state, row.attempts) == (State.DELIVERED, 4)
    finally:
        deliverer.close()
        ledger.close()


@settings(max_examples=40, deadline=None)
@given(cap=st.integers(1, 6), before=st.integers(0, 8), budget=st.floats(0.5, 6.0))
def test_no_pass_makes_more_calls_than_the_cap_leaves(
    engine: Engine, cap: int, before: int, budget: float
) -> None:
    """Whatever calls a row had and whatever the budget, a pass against a failing Dub
    leaves the stored attempts at most the cap (or where they were), never above."""
    clock = ManualClock()
    ledger = MemoryLedger(clock=clock)
    request = ClaimRequest("m-1", "order-sale", "sale", None, "user_1", {})
    if before:
        ledger.claim_many([request])
        ledger.finish("m-1", "order-sale", State.PENDING, calls=before, status=503)
    down = {"error": {"code": "internal_server_error", "message": "down"}}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as dub:
        dub.post(f"{DUB}/track/sale", status=503, json=down)
        deliverer = deliverer_on(ledger, clock, max_attempts=cap)
        try:
            results, payloads = planned(engine, [order("m-1")])
            (result,) = deliverer.deliver(results, budget, payloads)
        finally:
            deliverer.close()
        calls = len(dub.calls)
    row = ledger.get("m-1", "order-sale")
    assert (
        row is not None and row.state is State.PENDING and result.outcome in ("failed", "pending")
    )
    assert row.attempts == before + calls <= max(before, cap)


def test_a_queued_row_a_hand_over_meets_keeps_its_place_in_the_queue() -> None:
    """An SDK's request that finds its row in the outbox's queue answers queued without
    moving the row's next try (the queue's backoff stands); an unqueued row is handed over."""
    deferred: list[tuple[str, str, float]] = []
    ledger = SimpleNamespace(defer=lambda *a: deferred.append(a) or True)
    deliverer = SimpleNamespace(ledger=ledger, clock=ManualClock(), outbox_after=None)
    result = Result(message_id="m", mapping="sale", action="sale").finish(
        Outcome.PENDING, reason="Dub failed"
    )
    queued = handed_to_outbox(deliverer, result, Claim(True, queued=True), now=True)  # type: ignore[arg-type]
    assert queued.outcome is Outcome.QUEUED and deferred == []
    handed = handed_to_outbox(deliverer, result, Claim(True), now=True)  # type: ignore[arg-type]
    assert handed.outcome is Outcome.QUEUED and [d[:2] for d in deferred] == [("m", "sale")]

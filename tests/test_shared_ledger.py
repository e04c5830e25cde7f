"""Several workers, one ledger: the shared rate limit, attempts that count calls, the outbox,
and Segment's retries of a batch far bigger than the rate limit. Run against SQLite (the
workers of one machine) and PostgreSQL (every instance) alike; Dub is mocked at HTTP."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import responses
from click.testing import CliRunner

from bridge.cli import main
from bridge.core.inputs import Item
from bridge.core.outcomes import State
from bridge.core.settings import Settings
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.outbox import Outbox
from bridge.delivery.retry import RetryPolicy
from bridge.ledger import open_ledger
from bridge.ledger.base import COUNTED_FOR, ClaimRequest, Ledger, Retention
from bridge.ledger.postgres import PostgresLedger
from bridge.mapping.batch import plan_all
from bridge.mapping.engine import Engine
from bridge.service.wiring import build_deliverer
from bridge.web.app import create_app
from tests.conftest import DUB, MAPPINGS, lead_ok, order, sale_ok, signup
from tests.helpers.fakes import ManualClock

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def shared_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Settings]:
    """Settings of workers sharing one ledger (the same SQLite file, or one database)."""
    extra: dict[str, Any] = {"db_path": tmp_path / "ledger.sqlite3"}
    if request.param == "postgres":
        extra["database_url"] = request.getfixturevalue("pg_url")

    def make(**overrides: Any) -> Settings:
        values = {
            "dub_api_key": "dub_test_key_123",
            "dub_api_url": DUB,
            "mappings_dir": MAPPINGS,
            "reload_seconds": 0,
            **extra,
            **overrides,
        }
        return Settings.from_env({}, **values)

    return make


@pytest.fixture
def workers(
    shared_settings: Callable[..., Settings], clock: ManualClock
) -> Iterator[Callable[..., Deliverer]]:
    """A factory of deliverers, each with its own ledger handle: one per worker."""
    made: list[tuple[Deliverer, Ledger]] = []

    def make(**overrides: Any) -> Deliverer:
        settings = shared_settings(**overrides)
        ledger = open_ledger(settings, clock=clock)
        assert ledger is not None
        deliverer = build_deliverer(settings, ledger, clock=clock)
        deliverer.policy = RetryPolicy(rng=random.Random(3))
        made.append((deliverer, ledger))
        return deliverer

    yield make
    for deliverer, ledger in made:
        deliverer.close()
        ledger.close()


def send(deliverer: Deliverer, engine: Engine, events: list[Any], budget: float = 4.0) -> Any:
    results, payloads = plan_all(engine, [Item(e) for e in events])
    return deliverer.deliver(results, budget, payloads)


def dub_slows_down(dub: responses.RequestsMock, clock: ManualClock) -> None:
    """Dub answers a sale with 429 and its millisecond Retry-After, 30 s from now."""
    until_ms = int((clock.time() + 30) * 1000)
    dub.post(
        f"{DUB}/track/sale",
        status=429,
        json={"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
        headers={"Retry-After": str(until_ms)},
    )


def sales(count: int, prefix: str) -> list[dict[str, Any]]:
    return [order(f"{prefix}-{i}") | {"userId": f"user-{prefix}-{i}"} for i in range(count)]


def invoices(dub: responses.RequestsMock) -> Counter[str]:
    return Counter(json.loads(c.request.body)["invoiceId"] for c in dub.calls)


def test_workers_share_one_rate_limit(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """Two workers with a limit of 20/min together make 20 calls, not 40; the rest wait for
    the window and go out when it slides, each exactly once."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    first, second = workers(rate_limit_per_minute=20), workers(rate_limit_per_minute=20)
    a, b = sales(15, "a"), sales(15, "b")
    send(first, engine, a)
    send(second, engine, b)
    assert len(dub.calls) == 20
    clock.advance(COUNTED_FOR)  # the window has slid past every slot taken
    send(first, engine, a)
    send(second, engine, b)
    assert invoices(dub) == Counter({f"o-{e['messageId']}": 1 for e in a + b})


def test_an_idle_worker_starves_nobody(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock
) -> None:
    """While the other workers are idle, one worker may use the whole limit."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    busy = workers(rate_limit_per_minute=20)
    workers(rate_limit_per_minute=20)  # idle
    results = send(busy, engine, sales(20, "solo"))
    assert [r.outcome for r in results] == ["delivered"] * 20


def test_a_429_pauses_every_worker(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """Not queueing: Dub's 429 with its millisecond Retry-After stops every worker until then,
    not only the one that got it; neither counts the waiting as an attempt."""
    dub_slows_down(dub, clock)
    first, second = workers(queue_when_limited=False), workers(queue_when_limited=False)
    (hit,) = send(first, engine, sales(1, "hit"))
    assert hit.outcome == "failed" and len(dub.calls) == 1
    (held,) = send(second, engine, sales(1, "held"))
    assert held.outcome == "failed" and len(dub.calls) == 1  # no call: paused
    assert held.dub_error is not None and held.dub_error["code"] == "rate_limited_locally"
    assert held.retry_after == pytest.approx(30, abs=0.01)  # Segment is told how long
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    clock.advance(31)
    (later,) = send(second, engine, sales(1, "held"))
    assert later.outcome == "delivered"
    row = second.ledger.get("held-0", "order-sale")  # type: ignore[union-attr]
    assert row is not None and row.attempts == 1  # the paused try was no attempt


@pytest.mark.slow
def test_1500_sales_retried_21_times_are_never_given_up(
    shared_settings: Callable[..., Settings], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """Not queueing: one batch of 1,500 sales posted 21 times, as Segment retries, against a
    limit of 1,200/min: the rate-limited claims are no attempts, so no sale is given up; each
    reaches Dub exactly once, and Segment gets 503 until every one is settled."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    app = create_app(shared_settings(max_attempts=20, queue_when_limited=False), clock=clock)
    try:
        client = app.test_client()
        batch = json.dumps({"batch": sales(1500, "big")})
        answers = []
        for _ in range(21):
            answers.append(client.post("/segment", data=batch, content_type="application/json"))
            clock.advance(1)  # Segment's retries come fast; the minute has not slid yet
        assert [a.status_code for a in answers] == [503] * 21
        assert all("gave_up" not in a.get_json()["counts"] for a in answers)
        clock.advance(60)
        final = client.post("/segment", data=batch, content_type="application/json")
        assert final.status_code == 200, final.get_json()["counts"]
        ledger = app.extensions["bridge"].ledger
        assert ledger.counts() == {State.DELIVERED: 1500}
        assert ledger.get("big-0", "order-sale").attempts == 1
    finally:
        app.extensions["bridge"].close()
    assert len(dub.calls) == 1500
    assert set(invoices(dub).values()) == {1}


def test_the_outbox_sends_what_segment_stopped_retrying(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """Rows still pending after Segment's window are sent by the outbox from their stored
    request, the lead before its customer's sale (not taken while the lead is unsettled);
    failures wait longer each time, for every worker's sender."""
    dub.post(f"{DUB}/track/sale", status=503, json={"error": {"code": "x", "message": "down"}})
    dub.post(f"{DUB}/track/lead", status=503, json={"error": {"code": "x", "message": "down"}})
    worker = workers()
    events = [order("late-sale") | {"userId": "u-late"}, signup("late-lead", userId="u-late")]
    assert {r.outcome for r in send(worker, engine, events)} <= {"failed", "pending"}
    calls_by_segment = len(dub.calls)
    assert worker.ledger is not None
    outbox = Outbox(worker.ledger, worker, after_seconds=4 * 3600, clock=clock,
                    rng=random.Random(1))  # fmt: skip
    assert outbox.run_once() == Counter()  # not Segment's window yet
    assert len(dub.calls) == calls_by_segment
    clock.advance(4 * 3600 + 1)
    other = workers()
    assert other.ledger is not None
    others = Outbox(other.ledger, other, after_seconds=4 * 3600, clock=clock)
    assert outbox.run_once() == Counter({"queued": 1})  # the lead; its sale waits behind it
    assert [c.request.url.rsplit("/", 1)[-1] for c in dub.calls[calls_by_segment:]] == ["lead"]
    assert outbox.run_once() == Counter()  # backed off: not due yet
    assert others.run_once() == Counter()  # for every worker
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    dub.replace(responses.POST, f"{DUB}/track/lead", json=lead_ok())
    clock.advance(3600)
    tried = len(dub.calls)
    assert others.run_once() == Counter({"delivered": 1})
    assert outbox.run_once() == Counter({"delivered": 1})
    assert [c.request.url.rsplit("/", 1)[-1] for c in dub.calls[tried:]] == ["lead", "sale"]
    assert worker.ledger.counts() == {State.DELIVERED: 2}


def test_segment_is_told_200_once_the_outbox_owns_a_row(
    shared_settings: Callable[..., Settings], dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A retry arriving after Segment's window gets 200 for a row the outbox now retries."""
    dub.post(f"{DUB}/track/sale", status=500, json={"error": {"code": "x", "message": "down"}})
    app = create_app(shared_settings(), clock=clock)
    try:
        client = app.test_client()
        body = json.dumps(order("slow"))
        assert (
            client.post("/segment", data=body, content_type="application/json").status_code == 503
        )
        clock.advance(4 * 3600 + 1)
        answer = client.post("/segment", data=body, content_type="application/json")
        assert answer.status_code == 200
        (entry,) = answer.get_json()["results"]
        assert entry["outcome"] == "queued" and "outbox" in entry["reason"]
    finally:
        app.extensions["bridge"].close()


def test_a_sweeper_killed_mid_pass_loses_nothing(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """A worker that claimed an outbox row and died holds it only until its lease ends; the
    next pass, on another worker, sends it, once."""
    dub.post(f"{DUB}/track/sale", status=503, json={"error": {"code": "x", "message": "down"}})
    first = workers()
    send(first, engine, [order("orphan")])
    clock.advance(4 * 3600 + 1)
    assert first.ledger is not None
    (row,) = first.ledger.due(first_seen_before=clock.time(), limit=10)
    claim = ClaimRequest(
        row.message_id, row.mapping, "sale", row.event, row.customer, row.request_body
    )
    assert first.ledger.claim_many([claim], lease=60)[0].granted  # ...and the worker dies here
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    tried = len(dub.calls)
    second = workers()
    assert second.ledger is not None
    outbox = Outbox(second.ledger, second, after_seconds=4 * 3600, clock=clock)
    assert outbox.run_once() == Counter()  # still held by the dead worker's lease
    clock.advance(61)
    assert outbox.run_once() == Counter({"delivered": 1})
    assert len(dub.calls) == tried + 1


# --- the queue: Dub's rate limit absorbed by the outbox ----------------------------------------


def post_batch(app: Any, events: list[dict[str, Any]]) -> Any:
    body = json.dumps({"batch": events})
    return app.test_client().post("/segment", data=body, content_type="application/json")


def test_a_burst_over_the_limit_is_answered_200_and_sent_at_dubs_rate(
    shared_settings: Callable[..., Settings], dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A batch bigger than Dub's limit: Segment gets 200 at once (the rest `queued`, stored with
    their request and payload; /metrics and `bridge db status` show the queue), and the
    outbox sends the queue as the window frees, each once and never over the limit."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    settings = shared_settings(rate_limit_per_minute=20, metrics_public=True)
    app = create_app(settings, clock=clock)
    service = app.extensions["bridge"]
    try:
        events = sales(30, "burst")
        answer = post_batch(app, events)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["counts"] == {"delivered": 20, "queued": 10}
        assert len(dub.calls) == 20
        ledger = service.ledger
        status = ledger.queue_status()
        assert status.depth == 10 and status.oldest == clock.time()
        rows = [ledger.get(e["messageId"], "order-sale") for e in events]
        queued = [r for r in rows if r.state == "pending"]
        assert len(queued) == 10 and all(r.request_body and r.payload for r in queued)
        scraped = app.test_client().get("/metrics").get_data(as_text=True)
        assert re.search(r"^bridge_outbox_queue_depth\{.*\} 10\.0$", scraped, re.M)
        assert re.search(r"^bridge_queued_total \d+", scraped, re.M)
        where = {"DATABASE_URL": settings.postgres_url} if settings.postgres_url else {}
        env = {"BRIDGE_DB": str(settings.db_path), **where}
        shown = CliRunner().invoke(main, ["db", "status"], env=env)
        assert "outbox queue: 10 rows" in shown.output, shown.output
        assert service.outbox.drain() == Counter({"queued": 8})  # the window is full
        assert len(dub.calls) == 20
        clock.advance(COUNTED_FOR)
        assert service.outbox.drain() == Counter({"delivered": 10})
        assert invoices(dub) == Counter({f"o-{e['messageId']}": 1 for e in events})
        assert ledger.queue_status().depth == 0
        assert ledger.queue_status().sent_last_minute == 10
    finally:
        service.close()


def test_a_queued_event_redelivered_to_another_instance_is_sent_once(
    shared_settings: Callable[..., Settings], dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Segment redelivers a queued event to another instance: while a sender holds it, 200
    `queued` and no call; once it is sent, `duplicate`; Dub sees it once."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    one = create_app(shared_settings(rate_limit_per_minute=1), clock=clock)
    two = create_app(shared_settings(rate_limit_per_minute=1), clock=clock)
    try:
        events = sales(2, "again")
        assert post_batch(one, events[:1]).get_json()["counts"] == {"delivered": 1}
        assert post_batch(one, events[1:]).get_json()["counts"] == {"queued": 1}
        ledger = one.extensions["bridge"].ledger
        (held,) = ledger.take(first_seen_before=0.0, limit=5, lease=60)  # a sender has it
        again = post_batch(two, events)
        assert again.status_code == 200
        assert again.get_json()["counts"] == {"duplicate": 1, "queued": 1}
        assert len(dub.calls) == 1
        clock.advance(COUNTED_FOR)  # the sender died mid-call; its lease ends, the window frees
        assert one.extensions["bridge"].outbox.drain() == Counter({"delivered": 1})
        assert post_batch(two, events).get_json()["counts"] == {"duplicate": 2}
        assert invoices(dub) == Counter({f"o-{e['messageId']}": 1 for e in events})
        assert held.row.message_id == "again-1"
    finally:
        one.extensions["bridge"].close()
        two.extensions["bridge"].close()


def test_dubs_retry_after_holds_the_queue_of_every_instance(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """Dub's 429 (its millisecond Retry-After) queues the event, and no instance's sender
    calls Dub until then; after it, the queue is sent at once (a 429 is no row's backoff)."""
    dub_slows_down(dub, clock)
    first, second = workers(), workers()
    (hit,) = send(first, engine, sales(1, "told"))
    assert hit.outcome == "queued" and hit.attempts == 1 and len(dub.calls) == 1
    assert second.ledger is not None
    theirs = Outbox(second.ledger, second, after_seconds=4 * 3600, clock=clock)
    assert theirs.run_once() == Counter({"queued": 1})  # paused: not even tried
    assert len(dub.calls) == 1
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    clock.advance(31)
    assert theirs.run_once() == Counter({"delivered": 1})
    assert len(dub.calls) == 2


def test_a_row_dub_fails_in_the_queue_backs_off_alone(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """A queued row Dub fails (5xx) waits its own backoff; the rest of the queue goes on."""

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        if json.loads(request.body)["invoiceId"] == "o-fail-0":
            return 503, {}, json.dumps({"error": {"code": "x", "message": "down"}})
        return 200, {}, json.dumps(sale_ok())

    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=answer)
    worker = workers(rate_limit_per_minute=3)
    assert worker.ledger is not None
    send(worker, engine, sales(3, "first"))
    assert {r.outcome for r in send(worker, engine, sales(2, "fail"))} == {"queued"}
    clock.advance(COUNTED_FOR)
    outbox = Outbox(worker.ledger, worker, after_seconds=4 * 3600, clock=clock,
                    rng=random.Random(1))  # fmt: skip
    assert outbox.run_once() == Counter({"queued": 1, "delivered": 1})
    assert worker.ledger.get("fail-0", "order-sale").attempts == 1  # type: ignore[union-attr]
    assert outbox.run_once() == Counter()  # a slot is free, but fail-0 backs off
    assert worker.ledger.queue_status().depth == 1
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    clock.advance(3600)
    assert outbox.run_once() == Counter({"delivered": 1})
    assert worker.ledger.get("fail-0", "order-sale").attempts == 2  # type: ignore[union-attr]


def test_a_lead_queued_holds_its_customers_sale_in_the_queue(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """A lead queued by Dub's limit takes its customer's sale into the queue with it (200, no
    sale: null); the outbox sends the lead, then the sale."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    worker = workers(rate_limit_per_minute=1)
    assert worker.ledger is not None
    send(worker, engine, [signup("before", userId="u-other")])  # the minute's one call
    events = [signup("q-lead", userId="u-q"), order("q-sale") | {"userId": "u-q"}]
    assert [r.outcome for r in send(worker, engine, events)] == ["queued", "queued"]
    assert len(dub.calls) == 1
    outbox = Outbox(worker.ledger, worker, after_seconds=4 * 3600, clock=clock)
    clock.advance(COUNTED_FOR)
    assert outbox.run_once() == Counter({"delivered": 1})  # the lead; the sale waits for it
    clock.advance(COUNTED_FOR)
    assert outbox.run_once() == Counter({"delivered": 1})
    assert [c.request.url.rsplit("/", 1)[-1] for c in dub.calls] == ["lead", "lead", "sale"]


def test_a_graceful_stop_finishes_the_call_under_way_and_leaves_the_rest(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """Stopping mid-pass: the call under way is finished and recorded, no further call starts,
    and the rows left stay queued (not held) for the next instance's sender."""
    worker = workers(rate_limit_per_minute=3, concurrency=1)
    assert worker.ledger is not None
    outbox = Outbox(worker.ledger, worker, after_seconds=4 * 3600, clock=clock, batch=3)
    armed: list[bool] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        if armed:
            outbox.stop()  # SIGTERM arrives while this call is under way
        return 200, {}, json.dumps(sale_ok())

    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=answer)
    send(worker, engine, sales(3, "first"))
    assert {r.outcome for r in send(worker, engine, sales(3, "left"))} == {"queued"}
    clock.advance(COUNTED_FOR)  # room for all three
    armed.append(True)
    assert outbox.drain() == Counter({"delivered": 1, "queued": 2})
    assert worker.ledger.queue_status().depth == 2
    assert worker.ledger.counts() == {State.DELIVERED: 4, State.PENDING: 2}
    nxt = workers(rate_limit_per_minute=100)
    assert nxt.ledger is not None
    after = Outbox(nxt.ledger, nxt, after_seconds=4 * 3600, clock=clock)
    assert after.drain() == Counter({"delivered": 2})
    assert invoices(dub) == Counter(
        {f"o-{e['messageId']}": 1 for e in sales(3, "first") + sales(3, "left")}
    )


def test_events_a_burst_leaves_unsent_at_the_budget_are_queued(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """A batch whose calls outlast the request's budget: the events no call was started for
    are queued (200), not handed back to Segment; not queueing, they are pending (503)."""

    def slow(request: Any) -> tuple[int, dict[str, str], str]:
        clock.advance(1.0)  # each call takes a second
        return 200, {}, json.dumps(sale_ok())

    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=slow)
    queueing = workers(concurrency=1)
    outcomes = Counter(r.outcome for r in send(queueing, engine, sales(3, "slow"), budget=1.5))
    assert outcomes == Counter({"delivered": 2, "queued": 1})
    assert queueing.ledger is not None and queueing.ledger.queue_status().depth == 1
    old = workers(concurrency=1, queue_when_limited=False)
    outcomes = Counter(r.outcome for r in send(old, engine, sales(3, "old"), budget=1.5))
    assert outcomes == Counter({"delivered": 2, "pending": 1})


def test_a_sale_whose_lead_is_queued_waits_in_the_queue_behind_it(
    workers: Callable[..., Deliverer], engine: Engine, dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:  # fmt: skip
    """A sale arriving while its customer's lead waits in the queue, which Dub answers
    `sale: null` (it knows no such customer yet), is queued behind the lead (200), not handed
    back to Segment; the outbox sends the lead, then the sale."""
    not_yet = {"eventName": "Purchase", "customer": None, "sale": None}
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", json=not_yet)
    worker = workers(rate_limit_per_minute=1)
    assert worker.ledger is not None
    send(worker, engine, [signup("first", userId="u-other")])  # the minute's one call
    assert [r.outcome for r in send(worker, engine, [signup("l", userId="u-l")])] == ["queued"]
    clock.advance(COUNTED_FOR)  # a slot is free; the lead is still in the queue
    (sale,) = send(worker, engine, [order("s") | {"userId": "u-l"}])
    assert sale.outcome == "queued" and "behind the lead" in (sale.reason or "")
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    outbox = Outbox(worker.ledger, worker, after_seconds=4 * 3600, clock=clock)
    clock.advance(COUNTED_FOR)
    assert outbox.run_once() == Counter({"delivered": 1})  # the lead
    clock.advance(COUNTED_FOR)
    assert outbox.run_once() == Counter({"delivered": 1})  # then the sale
    assert [c.request.url.rsplit("/", 1)[-1] for c in dub.calls] == [
        "lead", "sale", "lead", "sale"
    ]  # fmt: skip


@pytest.mark.parametrize("old_state", [State.DELIVERED, State.PENDING])
def test_housekeeping_leaves_a_row_another_instance_took_while_it_waited(
    pg_url: str, clock: ManualClock, old_state: State
) -> None:
    """A prune (a settled row) or a give-up (an unsettled one) that picked a row, then waited
    for its lock while another instance claimed it, sees the row as it now is and leaves it:
    the claim's row is neither deleted nor given up under it."""
    ledger = PostgresLedger(pg_url, clock=clock)
    ledger.upgrade()
    try:
        ledger.claim_many([ClaimRequest("r1", "sale", "sale", "Order Completed", "u", {"a": 1})])
        ledger.finish("r1", "sale", old_state)
        clock.advance(100)
        other = psycopg.connect(pg_url)  # the other instance, its claim not committed yet
        other.execute(
            "UPDATE deliveries SET state = 'in_flight', lease_until = %s, updated_at = %s"
            " WHERE message_id = 'r1'",
            (clock.time() + 30, clock.time()),
        )
        swept: dict[str, int] = {}
        retention = Retention(give_up_after=50, settled=50, dead=1e6)
        sweeper = threading.Thread(target=lambda: swept.update(ledger.sweep(retention)))
        sweeper.start()
        # The sweep's statement is waiting for the row's lock (no sleep: the server says so).
        with psycopg.connect(pg_url, autocommit=True) as watch:
            give_up = time.monotonic() + 30
            while not watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query ~ '^\\s*(DELETE FROM|UPDATE) deliveries'"
            ).fetchone():
                assert time.monotonic() < give_up, "the sweep never waited for the row"
        other.commit()
        other.close()
        sweeper.join(timeout=30)
        assert not sweeper.is_alive()
        row = ledger.get("r1", "sale")
        assert row is not None and row.state == State.IN_FLIGHT
        assert swept == {"gave_up": 0, "pruned": 0}
    finally:
        ledger.close()

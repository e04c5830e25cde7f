"""Several workers, one ledger: the shared rate limit, attempts that count calls, the outbox,
and Segment's retries of a batch far bigger than the rate limit. Run against SQLite (the
workers of one machine) and PostgreSQL (every instance) alike; Dub is mocked at HTTP."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from bridge.core.inputs import Item
from bridge.core.outcomes import State
from bridge.core.settings import Settings
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.outbox import Outbox
from bridge.delivery.retry import RetryPolicy
from bridge.ledger import open_ledger
from bridge.ledger.base import COUNTED_FOR, ClaimRequest, Ledger
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
    """Dub's 429 with its millisecond Retry-After stops every worker until then, not only the
    one that got it; neither counts the waiting as an attempt."""
    until_ms = int((clock.time() + 30) * 1000)
    dub.post(
        f"{DUB}/track/sale",
        status=429,
        json={"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
        headers={"Retry-After": str(until_ms)},
    )
    first, second = workers(), workers()
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
    """One batch of 1,500 sales posted 21 times, as Segment retries, against a limit of
    1,200/min: the rate-limited claims are no attempts, so no sale is given up; each reaches
    Dub exactly once, and Segment gets 503 until every one is settled."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    app = create_app(shared_settings(max_attempts=20), clock=clock)
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
    request, leads first; failures wait longer each time; one worker sweeps at a time."""
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
    clock.advance(4 * 3600 + 1)
    other = workers().ledger
    assert other is not None
    with other.exclusive("outbox"):  # another worker is sweeping
        assert outbox.run_once() == Counter()
    assert len(dub.calls) == calls_by_segment
    counts = outbox.run_once()
    assert sum(counts.values()) == 2 and set(counts) <= {"queued", "pending"}
    assert outbox.run_once() == Counter()  # backed off: not due yet
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    dub.replace(responses.POST, f"{DUB}/track/lead", json=lead_ok())
    clock.advance(3600)
    tried = len(dub.calls)
    assert outbox.run_once() == Counter({"delivered": 2})
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

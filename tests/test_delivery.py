"""Sending: retries within the budget, Retry-After, Dub's lead trap, ledger idempotency, order."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.errors import LedgerError
from bridge.core.inputs import Item
from bridge.core.outcomes import State
from bridge.core.results import Result
from bridge.core.settings import Settings
from bridge.delivery.deliverer import _SECRET_WORDS, Deliverer, answer_text
from bridge.delivery.ratelimit import SlidingWindow
from bridge.delivery.retry import RetryPolicy
from bridge.dub.client import DubAnswer, DubClient
from bridge.ledger import open_ledger
from bridge.ledger.base import ClaimRequest, Ledger
from bridge.mapping.batch import plan_all
from bridge.mapping.engine import Engine
from tests.conftest import DUB, lead_ok, order, sale_ok, signup
from tests.helpers.fakes import ManualClock


def sqlite_ledger(tmp_path: Path, clock: ManualClock) -> Ledger:
    ledger = open_ledger(Settings.from_env({}, db_path=tmp_path / "l.db"), clock=clock)
    assert ledger is not None
    return ledger


@pytest.fixture
def ledger(tmp_path: Path, clock: ManualClock) -> Iterator[Ledger]:
    ledger = sqlite_ledger(tmp_path, clock)
    yield ledger
    ledger.close()


def make_deliverer(ledger: Ledger | None, clock: ManualClock, per_minute: int = 1200) -> Deliverer:
    return Deliverer(
        DubClient(DUB, "k"),
        ledger,
        limiter=SlidingWindow(per_minute, clock=clock),
        policy=RetryPolicy(rng=random.Random(7)),
        clock=clock,
        concurrency=4,
    )


@pytest.fixture
def deliverer(ledger: Ledger, clock: ManualClock) -> Iterator[Deliverer]:
    d = make_deliverer(ledger, clock)
    yield d
    d.close()


def send(
    deliverer: Deliverer, engine: Engine, events: list[Any], budget: float = 2.0
) -> list[Result]:
    results, payloads = plan_all(engine, [Item(e) for e in events])
    return deliverer.deliver(results, budget, payloads)


def err(code: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": code}}


def test_500_then_200_is_delivered_once(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A transient 500 is retried within the budget and ends delivered."""
    dub.post(f"{DUB}/track/sale", status=500, json=err("internal_server_error"))
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    (result,) = send(deliverer, engine, [order()])
    assert (result.outcome, result.attempts, len(dub.calls)) == ("delivered", 2, 2)


@pytest.mark.parametrize("status", [400, 401, 403, 422])
def test_final_errors_are_not_retried(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock, status: int
) -> None:
    """400, 401, 403 and 422 are never retried; the row is a dead letter with Dub's error."""
    dub.post(f"{DUB}/track/sale", status=status, json=err("bad"))
    (result,) = send(deliverer, engine, [order()])
    assert (result.outcome, len(dub.calls)) == ("rejected", 1)
    assert result.dub_error == {"code": "bad", "message": "bad"}
    assert [r.state for r in deliverer.ledger.dead_letters()] == ["rejected"]  # type: ignore[union-attr]


def test_lead_404_is_not_retried(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A lead answered 404 is not retried: Dub would swallow the retry."""
    dub.post(f"{DUB}/track/lead", status=404, json=err("not_found"))
    (result,) = send(deliverer, engine, [signup()])
    assert (result.outcome, len(dub.calls)) == ("rejected", 1)


def test_lead_trap_is_uncertain(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A lead that got a 500 and then link: null is 'uncertain', a dead letter, never delivered."""
    dub.post(f"{DUB}/track/lead", status=500, json=err("internal_server_error"))
    dub.post(f"{DUB}/track/lead", json=lead_ok() | {"link": None})
    (result,) = send(deliverer, engine, [signup()])
    assert result.outcome == "uncertain"
    assert [r.state for r in deliverer.ledger.dead_letters()] == ["uncertain"]  # type: ignore[union-attr]


def test_lead_trap_across_segment_retries(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A lead whose 5xx came on an earlier request is still uncertain when link: null comes later."""
    dub.post(f"{DUB}/track/lead", status=503, json=err("x"), headers={"Retry-After": "60"})
    (first,) = send(deliverer, engine, [signup()])
    assert first.outcome == "failed"
    dub.replace(responses.POST, f"{DUB}/track/lead", json=lead_ok() | {"link": None})
    (second,) = send(deliverer, engine, [signup()])
    assert second.outcome == "uncertain"


def test_plain_duplicate_lead_is_deduplicated(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """Without an earlier failure, link: null is Dub's de-duplication: 'deduplicated'."""
    dub.post(f"{DUB}/track/lead", json=lead_ok() | {"link": None})
    (result,) = send(deliverer, engine, [signup()])
    assert result.outcome == "deduplicated"


def test_sale_404_soon_after_lead_is_retried_later(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A sale 404 'Lead event not found' minutes after the customer's lead is transient."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", status=404, json=err("not_found"))
    lead, sale = send(deliverer, engine, [signup(), order()])
    assert (lead.outcome, sale.outcome) == ("delivered", "failed")
    row = deliverer.ledger.get("m-1", "order-sale")  # type: ignore[union-attr]
    assert row is not None and row.state == "pending"


def test_sale_404_without_a_lead_is_rejected(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A sale 404 with no recent lead of that customer is a dead letter at once."""
    dub.post(f"{DUB}/track/sale", status=404, json=err("not_found"))
    (result,) = send(deliverer, engine, [order()])
    assert result.outcome == "rejected"


def test_millisecond_retry_after_is_honoured(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A 429 whose ms Retry-After is 0.3 s ahead is waited out, then delivered."""
    at = str(int((clock.time() + 0.3) * 1000))
    dub.post(
        f"{DUB}/track/sale",
        status=429,
        json=err("rate_limit_exceeded"),
        headers={"Retry-After": at},
    )
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    (result,) = send(deliverer, engine, [order()])
    assert result.outcome == "delivered"
    assert clock.slept == [pytest.approx(0.3)]


def test_retry_after_past_the_budget_ends_at_once(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A Retry-After longer than the budget ends the attempt at once, pending for Segment."""
    at = str(int((clock.time() + 120) * 1000))
    dub.post(
        f"{DUB}/track/sale",
        status=429,
        json=err("rate_limit_exceeded"),
        headers={"Retry-After": at},
    )
    (result,) = send(deliverer, engine, [order()])
    assert clock.slept == []  # no waiting at all
    assert result.outcome == "failed" and result.retry_after and result.retry_after > 100
    assert deliverer.ledger.get("m-1", "order-sale").state == "pending"  # type: ignore[union-attr]


def test_redelivery_is_a_duplicate(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """The same messageId delivered once is answered 'duplicate' and not sent again."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    send(deliverer, engine, [order()])
    (again,) = send(deliverer, engine, [order()])
    assert again.outcome == "duplicate" and len(dub.calls) == 1


def test_batch_retry_sends_only_what_failed(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """On Segment's retry of a batch, events already delivered are not sent again."""

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        invoice = json.loads(request.body)["invoiceId"]
        if invoice == "o-b" and not answer.failed:  # type: ignore[attr-defined]
            answer.failed = True  # type: ignore[attr-defined]
            return 503, {"Retry-After": "60"}, json.dumps(err("x"))
        return 200, {}, json.dumps(sale_ok())

    answer.failed = False  # type: ignore[attr-defined]
    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=answer)
    events = [order("a") | {"userId": "u1"}, order("b") | {"userId": "u2"}]
    first = send(deliverer, engine, events)
    assert [r.outcome for r in first] == ["delivered", "failed"]
    second = send(deliverer, engine, events)
    assert [r.outcome for r in second] == ["duplicate", "delivered"]
    assert len(dub.calls) == 3


def test_leads_go_before_sales_of_the_same_customer(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """Within a batch, a customer's lead is sent before that customer's sale."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    send(deliverer, engine, [signup(), order()])
    assert [c.request.url.rsplit("/", 1)[-1] for c in dub.calls] == ["lead", "sale"]


def test_without_ledger_it_still_sends(
    engine: Engine, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """With the ledger off (benchmarks), delivery works but a redelivery is sent again."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    d = make_deliverer(None, clock)
    try:
        assert [r.outcome for r in send(d, engine, [order()])] == ["delivered"]
        assert [r.outcome for r in send(d, engine, [order()])] == ["delivered"]
        assert len(dub.calls) == 2
    finally:
        d.close()


def test_unreachable_dub_ends_in_budget(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Connection errors are retried with backoff until the budget, then pending."""
    dub.post(f"{DUB}/track/sale", body=requests.ConnectionError("refused"))
    (result,) = send(deliverer, engine, [order()], budget=1.0)
    assert result.outcome == "failed" and result.attempts >= 2
    assert len(dub.calls) == result.attempts
    assert 0 < sum(clock.slept) <= 1.0 - 0.25  # backoff within the budget, room for a call


def test_rate_limiter_sliding_window(clock: ManualClock) -> None:
    """Bursts up to the limit pass at once; the next waits for the window or gives up."""
    limiter = SlidingWindow(3, window=0.3, clock=clock)
    now = clock.monotonic()
    assert all(limiter.acquire(now + 1).granted for _ in range(3))
    assert clock.slept == []
    refused = limiter.acquire(clock.monotonic() + 0.05)
    assert not refused.granted and refused.wait == pytest.approx(0.3)  # none frees in time
    assert clock.slept == []  # refused at once, without waiting in vain
    started = clock.monotonic()
    assert limiter.acquire(clock.monotonic() + 1).granted
    assert clock.monotonic() - started == pytest.approx(0.3)


def test_unsent_claims_are_released(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A claim not used before the budget ran out is given back, so a retry can take it at once."""
    (result,) = send(deliverer, engine, [order()], budget=0.1)
    assert result.outcome == "pending"
    assert len(dub.calls) == 0
    row = deliverer.ledger.get("m-1", "order-sale")  # type: ignore[union-attr]
    assert row is not None
    assert row.state == "pending"
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    (again,) = send(deliverer, engine, [order()])
    assert again.outcome == "delivered"


def test_batch_claims_in_one_transaction(tmp_path: Path, clock: ManualClock) -> None:
    """claim_many grants new rows and refuses rows already taken, in order."""
    ledger = sqlite_ledger(tmp_path, clock)
    wanted = [ClaimRequest(f"m{i}", "sale", "sale", "E", f"u{i}", {"a": i}) for i in range(3)]
    assert [c.granted for c in ledger.claim_many(wanted)] == [True, True, True]
    assert [c.granted for c in ledger.claim_many([*wanted, wanted[0]])] == [False] * 4


_KEYS = st.one_of(
    st.sampled_from(["sale", "apiToken", "client_SECRET", "Authorization", "tok", "en", "x"]),
    st.text(st.characters(codec="utf-8"), max_size=12),
)
_ANSWERS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


def _walked(value: Any) -> Any:
    """The rule itself, key by key: a value under a secret-looking key is hidden."""
    if isinstance(value, dict):
        return {k: "[hidden]" if any(w in str(k).lower() for w in _SECRET_WORDS) else _walked(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [_walked(v) for v in value]
    return value


@given(_ANSWERS)
def test_an_answer_is_kept_with_every_secret_looking_key_hidden(body: Any) -> None:
    """answer_text hides the value of every key holding a secret word, whatever the answer's
    shape (its shortcut, for a text holding no such word, changes nothing)."""
    kept = answer_text(DubAnswer(200, body))
    if body is None:  # no body and no error: nothing to keep
        assert kept is None
    else:
        assert kept is not None and json.loads(kept) == _walked(body)


def test_each_call_and_dubs_answer_are_kept_with_the_row(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock, ledger: Ledger
) -> None:
    """Every call of a delivery is kept: time, status, Dub's answer (a secret-looking value
    hidden), the Retry-After applied; numbered in the order made."""
    dub.post(f"{DUB}/track/sale", status=503, json=err("unavailable"),
             headers={"Retry-After": "0.5"})  # fmt: skip
    dub.post(f"{DUB}/track/sale", json=sale_ok() | {"apiToken": "tok-123"})
    (result,) = send(deliverer, engine, [order("a-1")])
    assert result.outcome == "delivered"
    first, second = ledger.attempts_of("a-1")
    assert (first.number, first.status, first.retry_after, first.method, first.path) == (
        1, 503, 0.5, "POST", "/track/sale",
    )  # fmt: skip
    assert json.loads(first.answer or "") == err("unavailable")
    assert (second.number, second.status, second.retry_after) == (2, 200, None)
    kept = json.loads(second.answer or "")
    assert kept["apiToken"] == "[hidden]" and kept["sale"]["amount"] == 1999
    assert "tok-123" not in (second.answer or "")


def test_the_outbox_sender_keeps_its_calls_too(
    deliverer: Deliverer, dub: responses.RequestsMock, ledger: Ledger
) -> None:
    """A row the outbox takes from its queue and sends keeps that call, numbered after the
    calls made for it before."""
    body = {"customerExternalId": "u", "eventName": "Purchase", "amount": 1999}
    ledger.claim_many([ClaimRequest("q-1", "order-sale", "sale", "Order Completed", "u", body)])
    ledger.finish("q-1", "order-sale", State.PENDING, calls=1, status=429, queued=True)
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    taken = ledger.take(first_seen_before=0.0, limit=10, lease=30.0)
    (result,) = deliverer.send_taken(taken, 2.0)
    assert result.outcome == "delivered"
    (call,) = ledger.attempts_of("q-1")
    assert (call.number, call.status, call.path) == (2, 200, "/track/sale")


def test_a_requests_finishes_are_one_statement(
    deliverer: Deliverer,
    engine: Engine,
    dub: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever threads send a request's calls, what they came to is written once, in one
    finish_many (one statement), never row by row."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    ledger = deliverer.ledger
    assert ledger is not None
    batches: list[int] = []
    real = ledger.finish_many

    def spy(finishes: Any) -> list[bool]:
        batches.append(len(finishes))
        return real(finishes)

    monkeypatch.setattr(ledger, "finish_many", spy)
    monkeypatch.setattr(ledger, "finish", lambda *a, **k: pytest.fail("a finish of its own"))
    events = [signup(), order("m-0")] + [order(f"m-{i}") | {"userId": f"u{i}"} for i in (1, 2, 3)]
    results = send(deliverer, engine, events)
    assert [r.outcome for r in results] == ["delivered"] * 5
    assert batches == [5]
    assert {ledger.get(f"m-{i}", "order-sale").state for i in range(4)} == {"delivered"}  # type: ignore[union-attr]


def test_a_batch_the_ledger_cannot_record_is_answered_pending(
    deliverer: Deliverer,
    engine: Engine,
    dub: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the one statement of a request's finishes fails, every row it held is answered
    pending ("sent, but not recorded"): its claim holds until the lease ends, so a retry
    meanwhile sends nothing twice."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    ledger = deliverer.ledger
    assert ledger is not None

    def broken(finishes: Any) -> list[bool]:
        raise LedgerError("disk full")

    monkeypatch.setattr(ledger, "finish_many", broken)
    events = [order(f"m-{i}") | {"userId": f"u{i}"} for i in range(3)]
    results = send(deliverer, engine, events)
    assert [r.outcome for r in results] == ["pending"] * 3
    assert all("sent, but not recorded: disk full" in (r.reason or "") for r in results)
    monkeypatch.undo()
    again = send(deliverer, engine, events)
    assert [r.outcome for r in again] == ["pending"] * 3  # still claimed: not sent again
    assert len(dub.calls) == 3


def test_a_sale_reads_the_lead_sent_just_before_it(
    deliverer: Deliverer, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A sale Dub answered sale: null right after its customer's lead, in the same request,
    finds that lead recorded (its finish is written before the ledger is read): not
    recorded, final, rather than a retry waiting for a lead already delivered."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", json={"eventName": "Purchase", "customer": None, "sale": None})
    lead, sale = send(deliverer, engine, [signup(), order()])
    assert (lead.outcome, sale.outcome) == ("delivered", "not_recorded")

"""Fault tests of the delivery guarantees, against a real fake Dub over loopback: Dub down,
slow, failing, rate-limiting, resetting connections; concurrent redeliveries; a SIGKILL of the
Procfile's gunicorn mid-batch.

Every scenario ends the same way: after Segment-style retries (re-POST the same body while
the bridge answers 503), the fake Dub has RECORDED each conversion exactly once, nothing is
lost, and the ledger holds no row in a non-final state (pending / in_flight). Where the
fake may have RECEIVED a conversion more than once (its de-duplication absorbed it), the
test says which count it asserts. They run in real time (a real server, real socket
timeouts) but in this process, so they are in the fast tier; the SIGKILL of real gunicorn
processes is ``slow``. None asserts how long anything took.

``FIGURES`` collects the batch figures (test 6 and the kill test); ``pytest -s`` prints them.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.core.outcomes import FINAL, State
from bridge.ledger.sqlite import SQLiteLedger
from tests.helpers.fakedub import FakeDub, Hold, Key, Reset, Status
from tests.helpers.fakes import ManualClock
from tests.helpers.faultkit import (
    FIGURES,
    LEAD_MAPPING,
    MAPPINGS,
    SALE_MAPPING,
    Answer,
    Bridge,
    assert_recorded_once,
    assert_settled,
    key_for,
    lead_event,
    mixed_batch,
    sale_event,
    segment_retry,
)
from tests.helpers.procs import ProcfileWeb, clean_env


def test_dub_down_then_up(fake_dub: FakeDub, bridge: Callable[..., Bridge]) -> None:
    """Dub down: 503 + Retry-After in the budget; once Dub is up, the retry delivers each once."""
    fake_dub.stop()  # the port is closed: connection refused
    b = bridge(deadline_seconds=1.0)
    events = [sale_event("down1"), lead_event("down2")]

    first = b.post(events)
    assert first.status == 503
    assert first.body["error"]["code"] == "dub_unavailable"
    assert int(first.headers["Retry-After"]) >= 1
    assert set(first.outcomes()) <= {"failed", "pending"}
    assert fake_dub.received_count() == 0
    assert b.state("msg-sale-down1", SALE_MAPPING) == "pending"

    fake_dub.start()  # same port
    answers = b.deliver(events)
    assert answers[-1].status == 200, answers[-1].body
    assert answers[-1].outcomes() == ["delivered", "delivered"]
    assert_recorded_once(fake_dub, {key_for(e) for e in events})
    assert fake_dub.received_count() == 2  # nothing reached Dub while it was down
    assert assert_settled(b.db) == {"delivered": 2}


# --- 2. Dub slower than the budget -------------------------------------------------------------


def test_slow_dub_answers_within_budget_and_finishes_in_background(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """Dub slower than the budget: 503 while Dub still holds the calls, which end later and are
    recorded; Segment's retry is `duplicate`."""
    b = bridge(deadline_seconds=1.0)
    events = [sale_event("slow1"), lead_event("slow2")]
    gate = threading.Event()
    for event in events:
        fake_dub.script(key_for(event), Hold(gate))

    first = b.post(events)
    gate.set()  # Dub answers only now, after the bridge did
    assert first.status == 503
    assert "Retry-After" in first.headers
    assert first.outcomes() == ["pending", "pending"]

    # The calls complete after the answer was sent, and the ledger gets their outcome.
    def both_delivered() -> bool:
        return (
            b.state("msg-sale-slow1", SALE_MAPPING) == "delivered"
            and b.state("msg-lead-slow2", LEAD_MAPPING) == "delivered"
        )

    assert fake_dub.wait_until(both_delivered, timeout=5), b.ledger().counts()

    answers = b.deliver(events)
    assert answers[-1].status == 200
    assert answers[-1].outcomes() == ["duplicate", "duplicate"]
    # RECEIVED once each: the retry made no second call.
    assert fake_dub.received_by_key() == Counter({key_for(e): 1 for e in events})
    assert_recorded_once(fake_dub, {key_for(e) for e in events})
    assert assert_settled(b.db) == {"delivered": 2}


def test_single_call_sent_inline_still_answers_within_budget(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """A lone call sent from the request thread ends by its timeouts, inside the budget."""
    b = bridge(deadline_seconds=1.0, connect_timeout=0.2, read_timeout=0.5)  # 0.7 s fits: inline
    event = sale_event("inline-slow")
    gate = threading.Event()
    fake_dub.script(key_for(event), Hold(gate))
    first = b.post([event])
    gate.set()  # Dub would have answered only now: the read timed out first
    assert first.status == 503
    assert first.outcomes() == ["failed"]
    # Segment's retry sends it again; Dub's invoiceId de-duplication keeps one sale.
    answers = b.deliver([event])
    assert answers[-1].status == 200
    assert_recorded_once(fake_dub, {key_for(event)})
    assert_settled(b.db)


# --- 3. 500 then 200; the lead trap --------------------------------------------------------------


def test_500_then_200_is_retried_within_the_budget(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """A 500 then a 200 is retried with backoff within one request's budget: delivered once."""
    b = bridge(deadline_seconds=2.0)
    event = sale_event("flaky")
    fake_dub.script(key_for(event), Status(500))

    answer = b.post([event])
    assert answer.status == 200, answer.body
    assert answer.outcomes() == ["delivered"]
    assert fake_dub.received_count(key_for(event)) == 2  # the 500 and the retry
    assert_recorded_once(fake_dub, {key_for(event)})
    assert assert_settled(b.db) == {"delivered": 1}


def test_lead_500_then_swallowed_retry_is_uncertain(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """A lead's 500 then a swallowed retry (link: null) is `uncertain`, never `delivered`."""
    b = bridge(deadline_seconds=2.0)
    event = lead_event("trap")
    key = key_for(event)
    fake_dub.script(key, Status(500, marks_lead=True))  # Dub set its de-dup marker, then failed

    answer = b.post([event])
    assert answer.status == 200  # a dead letter is not Segment's to retry
    assert answer.outcomes() == ["uncertain"]
    dead = b.ledger().dead_letters()
    assert [(r.message_id, r.state) for r in dead] == [("msg-lead-trap", "uncertain")]
    assert fake_dub.received_count(key) == 2
    assert fake_dub.recorded_count(key) == 0  # Dub really lost it: only the dead letter says so

    # Segment redelivers: no third call, answered as the dead letter it is (only a final row
    # is a duplicate), and no 503 (only a redrive sends it again).
    again = b.deliver([event])
    assert [(a.status, a.outcomes()) for a in again] == [(200, ["uncertain"])]
    assert fake_dub.received_count(key) == 2
    assert b.state("msg-lead-trap", LEAD_MAPPING) == "uncertain"
    assert assert_settled(b.db) == {"uncertain": 1}


# --- 4. 429 with a millisecond Retry-After -------------------------------------------------------


def test_429_with_near_retry_after_is_honoured(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """A 429 with a millisecond Retry-After 0.4 s ahead is waited out, then delivered."""
    b = bridge(deadline_seconds=2.0)
    event = sale_event("limited")
    key = key_for(event)
    fake_dub.script(key, Status(429, retry_after_in=0.4))

    answer = b.post([event])
    assert answer.status == 200, answer.body
    assert answer.outcomes() == ["delivered"]
    first, second = fake_dub.requests_for(key)
    assert first.action == "status:429"
    # Waited for the date Dub gave (ms rounding and scheduling allow a few ms less).
    assert second.at - first.at >= 0.35, second.at - first.at
    assert_recorded_once(fake_dub, {key})
    assert assert_settled(b.db) == {"delivered": 1}


def test_429_with_far_retry_after_ends_the_attempt_at_once(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """Not queueing: a 429 with a millisecond Retry-After 2 min ahead ends the attempt at once
    (503 with that Retry-After) and pauses every worker; Segment's retry after the pause is
    delivered once."""
    clock = ManualClock(start=time.time())  # wall time, as the fake Dub's Retry-After is
    b = bridge(deadline_seconds=2.0, clock=clock, queue_when_limited=False)
    event = sale_event("limited-far")
    key = key_for(event)
    fake_dub.script(key, Status(429, retry_after_in=120))

    answer = b.post([event])
    assert answer.status == 503
    assert not any(wait >= 1 for wait in clock.slept), clock.slept  # gave up, did not wait
    # Read as milliseconds since the epoch, not as seconds: about 120 s.
    assert 100 <= int(answer.headers["Retry-After"]) <= 121
    assert answer.outcomes() == ["failed"]
    assert fake_dub.received_count(key) == 1
    assert b.post([event]).status == 503  # paused: not even tried
    assert fake_dub.received_count(key) == 1

    clock.advance(121)  # Segment comes back after the pause; Dub has room
    answers = b.deliver([event])
    assert answers[-1].status == 200
    assert answers[-1].outcomes() == ["delivered"]
    assert_recorded_once(fake_dub, {key})
    assert assert_settled(b.db) == {"delivered": 1}


# --- 5. Connection reset mid-response ------------------------------------------------------------


def test_connection_reset_mid_response_is_transient(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """A connection reset mid-answer is transient: redelivery RECORDS each conversion once."""
    b = bridge(deadline_seconds=2.0)
    done = sale_event("reset-done")  # Dub recorded it, the answer was lost
    undone = sale_event("reset-undone")  # the reset came before Dub did anything
    lead = lead_event("reset-lead")  # a lead recorded, answer lost: the retry gets link: null
    fake_dub.script(key_for(done), Reset(after_processing=True))
    fake_dub.script(key_for(undone), Reset(after_processing=False))
    fake_dub.script(key_for(lead), Reset(after_processing=True))
    events = [done, undone, lead]

    answers = b.deliver(events)
    assert answers[-1].status == 200, answers[-1].body
    assert b.state("msg-sale-reset-done", SALE_MAPPING) == "delivered"  # invoiceId de-dup
    assert b.state("msg-sale-reset-undone", SALE_MAPPING) == "delivered"
    lead_state = b.state("msg-lead-reset-lead", LEAD_MAPPING)
    assert lead_state in ("deduplicated", "uncertain")  # never lost silently
    # RECEIVED twice each (reset + retry); what matters is RECORDED once each.
    assert fake_dub.received_by_key() == Counter({key_for(e): 2 for e in events})
    assert_recorded_once(fake_dub, {key_for(e) for e in events})
    assert_settled(b.db)


def test_lead_reset_after_dub_set_its_marker_is_not_taken_as_deduplicated(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """A lead reset after Dub set its de-dup marker must not end as a successful `deduplicated`."""
    b = bridge(deadline_seconds=2.0)
    event = lead_event("reset-trap")
    key = key_for(event)
    fake_dub.script(key, Reset(after_processing=False, marks_lead=True))

    answers = b.deliver([event])
    assert fake_dub.recorded_count(key) == 0  # Dub lost it
    assert answers[-1].outcomes() == ["uncertain"]  # so it must be a dead letter


# --- ordering: a sale must not overtake its customer's unsettled lead -------------------------


def test_sale_is_held_while_its_customers_lead_is_unsettled(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """Not queueing: a sale waits for its customer's unsettled lead instead of being answered
    `sale: null`."""
    clock = ManualClock(start=time.time())  # wall time, as the fake Dub's Retry-After is
    b = bridge(deadline_seconds=2.0, clock=clock, queue_when_limited=False)
    lead = lead_event("order1", user="user-order1")
    sale = sale_event("order1", user="user-order1", click=False)  # needs the lead's customer
    # A far Retry-After ends the lead's attempt at once, leaving budget for the sale.
    fake_dub.script(key_for(lead), Status(429, retry_after_in=60))

    first = b.post([lead, sale])
    assert first.status == 503
    assert first.outcomes() == ["failed", "pending"]
    clock.advance(61)  # Segment retries after Dub's pause
    answers = b.deliver([lead, sale])
    assert answers[-1].status == 200
    assert [r.action for r in fake_dub.requests_for(key_for(sale))] == ["recorded"]  # no sale: null
    assert_recorded_once(fake_dub, {key_for(lead), key_for(sale)})
    assert assert_settled(b.db) == {"delivered": 2}


# --- 6. A batch of 100 with every third call failing once --------------------------------------


def test_batch_of_100_with_every_third_call_failing_once(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """100 events, every third Dub call failing once (500): each recorded once, none lost."""
    b = bridge(deadline_seconds=2.0)
    events = mixed_batch(100, "b")
    keys = {key_for(e) for e in events}
    assert len(keys) == 100
    # Every third conversion's first call fails: chosen by event, not by arrival order, so
    # the figures do not depend on how the calls interleave.
    doomed = {key_for(e) for e in events[2::3]}
    failed_once: set[Key | None] = set()
    lock = threading.Lock()

    def every_third(call: Any) -> Status | None:
        with lock:  # a gateway 500: Dub's handler never ran, no lead marker set
            if call.key in doomed and call.key not in failed_once:
                failed_once.add(call.key)
                return Status(500)
        return None

    fake_dub.plan = every_third
    answers = b.deliver(events, attempts=10)
    assert answers[-1].status == 200, answers[-1].body
    assert set(answers[-1].outcomes()) <= {"delivered", "duplicate"}

    recorded = fake_dub.recorded_by_key()
    figures = {
        "events_sent": len(events),
        "posts_to_bridge": len(answers),
        "requests_received_by_fake": fake_dub.received_count(),
        "failed_once_by_fake": len(failed_once),
        "recorded": sum(recorded.values()),
        "duplicates": sum(n - 1 for n in recorded.values() if n > 1),
        "losses": sum(1 for k in keys if recorded[k] == 0),
    }
    FIGURES["batch_100_every_third_fails"] = figures
    print("\nbatch of 100, every third call fails once:", figures)
    assert figures["failed_once_by_fake"] == len(doomed) == 33
    assert figures["requests_received_by_fake"] == 100 + figures["failed_once_by_fake"]
    assert_recorded_once(fake_dub, keys)
    assert assert_settled(b.db) == {"delivered": 100}


# --- 7. Concurrency: one batch from eight clients at once ---------------------------------------


def test_same_batch_from_8_concurrent_clients_makes_one_call_each(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """One 50-event batch from 8 concurrent clients: one Dub call per conversion, all get 200."""
    fake_dub.latency = 0.01  # long enough for the requests to overlap
    b = bridge(deadline_seconds=2.0)
    events = mixed_batch(50, "c")
    keys = {key_for(e) for e in events}
    barrier = threading.Barrier(8)
    finals: list[Answer] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            barrier.wait(5)
            answers = b.deliver(events, attempts=60, pause=0.05)
            finals.append(answers[-1])
        except BaseException as exc:  # reported below, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert [a.status for a in finals] == [200] * 8
    for answer in finals:
        assert set(answer.outcomes()) <= {"delivered", "duplicate"}
    # RECEIVED exactly once each: the ledger let one request send each conversion.
    assert fake_dub.received_by_key() == Counter({k: 1 for k in keys})
    assert_recorded_once(fake_dub, keys)
    assert assert_settled(b.db) == {"delivered": 50}


# --- 8. SIGKILL gunicorn mid-batch --------------------------------------------------------------


# --- 8. SIGKILL of the Procfile's gunicorn mid-batch -----------------------------------------


def post_over_http(session: requests.Session, url: str, batch: list[dict[str, Any]]) -> Answer:
    started = time.monotonic()
    try:
        response = session.post(url + "/segment", json={"batch": batch}, timeout=15)
    except requests.RequestException as exc:  # Segment retries a dropped connection
        return Answer(599, {"error": {"code": "transport", "message": str(exc)}})
    return Answer(
        response.status_code,
        response.json(),
        dict(response.headers),
        time.monotonic() - started,
    )


@pytest.mark.slow  # real gunicorn processes
def unsettled(db: Path) -> int:
    """Rows still pending or in flight: after every batch got 200, the outbox's queue."""
    ledger = SQLiteLedger(db)
    try:
        counts = ledger.counts()
    finally:
        ledger.close()
    return counts.get(State.PENDING, 0) + counts.get(State.IN_FLIGHT, 0)


def test_sigkill_gunicorn_mid_batch_then_redeliver(tmp_path: Path) -> None:
    """SIGKILL gunicorn mid-batch, restart, redeliver: every conversion RECORDED exactly once."""
    db = tmp_path / "ledger.sqlite3"
    events = mixed_batch(200, "k")
    keys = {key_for(e) for e in events}
    batches = [events[i : i + 20] for i in range(0, len(events), 20)]
    fake = FakeDub(api_key="test-key", latency=lambda: random.uniform(0.02, 0.05)).start()
    env = clean_env(
        DUB_API_KEY="test-key",
        DUB_API_URL=fake.url,
        BRIDGE_DB=str(db),
        BRIDGE_MAPPINGS_DIR=str(MAPPINGS),
        # The lease must outlive the longest call (1 + 0.3 + 0.5 s), as settings enforce.
        BRIDGE_LEASE_SECONDS="2",
        BRIDGE_RELOAD_SECONDS="0",
        BRIDGE_DEADLINE_SECONDS="1",
        DUB_CONNECT_TIMEOUT="0.3",
        DUB_READ_TIMEOUT="0.5",
        BRIDGE_LOG_LEVEL="WARNING",
    )
    service = ProcfileWeb(env, tmp_path)
    posts = Counter[str]()
    stopping = threading.Event()  # set on the way out: client threads stop retrying
    try:
        service.start()

        # Phase 1: the batches go out from 4 clients; gunicorn is killed mid-way.
        first_answers: list[Answer] = []
        pending = list(batches)
        lock = threading.Lock()

        def first_try() -> None:
            with requests.Session() as session:
                while True:
                    with lock:
                        if not pending:
                            return
                        batch = pending.pop(0)
                    answer = post_over_http(session, service.url, batch)
                    with lock:
                        posts["phase1"] += 1
                        first_answers.append(answer)

        clients = [threading.Thread(target=first_try, daemon=True) for _ in range(4)]
        for thread in clients:
            thread.start()
        assert fake.wait_until(lambda: fake.received_count() >= 60, timeout=30, step=0.002)
        service.kill()
        received_at_kill = fake.received_count()
        for thread in clients:
            thread.join(30)
        answered_200 = sum(1 for a in first_answers if a.status == 200)
        time.sleep(0.1)  # the fake finishes the calls the dead workers left behind
        ledger = SQLiteLedger(db)
        in_flight_at_kill = ledger.counts().get(State.IN_FLIGHT, 0)
        ledger.close()
        assert received_at_kill < len(events), "the kill came after the batch was done"
        assert in_flight_at_kill > 0, "the kill interrupted no Dub call"

        # Phase 2: a new gunicorn; Segment redelivers every batch until it gets 200.
        service.start()
        finals: list[Answer] = []
        errors: list[BaseException] = []
        queue = list(batches)

        def redeliver() -> None:
            try:
                with requests.Session() as session:
                    while True:
                        with lock:
                            if not queue:
                                return
                            batch = queue.pop(0)

                        def post(batch: list[dict[str, Any]] = batch) -> Answer:
                            if stopping.is_set():
                                raise RuntimeError("the test is over")
                            with lock:
                                posts["phase2"] += 1
                            return post_over_http(session, service.url, batch)

                        # Rows the dead workers held stay in_flight until their 2 s lease ends.
                        answers = segment_retry(post, attempts=40, pause=0.25)
                        with lock:
                            finals.append(answers[-1])
            except BaseException as exc:
                errors.append(exc)

        clients = [threading.Thread(target=redeliver, daemon=True) for _ in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert not errors, errors
        assert [a.status for a in finals] == [200] * len(batches), [a.body for a in finals]
        # What the answers queued (a batch outrunning its 1 s budget), the sender sends.
        assert fake.wait_until(lambda: not unsettled(db), timeout=60, step=0.1)
    finally:
        stopping.set()
        service.kill()
        fake.stop()

    recorded = fake.recorded_by_key()
    received = fake.received_by_key()
    figures = {
        "events_sent": len(events),
        "posts_before_kill": posts["phase1"],
        "answered_200_before_kill": answered_200,
        "received_at_kill": received_at_kill,
        "in_flight_rows_at_kill": in_flight_at_kill,
        "posts_after_restart": posts["phase2"],
        "requests_received_by_fake": sum(received.values()),
        "conversions_received_twice": sum(1 for n in received.values() if n > 1),
        "recorded": sum(recorded.values()),
        "duplicates": sum(n - 1 for n in recorded.values() if n > 1),
        "losses": sum(1 for k in keys if recorded[k] == 0),
    }
    FIGURES["sigkill_gunicorn"] = figures
    print("\nSIGKILL mid-batch, restart, redeliver:", figures)
    assert_recorded_once(fake, keys)
    counts = assert_settled(db)
    assert set(counts) <= FINAL, counts
    assert sum(counts.values()) == len(events)

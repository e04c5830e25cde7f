"""Fault tests of the delivery guarantees: Dub down, slow, failing, rate-limiting, resetting
connections; concurrent redeliveries; a gunicorn SIGKILL mid-batch; garbage on the webhook.

Every scenario ends the same way: after Segment-style retries (re-POST the same body while
the bridge answers 503), the fake Dub has RECORDED each conversion exactly once, nothing is
lost, and the ledger holds no row in a non-final state (pending / in_flight). Where the
fake may have RECEIVED a conversion more than once (its de-duplication absorbed it), the
test says which count it asserts.

``FIGURES`` collects the batch figures (test 6 and the kill test); ``pytest -s`` prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from bridge.app import create_app
from bridge.ledger import DONE, SQLiteLedger
from bridge.settings import Settings
from tests.fakedub import FakeDub, Key, Reset, Sleep, Status, lead_key, sale_key

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = REPO / "mappings"
NON_FINAL = frozenset({"pending", "in_flight"})
SALE_MAPPING, LEAD_MAPPING = "order-sale", "signup-lead"
FIGURES: dict[str, dict[str, Any]] = {}


# --- events ----------------------------------------------------------------------------------


def sale_event(n: int | str, *, user: str | None = None, click: bool = True) -> dict[str, Any]:
    traits: dict[str, Any] = {"email": f"buyer{n}@example.com", "name": f"Buyer {n}"}
    if click:
        traits["clickId"] = f"cl_s{n}"
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"msg-sale-{n}",
        "userId": user or f"user-s{n}",
        "timestamp": "2026-11-20T14:03:11.512Z",
        "context": {"traits": traits},
        "properties": {"order_id": f"ORD-{n}", "revenue": 19.99, "currency": "USD"},
    }


def lead_event(n: int | str, *, user: str | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Sign Up",
        "messageId": f"msg-lead-{n}",
        "userId": user or f"user-l{n}",
        "timestamp": "2026-11-20T14:00:00.000Z",
        "context": {"traits": {"email": f"lead{n}@example.com", "clickId": f"cl_l{n}"}},
        "properties": {"plan": "pro"},
    }


def key_for(event: dict[str, Any]) -> Key:
    """The conversion an event should become at Dub (how the fake counts it)."""
    if event["event"] == "Order Completed":
        return sale_key(event["properties"]["order_id"])
    return lead_key(str(event["userId"]), event["event"])


def mixed_batch(count: int, prefix: str) -> list[dict[str, Any]]:
    """``count`` events, alternating sales (distinct order ids) and leads, distinct users."""
    return [
        sale_event(f"{prefix}{i}") if i % 2 == 0 else lead_event(f"{prefix}{i}")
        for i in range(count)
    ]


# --- the bridge under test -------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def outcomes(self) -> list[str]:
        """Every (event, mapping) outcome the answer counts, sorted (the answer keeps no order)."""
        counts = self.body.get("counts", {})
        return sorted(outcome for outcome, n in counts.items() for _ in range(n))


def retryable(status: int) -> bool:
    """What Segment retries: 408, 429, 5xx (and timeouts, which a caller maps to 599)."""
    return status in (408, 429) or status >= 500


def segment_retry(
    post: Callable[[], Answer], *, attempts: int = 15, pause: float = 0.05
) -> list[Answer]:
    """Re-send the same request while the answer says retry, at most ``attempts`` times."""
    answers = [post()]
    while retryable(answers[-1].status) and len(answers) < attempts:
        time.sleep(pause)
        answers.append(post())
    return answers


@dataclass
class Bridge:
    app: Flask
    db: Path
    _ledger: SQLiteLedger | None = None  # the test's own connection, closed at teardown

    def post(self, events: Any) -> Answer:
        body = events if isinstance(events, dict) else {"batch": events}
        client = self.app.test_client()
        started = time.monotonic()
        response = client.post("/segment", data=json.dumps(body), content_type="application/json")
        return Answer(
            response.status_code,
            json.loads(response.data),
            dict(response.headers),
            time.monotonic() - started,
        )

    def deliver(self, events: Any, **kwargs: Any) -> list[Answer]:
        return segment_retry(lambda: self.post(events), **kwargs)

    def ledger(self) -> SQLiteLedger:
        if self._ledger is None:
            self._ledger = SQLiteLedger(self.db)
        return self._ledger

    def close(self) -> None:
        state = self.app.extensions["bridge"]
        state.store.stop()
        state.deliverer.close()  # waits for background calls, before the fake goes away
        if self._ledger is not None:
            self._ledger.close()

    def state(self, message_id: str, mapping: str) -> str | None:
        row = self.ledger().get(message_id, mapping)
        return None if row is None else row.state


def fault_settings(url: str, db: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "deadline_seconds": 2.0,
        "log_level": "WARNING",
        **overrides,
    }
    return Settings.from_env(
        {},
        dub_api_key="test-key",
        dub_api_url=url,
        db_path=db,
        mappings_dir=MAPPINGS,
        reload_seconds=0,
        **values,
    )


@pytest.fixture
def fake_dub() -> Iterator[FakeDub]:
    """The fake Dub server, running (a real HTTP server, unlike conftest's `dub` mock)."""
    fake = FakeDub(api_key="test-key").start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def bridge(fake_dub: FakeDub, tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """A factory: ``bridge(deadline_seconds=1.0)`` -> an app pointed at the fake Dub."""
    made: list[Bridge] = []

    def make(**overrides: Any) -> Bridge:
        db = tmp_path / "ledger.sqlite3"
        made.append(Bridge(create_app(fault_settings(fake_dub.url, db, **overrides)), db))
        return made[-1]

    yield make
    for b in made:
        b.close()


def assert_settled(db: Path) -> dict[str, int]:
    """No row of the ledger is left pending or in flight; returns the counts per state."""
    ledger = SQLiteLedger(db)
    try:
        stuck = [(r.message_id, r.mapping, r.state) for r in ledger.all_rows()]
        stuck = [row for row in stuck if row[2] in NON_FINAL]
        assert not stuck, f"rows left in a non-final state: {stuck}"
        return ledger.counts()
    finally:
        ledger.close()


def assert_recorded_once(fake_dub: FakeDub, keys: set[Key]) -> None:
    """Each expected conversion RECORDED exactly once by the fake, and nothing else."""
    recorded = fake_dub.recorded_by_key()
    lost = sorted(k for k in keys if recorded[k] == 0)
    doubled = {k: n for k, n in recorded.items() if n > 1}
    extra = sorted(k for k in recorded if k not in keys)
    assert not lost, f"conversions never recorded: {lost}"
    assert not doubled, f"conversions recorded more than once: {doubled}"
    assert not extra, f"conversions nobody sent: {extra}"


# --- 1. Dub down --------------------------------------------------------------------------------


def test_dub_down_then_up(fake_dub: FakeDub, bridge: Callable[..., Bridge]) -> None:
    """Dub down: 503 + Retry-After in the budget; once Dub is up, the retry delivers each once."""
    fake_dub.stop()  # the port is closed: connection refused
    b = bridge(deadline_seconds=1.0)
    events = [sale_event("down1"), lead_event("down2")]

    first = b.post(events)
    assert first.status == 503
    assert first.body["error"]["code"] == "dub_unavailable"
    assert int(first.headers["Retry-After"]) >= 1
    assert first.seconds < 1.0 + 0.5
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
    """Dub slower than the budget: 503 in time, the call ends later, the retry is `duplicate`."""
    deadline = 1.0
    b = bridge(deadline_seconds=deadline)
    events = [sale_event("slow1"), lead_event("slow2")]
    for event in events:
        fake_dub.script(key_for(event), Sleep(deadline + 0.6))

    first = b.post(events)
    assert first.seconds < deadline + 0.5, f"answered after {first.seconds:.2f}s"
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
    fake_dub.script(key_for(event), Sleep(1.5))
    first = b.post([event])
    assert first.seconds < 1.0, f"answered after {first.seconds:.2f}s"
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

    again = b.deliver([event])  # Segment redelivers: no third call, still uncertain
    assert again[-1].outcomes() == ["duplicate"]
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
    assert answer.seconds < 2.0
    assert_recorded_once(fake_dub, {key})
    assert assert_settled(b.db) == {"delivered": 1}


def test_429_with_far_retry_after_ends_the_attempt_at_once(
    fake_dub: FakeDub, bridge: Callable[..., Bridge]
) -> None:
    """A 429 with a millisecond Retry-After 2 min ahead ends the attempt: 503 + Retry-After."""
    b = bridge(deadline_seconds=2.0)
    event = sale_event("limited-far")
    key = key_for(event)
    fake_dub.script(key, Status(429, retry_after_in=120))

    answer = b.post([event])
    assert answer.status == 503
    assert answer.seconds < 0.75, f"waited {answer.seconds:.2f}s instead of giving up"
    # Read as milliseconds since the epoch, not as seconds: about 120 s.
    assert 100 <= int(answer.headers["Retry-After"]) <= 121
    assert answer.outcomes() == ["failed"]
    assert fake_dub.received_count(key) == 1

    answers = b.deliver([event])  # Segment comes back (later, in real life); Dub has room
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
    """A sale waits for its customer's unsettled lead instead of being answered `sale: null`."""
    b = bridge(deadline_seconds=2.0)
    lead = lead_event("order1", user="user-order1")
    sale = sale_event("order1", user="user-order1", click=False)  # needs the lead's customer
    # A far Retry-After ends the lead's attempt at once, leaving budget for the sale.
    fake_dub.script(key_for(lead), Status(429, retry_after_in=60))

    answers = b.deliver([lead, sale])
    assert answers[0].status == 503
    assert answers[0].outcomes() == ["failed", "pending"]
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
    failed_once: set[Key | None] = set()
    lock = threading.Lock()

    def every_third(call: Any) -> Status | None:
        with lock:  # a gateway 500: Dub's handler never ran, no lead marker set
            if call.index % 3 == 2 and call.key not in failed_once:
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
    assert figures["failed_once_by_fake"] >= 30
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """The service as the Procfile runs it, in its own process group."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.env = env
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        self.runs += 1
        gunicorn = Path(sys.executable).with_name("gunicorn")
        command = [
            str(gunicorn),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            "gthread",
            "--workers",
            "2",
            "--threads",
            "4",
            "--timeout",
            "30",
            "--graceful-timeout",
            "20",
            "--keep-alive",
            "5",
            "bridge.app:create_app()",
        ]
        log = self.workdir / f"gunicorn-{self.runs}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        pytest.fail(f"gunicorn did not come up:\n{log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the master and its workers at once: no graceful anything."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


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


@pytest.mark.slow
def test_sigkill_gunicorn_mid_batch_then_redeliver(tmp_path: Path) -> None:
    """SIGKILL gunicorn mid-batch, restart, redeliver: every conversion RECORDED exactly once."""
    db = tmp_path / "ledger.sqlite3"
    events = mixed_batch(200, "k")
    keys = {key_for(e) for e in events}
    batches = [events[i : i + 20] for i in range(0, len(events), 20)]
    fake = FakeDub(api_key="test-key", latency=lambda: random.uniform(0.02, 0.05)).start()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DUB_", "BRIDGE_", "SEGMENT_", "WEB_CONCURRENCY", "GUNICORN"))
    }
    env.update(
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
    service = Gunicorn(env, tmp_path)
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
        in_flight_at_kill = ledger.counts().get("in_flight", 0)
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
    assert set(counts) <= DONE, counts
    assert sum(counts.values()) == len(events)


# --- 9. Garbage on the webhook ------------------------------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**90),
    st.floats(),  # NaN and Infinity included: json.dumps writes them as bare tokens
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=5),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HUGE_TEXT = st.integers(min_value=5_000, max_value=600_000).map(lambda n: "x" * n)
TEXTISH = st.one_of(st.text(max_size=30), HUGE_TEXT, JSON_VALUE)
NUMBERISH = st.one_of(st.floats(), st.integers(), st.decimals(allow_nan=False).map(str), JSON_VALUE)
PROPERTIES = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "order_id": TEXTISH,
            "revenue": NUMBERISH,
            "total": NUMBERISH,
            "currency": st.one_of(
                st.sampled_from(["USD", "jpy", "KWD", "xx", "", "usdd"]), TEXTISH
            ),
            "payment_processor": st.one_of(st.sampled_from(["Stripe", "paypal"]), TEXTISH),
            "name": TEXTISH,
            "email": st.one_of(st.emails(), TEXTISH),
        },
    ),
    JSON_VALUE,
)
TRAITS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "clickId": TEXTISH,
            "email": st.one_of(st.emails(), TEXTISH),
            "name": TEXTISH,
            "avatar": TEXTISH,
        },
    ),
    JSON_VALUE,
)
SEGMENT_EVENT = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.just("track"), JSON_VALUE),
        "event": st.one_of(st.sampled_from(["Order Completed", "Sign Up", "Signed Up"]), TEXTISH),
        "messageId": st.one_of(st.uuids().map(str), TEXTISH),
        "userId": st.one_of(st.text(min_size=1, max_size=12), st.integers(), TEXTISH),
        "anonymousId": JSON_VALUE,
        "timestamp": JSON_VALUE,
        "properties": PROPERTIES,
        "context": st.one_of(st.fixed_dictionaries({}, optional={"traits": TRAITS}), JSON_VALUE),
        "integrations": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={"Dub (Actions)": st.fixed_dictionaries({}, optional={"dub_id": TEXTISH})},
            ),
            JSON_VALUE,
        ),
    },
)

# Every field the mappings read, and the containers they sit in.
FIELD_PATHS = [
    ("type",),
    ("event",),
    ("messageId",),
    ("userId",),
    ("anonymousId",),
    ("timestamp",),
    ("properties",),
    ("properties", "order_id"),
    ("properties", "revenue"),
    ("properties", "total"),
    ("properties", "currency"),
    ("properties", "payment_processor"),
    ("properties", "name"),
    ("properties", "email"),
    ("context",),
    ("context", "traits"),
    ("context", "traits", "clickId"),
    ("context", "traits", "email"),
    ("context", "traits", "name"),
    ("context", "traits", "avatar"),
    ("integrations",),
    ("integrations", "Dub (Actions)"),
    ("integrations", "Dub (Actions)", "dub_id"),
]
DELETE = object()


def _set_path(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node: Any = event
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def mutated_event(draw: st.DrawFn) -> dict[str, Any]:
    """A valid sale or lead with 0 to 3 fields replaced by a wrong type, a huge text or nothing."""
    n = draw(st.uuids()).hex[:12]  # distinct ids, or the ledger answers `duplicate`
    kind = draw(st.sampled_from(["sale", "lead", "lead-cookie"]))
    event = sale_event(f"fz{n}") if kind == "sale" else lead_event(f"fz{n}")
    if kind == "lead-cookie":  # the click id where Segment's Dub plugin puts it
        del event["context"]["traits"]["clickId"]
        event["integrations"] = {"Dub (Actions)": {"dub_id": f"cl_fz{n}"}}
    paths = draw(st.lists(st.sampled_from(FIELD_PATHS), max_size=3, unique=True))
    for path in paths:
        _set_path(event, path, draw(st.one_of(JSON_VALUE, HUGE_TEXT, st.just(DELETE))))
    return event


ANY_EVENT = st.one_of(mutated_event(), SEGMENT_EVENT)


def _text_of(value: Any) -> bytes:
    return json.dumps(value).encode()  # allow_nan: NaN / Infinity tokens, as lenient senders do


def _nested(depth: int, event: dict[str, Any]) -> bytes:
    """``event`` with its properties wrapped ``depth`` levels deep (written by hand)."""
    core = json.dumps(event.get("properties", {}))
    inner = '{"a":' * depth + core + "}" * depth
    outer = dict(event)
    outer["properties"] = "__NESTED__"
    return json.dumps(outer).replace('"__NESTED__"', inner).encode()


def _corrupt(data: bytes, junk: bytes, at: int) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + junk + data[at:]


BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"])
EVENT_BODIES = st.one_of(
    ANY_EVENT.map(_text_of),
    st.lists(ANY_EVENT, max_size=5).map(_text_of),
    st.lists(ANY_EVENT, max_size=5).map(lambda b: _text_of({"batch": b})),
    st.builds(_nested, st.integers(min_value=1, max_value=600), mutated_event()),
    st.builds(_corrupt, ANY_EVENT.map(_text_of), BAD_UTF8, st.integers(min_value=0)),
)
RAW_BODIES = st.one_of(
    JSON_VALUE.map(lambda v: _text_of({"batch": v})),
    JSON_VALUE.map(_text_of),
    st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n),
    st.integers(min_value=1, max_value=1000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=200),
    st.sampled_from(
        [b"", b" ", b"\n\t ", b"null", b"{}", b"[]", b'{"batch": null}', b"\xef\xbb\xbf{}"]
    ),
    st.just(b'{"batch":[' + b'"' + b"x" * (5 * 1024 * 1024) + b'"]}'),  # over the body limit
)
BODIES = st.sampled_from([EVENT_BODIES, EVENT_BODIES, RAW_BODIES]).flatmap(lambda s: s)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "garbage/;;",
    ]
)


@pytest.fixture(scope="module")
def fuzz_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    fake = FakeDub(api_key="test-key").start()
    db = tmp_path_factory.mktemp("fuzz") / "ledger.sqlite3"
    app = create_app(fault_settings(fake.url, db, deadline_seconds=2.0, log_level="ERROR"))
    try:
        yield app
    finally:
        app.extensions["bridge"].deliverer.close()
        fake.stop()


def assert_clean_answer(status: int, mimetype: str | None, data: bytes) -> None:
    assert status != 500, data[:500]
    assert b"Traceback" not in data
    assert mimetype == "application/json", (status, mimetype, data[:200])
    payload = json.loads(data)
    assert isinstance(payload, dict), payload
    if "error" in payload:
        error = payload["error"]
        assert isinstance(error, dict), payload
        assert isinstance(error.get("code"), str), payload
        assert isinstance(error.get("message"), str), payload
    else:
        assert isinstance(payload.get("results"), list), payload
    if "counts" in payload or "results" in payload:
        assert isinstance(payload.get("counts"), dict), payload
        assert len(data) < 8 * 1024, len(data)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(body=BODIES, content_type=CONTENT_TYPES)
def test_webhook_never_500s_on_garbage(
    fuzz_bridge: Flask, body: bytes, content_type: str | None
) -> None:
    """Any bytes on POST /segment get JSON (`error` {code, message} or `results`), never a 500."""
    client = fuzz_bridge.test_client()
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/segment", data=body, headers=headers)
    assert_clean_answer(response.status_code, response.mimetype, response.data)
    payload = json.loads(response.data)
    note(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    for line in payload.get("results") or []:
        note(f"outcome {line['outcome']}")


def test_webhook_nesting_orjson_reads_but_cannot_write(fuzz_bridge: Flask) -> None:
    """An event nested 1000 levels deep (orjson reads 1024) is answered without a 500."""
    body = _nested(1000, sale_event("deep"))
    response = fuzz_bridge.test_client().post("/segment", data=body)
    assert_clean_answer(response.status_code, response.mimetype, response.data)

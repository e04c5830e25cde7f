"""Several instances, one truth: three Procfile web processes sharing one PostgreSQL ledger,
in front of a fake Dub that fails some calls (500, 429 with a millisecond Retry-After,
connections reset), while one instance is SIGKILLed mid-batch and restarted, every batch is
redelivered, and eight clients post one fresh batch to the three at once.

Every conversion must be RECORDED by the fake Dub exactly once, every batch must end
accepted (200), and the concurrent batch must cost exactly one call per conversion.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.helpers.fakedub import Action, Call, FakeDub, Key, Reset, Status
from tests.helpers.faultkit import (
    FIGURES,
    MAPPINGS,
    Answer,
    assert_recorded_once,
    key_for,
    mixed_batch,
    retryable,
)
from tests.helpers.procs import ProcfileWeb, clean_env, instances

pytestmark = pytest.mark.slow

INSTANCES = 3
ATTEMPTS = 60  # Segment-style retries per batch; each waits a little, as Segment would


def fault_plan(seed: int) -> Any:
    """Fail the first call of some conversions: a 500, a 429 with a near Retry-After (Dub's
    milliseconds), or a reset after Dub recorded it. Chosen by key, not by arrival order."""
    rng = random.Random(seed)
    chosen: dict[Key | None, Action] = {}
    seen: set[Key | None] = set()
    lock = threading.Lock()

    def plan(call: Call) -> Action | None:
        if call.key is None or any("conc" in str(part) for part in call.key):
            return None  # the racing batch meets no fault: it must cost one call each
        with lock:
            if call.key in seen:
                return None
            seen.add(call.key)
            roll = rng.random()
        if roll < 0.12:
            chosen[call.key] = Status(500)
        elif roll < 0.18:
            chosen[call.key] = Status(429, retry_after_in=0.3)
        elif roll < 0.24:
            chosen[call.key] = Reset(after_processing=True)
        return chosen.get(call.key)

    return plan


def post(session: requests.Session, url: str, batch: list[dict[str, Any]]) -> Answer:
    try:
        response = session.post(url + "/segment", json={"batch": batch}, timeout=15)
    except requests.RequestException as exc:  # a killed instance: Segment retries elsewhere
        return Answer(599, {"error": {"code": "transport", "message": str(exc)}})
    return Answer(response.status_code, response.json(), dict(response.headers))


def deliver(
    webs: list[ProcfileWeb], batch: list[dict[str, Any]], rng: random.Random, posts: Counter[str]
) -> Answer:
    """Post until accepted, each try to a random instance, with a short pause between."""
    stop = threading.Event()
    with requests.Session() as session:
        answer = Answer(0, {})
        for _ in range(ATTEMPTS):
            answer = post(session, rng.choice(webs).url, batch)
            posts["posts"] += 1
            if not retryable(answer.status):
                return answer
            stop.wait(0.3)  # Segment waits between retries (far longer, in life)
    return answer


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[tuple[FakeDub, list[ProcfileWeb]]]:
    fake = FakeDub(api_key="test-key", latency=lambda: random.uniform(0.005, 0.02)).start()
    env = clean_env(
        DUB_API_KEY="test-key",
        DUB_API_URL=fake.url,
        DATABASE_URL=pg_url,
        BRIDGE_MAPPINGS_DIR=str(MAPPINGS),
        BRIDGE_RELOAD_SECONDS="0",
        BRIDGE_DEADLINE_SECONDS="1",
        DUB_CONNECT_TIMEOUT="0.3",
        DUB_READ_TIMEOUT="0.5",
        BRIDGE_LEASE_SECONDS="2",  # a killed instance's claims are taken over soon
        BRIDGE_LOG_LEVEL="WARNING",
        WEB_CONCURRENCY="2",
    )
    try:
        with instances(env, tmp_path, INSTANCES) as webs:
            yield fake, webs
    finally:
        fake.stop()


def unsettled(pg_url: str) -> int:
    """Rows still pending or in flight (after every batch got 200: the outbox's queue)."""
    with psycopg.connect(pg_url) as conn:
        sql = "SELECT COUNT(*) FROM deliveries WHERE state IN ('pending', 'in_flight')"
        return int(conn.execute(sql).fetchone()[0])


def test_three_instances_send_each_conversion_once(
    cluster: tuple[FakeDub, list[ProcfileWeb]], pg_url: str
) -> None:
    """Faults, a SIGKILL, redeliveries to random instances and a concurrent batch: every
    conversion recorded exactly once, every batch accepted, one call each when racing."""
    fake, webs = cluster
    fake.plan = fault_plan(seed=11)
    events = mixed_batch(240, "mi")
    batches = [events[i : i + 20] for i in range(0, len(events), 20)]
    rng = random.Random(5)
    posts: Counter[str] = Counter()
    finals: list[Answer] = []
    errors: list[BaseException] = []
    queue = list(batches)
    lock = threading.Lock()

    def client(seed: int) -> None:
        local = random.Random(seed)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    batch = queue.pop(0)
                answer = deliver(webs, batch, local, posts)
                with lock:
                    finals.append(answer)
        except BaseException as exc:  # reported below
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for thread in clients:
        thread.start()
    # Mid-way, one instance dies without warning, and comes back.
    assert fake.wait_until(lambda: fake.received_count() >= 80, timeout=60, step=0.005)
    webs[0].kill()
    killed_at = fake.received_count()
    webs[0].start()
    for thread in clients:
        thread.join(180)
    assert not errors, errors
    assert [a.status for a in finals] == [200] * len(batches), [a.body for a in finals]

    # What Dub's 429s queued, the instances' senders send; then Segment redelivers every
    # batch once more, anywhere: nothing is sent again.
    assert fake.wait_until(lambda: unsettled(pg_url) == 0, timeout=60, step=0.2)
    before = fake.received_count()
    for batch in batches:
        again = deliver(webs, batch, rng, posts)
        assert again.status == 200, again.body
    assert fake.received_count() == before

    # Eight clients post one fresh batch to the three instances at the same moment.
    fresh = mixed_batch(40, "conc")
    barrier = threading.Barrier(8)
    racing: list[Answer] = []

    def racer(i: int) -> None:
        barrier.wait(10)
        racing.append(deliver(webs, fresh, random.Random(100 + i), posts))

    racers = [threading.Thread(target=racer, args=(i,), daemon=True) for i in range(8)]
    for thread in racers:
        thread.start()
    for thread in racers:
        thread.join(120)
    assert [a.status for a in racing] == [200] * 8, [a.body for a in racing]

    keys = {key_for(e) for e in events + fresh}
    assert_recorded_once(fake, keys)
    received = fake.received_by_key()
    assert all(received[key_for(e)] == 1 for e in fresh), "the racing batch cost extra calls"
    figures = {
        "instances": INSTANCES,
        "conversions": len(keys),
        "posts": posts["posts"],
        "received_at_kill": killed_at,
        "requests_received_by_fake": sum(received.values()),
        "recorded": sum(fake.recorded_by_key().values()),
        "duplicates": sum(n - 1 for n in fake.recorded_by_key().values() if n > 1),
    }
    FIGURES["three_instances"] = figures
    print("\nthree instances, one PostgreSQL ledger:", figures)

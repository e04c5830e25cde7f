"""The shared Dub rate limit from a worker's side: one slot for each call made and none for
a call never sent, a 429 kept counted, the per-second allowance as a setting. The window's
own rules, on every backend, are in the ledger contract suite."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
import urllib3
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.core.errors import LedgerError, SettingsError
from bridge.core.inputs import Item
from bridge.core.settings import Settings
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.ratelimit import LEASE_MOST, Grant, SharedWindow
from bridge.delivery.retry import RetryPolicy
from bridge.dub.client import DubAnswer, DubClient, Failure
from bridge.ledger.base import HELD_SECONDS, USE_WITHIN
from bridge.ledger.memory import MemoryLedger
from bridge.mapping.batch import plan_all
from bridge.mapping.engine import Engine
from bridge.service.wiring import rate_limiter
from tests.conftest import DUB, order, sale_ok
from tests.helpers.fakes import ManualClock

KEY = "dub"
REFUSED = requests.ConnectionError(
    urllib3.exceptions.MaxRetryError(
        None,
        "/track/sale",
        urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
    )
)


@pytest.fixture
def ledger(clock: ManualClock) -> MemoryLedger:
    return MemoryLedger(clock=clock)


@pytest.fixture
def deliverer(ledger: MemoryLedger, clock: ManualClock) -> Iterator[Deliverer]:
    d = Deliverer(
        DubClient(DUB, "k"),
        ledger,
        limiter=SharedWindow(ledger, KEY, 60, clock=clock),
        policy=RetryPolicy(rng=random.Random(7)),
        clock=clock,
        concurrency=4,
    )
    yield d
    d.close()


def counted(ledger: MemoryLedger) -> int:
    """The slots the window counts now (asking for all that are left, then giving them
    back)."""
    huge = 10**9
    slots = ledger.take_slots(KEY, huge, huge)
    MemoryLedger.give_back_slots(ledger, KEY, slots.second, slots.granted)  # even if patched
    return huge - slots.granted


def takes_of(ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``count`` of every take_slots transaction from now on."""
    seen: list[int] = []
    real = ledger.take_slots

    def spy(key: str, per_minute: int, count: int, **kw: Any) -> Any:
        seen.append(count)
        return real(key, per_minute, count, **kw)

    monkeypatch.setattr(ledger, "take_slots", spy)
    return seen


def granted_of(ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The slots every take_slots transaction granted from now on."""
    seen: list[int] = []
    real = ledger.take_slots

    def spy(key: str, per_minute: int, count: int, **kw: Any) -> Any:
        slots = real(key, per_minute, count, **kw)
        seen.append(slots.granted)
        return slots

    monkeypatch.setattr(ledger, "take_slots", spy)
    return seen


def send(deliverer: Deliverer, engine: Engine, events: list[Any]) -> Any:
    results, payloads = plan_all(engine, [Item(e) for e in events])
    return deliverer.deliver(results, 4.0, payloads)


def test_one_slot_per_call_and_none_kept_aside(ledger: MemoryLedger, clock: ManualClock) -> None:
    """Each slot a worker takes is one call: sixteen calls count sixteen, and another worker
    finds the rest of the window free at once (no worker holds slots it has not used: in a
    window this small, slots are taken ahead only while it is under half used, and those
    ahead are all used here)."""
    first = SharedWindow(ledger, KEY, 20, clock=clock)
    second = SharedWindow(ledger, KEY, 20, clock=clock)
    assert all(first.acquire(clock.monotonic()).granted for _ in range(16))
    assert [second.acquire(clock.monotonic()).granted for _ in range(5)] == [True] * 4 + [False]
    assert counted(ledger) == 20


def test_a_call_never_sent_gives_its_slot_back(
    deliverer: Deliverer, ledger: MemoryLedger, engine: Engine, dub: responses.RequestsMock
) -> None:
    """A call that found no connection to Dub never reached it: its slot is given back, so
    the retry that reached Dub is the only one counted."""
    dub.post(f"{DUB}/track/sale", body=REFUSED)
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    (result,) = send(deliverer, engine, [order()])
    assert result.outcome == "delivered" and result.attempts == 2
    assert counted(ledger) == 1


def test_a_call_answered_429_keeps_its_slot_and_pauses_every_worker(
    deliverer: Deliverer,
    ledger: MemoryLedger,
    engine: Engine,
    dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:
    """Dub saw a call it answered 429 (whether its window counted it is not documented): it
    stays counted, and no worker gets a slot before Dub's millisecond Retry-After."""
    until = clock.time() + 0.5
    retry_after = str(int(until * 1000))
    dub.post(f"{DUB}/track/sale", status=429, headers={"Retry-After": retry_after}, json={})
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    (result,) = send(deliverer, engine, [order()])
    assert result.outcome == "delivered" and result.attempts == 2
    assert clock.time() >= until - 0.001  # the retry waited for Dub's time
    other = SharedWindow(ledger, KEY, 60, clock=clock)
    ledger.pause(KEY, clock.time() + 10)  # as another worker's 429 would
    refused = other.acquire(clock.monotonic())
    assert not refused.granted and refused.wait == pytest.approx(10)
    clock.advance(10)
    assert counted(ledger) == 2


def test_the_per_second_allowance_is_a_setting(ledger: MemoryLedger, clock: ManualClock) -> None:
    """DUB_RATE_LIMIT_PER_SECOND reaches the shared window: no second carries more calls;
    unset, the minute alone holds."""
    env = {"DUB_API_KEY": "k", "DUB_RATE_LIMIT_PER_SECOND": "3"}
    limiter = rate_limiter(Settings.from_env(env), ledger, clock=clock)
    grants = [limiter.acquire(clock.monotonic()) for _ in range(4)]
    assert [g.granted for g in grants] == [True, True, True, False]
    assert 0 < grants[-1].wait <= 1
    assert Settings.from_env({}).rate_limit_per_second is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "DUB_RATE_LIMIT_PER_SECOND: expected greater than or equal to 1"),
        ("fast", "DUB_RATE_LIMIT_PER_SECOND: expected a valid integer"),
    ],
)
def test_a_bad_per_second_allowance_names_the_variable(value: str, expected: str) -> None:
    """A per-second allowance that is not a whole number of at least 1 stops start-up,
    naming the variable and the value."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"DUB_RATE_LIMIT_PER_SECOND": value})
    assert expected in str(info.value) and repr(value) in str(info.value)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=5, allow_nan=False),  # time passing first
            st.integers(min_value=1, max_value=6),  # slots wanted
            st.booleans(),  # the call of one of them is not made
        ),
        max_size=60,
    ),
    per_minute=st.integers(min_value=1, max_value=30),
    per_second=st.none() | st.integers(min_value=1, max_value=8),
)
def test_no_sequence_of_takes_and_give_backs_exceeds_the_limits(
    steps: list[tuple[float, int, bool]], per_minute: int, per_second: int | None
) -> None:
    """Whatever the order of takes, give-backs and waits, the calls made in any 60 s
    never exceed the minute's limit, nor those of one second the per-second allowance."""
    clock = ManualClock(start=1_800_000_000.0)
    ledger = MemoryLedger(clock=clock)
    made: list[float] = []
    for wait, wanted, unused in steps:
        clock.advance(wait)
        slots = ledger.take_slots(KEY, per_minute, wanted, per_second=per_second)
        assert (slots.granted == 0) == (slots.wait > 0)
        calls = slots.granted - (1 if unused and slots.granted else 0)
        if calls < slots.granted:
            ledger.give_back_slots(KEY, slots.second, 1)
        made.extend([clock.time()] * calls)
        recent = [at for at in made if at >= clock.time() - 60]
        assert len(recent) <= per_minute
        if per_second is not None:
            assert sum(1 for at in made if int(at) == int(clock.time())) <= per_second


def test_a_slot_not_given_back_for_a_ledger_fault_only_counts(
    ledger: MemoryLedger, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """When the ledger cannot take a slot back, the call path goes on and says so in a log
    line; the slot counts its minute, which errs on the safe side."""

    def down(key: str, second: int, count: int) -> None:
        raise LedgerError("PostgreSQL at db:5432: connection refused")

    ledger.give_back_slots = down  # type: ignore[method-assign]
    limiter = SharedWindow(ledger, KEY, 5, clock=clock)
    grant = limiter.acquire(clock.monotonic())
    limiter.after_call(grant, DubAnswer(failure=Failure.UNREACHABLE))
    assert "could not give a rate-limit slot back" in caplog.text
    assert counted(ledger) == 1


def test_a_requests_calls_take_their_slots_at_once(
    deliverer: Deliverer,
    ledger: MemoryLedger,
    engine: Engine,
    dub: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's calls take their slots from the window in one go (one round trip, not one
    each), and the window counts exactly the calls made: the slot of a row that made no
    call (a duplicate) is given back."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    events = [order(f"m-{i}") | {"userId": f"u{i}"} for i in range(5)]
    send(deliverer, engine, events[:1])
    takes = takes_of(ledger, monkeypatch)
    results = send(deliverer, engine, events)
    assert [r.outcome for r in results] == ["duplicate"] + ["delivered"] * 4
    assert takes == [4]  # the duplicate was refused its claim: no slot for it
    monkeypatch.undo()
    assert counted(ledger) == 5 and len(dub.calls) == 5


def test_reserved_slots_serve_calls_made_soon_and_the_rest_go_back(
    ledger: MemoryLedger, clock: ManualClock
) -> None:
    """Slots reserved at once go each to one call made within the second they count in
    (so the call reaches Dub while they still count a minute); later calls take their own,
    and what no call used is given back to the window."""
    clock.advance(0.5)  # mid-second
    window = SharedWindow(ledger, KEY, 10, clock=clock)
    reserved = window.reserve(4)
    assert reserved is not None and counted(ledger) == 4
    assert reserved.take(clock.time()) is not None
    clock.advance(0.49)
    assert reserved.take(clock.time()) is not None  # the same second
    clock.advance(0.02)
    assert reserved.take(clock.time()) is None  # their second is over: not for a call now
    window.release(reserved)
    assert counted(ledger) == 2
    assert reserved.take(clock.time()) is None  # nothing is handed out after release
    assert window.reserve(1) is None  # one call takes its own, as always
    assert SharedWindow(ledger, KEY, 10, per_second=5, clock=clock).reserve(3) is None


def test_a_429_gives_the_reserved_slots_back(
    deliverer: Deliverer,
    ledger: MemoryLedger,
    engine: Engine,
    dub: responses.RequestsMock,
    clock: ManualClock,
) -> None:
    """A 429 means Dub's own window is full, whatever the bridge's says: the slots a request
    reserved and has not used go back, and its other calls wait like every worker's."""
    until = clock.time() + 0.5
    dub.post(f"{DUB}/track/sale", status=429, headers={"Retry-After": str(int(until * 1000))},
             json={})  # fmt: skip
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    events = [order(f"m-{i}") | {"userId": f"u{i}"} for i in range(3)]
    results = send(deliverer, engine, events)
    assert [r.outcome for r in results] == ["delivered"] * 3
    assert len(dub.calls) == 4
    deliverer.limiter.drop_lease()  # what its last calls took ahead, as when it stops
    assert counted(ledger) == 4  # the calls made, the 429 included; none reserved in vain


def test_a_busy_worker_takes_its_slots_ahead_in_few_transactions(
    ledger: MemoryLedger, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker making calls one after another takes its slots a few at once (as many as it
    was handed in the last USE_WITHIN, at most LEASE_MOST): 200 calls in two seconds take
    about a dozen transactions, not 200, and the window counts the calls made and no more
    once the worker gives back what it took ahead."""
    window = SharedWindow(ledger, KEY, 100_000, clock=clock)
    takes = takes_of(ledger, monkeypatch)
    for _ in range(200):
        assert window.acquire(clock.monotonic()).granted
        clock.advance(0.01)
    assert len(takes) <= 15 and max(takes) == LEASE_MOST
    window.drop_lease()
    assert counted(ledger) == 200


def test_past_half_the_window_every_slot_is_taken_on_its_own(
    ledger: MemoryLedger, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once half the minute's calls are used, no worker takes slots ahead: each call takes
    its own, so near the limit no slot sits with one worker while another waits."""
    window = SharedWindow(ledger, KEY, 40, clock=clock)
    other = SharedWindow(ledger, KEY, 40, clock=clock)
    for _ in range(20):
        assert window.acquire(clock.monotonic()).granted
    window.drop_lease()
    assert counted(ledger) == 20
    grants = granted_of(ledger, monkeypatch)
    granted = [window.acquire(clock.monotonic()).granted for _ in range(10)]
    assert grants == [1] * 10  # each take one slot, though the worker is busy
    monkeypatch.undo()
    assert granted == [True] * 10 and counted(ledger) == 30  # nothing held aside
    assert [other.acquire(clock.monotonic()).granted for _ in range(11)] == [True] * 10 + [False]
    assert counted(ledger) == 40


def test_a_lease_too_old_for_a_call_goes_back_to_the_window(
    ledger: MemoryLedger, clock: ManualClock
) -> None:
    """Slots taken ahead serve only calls made within USE_WITHIN of their taking: past
    that, the next call takes its own, and what the old lease held is given back."""
    window = SharedWindow(ledger, KEY, 1_000, clock=clock)
    for _ in range(5):
        window.acquire(clock.monotonic())
    assert counted(ledger) > 5  # some were taken ahead
    clock.advance(USE_WITHIN + 0.01)
    assert window.acquire(clock.monotonic()).granted
    assert counted(ledger) == 6  # the five made, and this one
    window.drop_lease()
    assert counted(ledger) == 6


def test_a_429_and_a_stop_give_the_lease_back(
    deliverer: Deliverer, ledger: MemoryLedger, clock: ManualClock
) -> None:
    """Dub's 429 pauses every worker and gives back what this one took ahead (Dub's window
    is full, whatever the bridge's says); a worker that stops gives its lease back too."""
    window = deliverer.limiter
    assert isinstance(window, SharedWindow)
    for _ in range(5):
        window.acquire(clock.monotonic())
    assert counted(ledger) > 5  # some were taken ahead
    window.pause(0.5)
    clock.advance(0.5)  # counted() takes slots: not while paused
    assert counted(ledger) == 5
    for _ in range(6):
        window.acquire(clock.monotonic())
    assert counted(ledger) > 11
    deliverer.close()
    assert counted(ledger) == 11


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            # time passing first: within a lease's life, or to the window's edges
            st.floats(min_value=0, max_value=3, allow_nan=False)
            | st.sampled_from([30.0, 58.5, 59.5, 60.5, 61.5]),
            st.integers(min_value=1, max_value=8),  # calls wanted at once
            st.booleans(),  # the last of them is not made (its slot given back)
            st.booleans(),  # then Dub answers 429: a pause of a second
        ),
        max_size=80,
    ),
    per_minute=st.integers(min_value=1, max_value=60),
    workers=st.integers(min_value=1, max_value=3),
    lag=st.sampled_from([0.0, 0.004, 0.05, 0.3]),
)
# A slot kept ahead, then a long wait: served past its second, its call would share Dub's
# minute with a whole window of new ones.
@example(
    steps=[(0.0, 3, False, False), (61.5, 1, False, False), (0.5, 8, False, False),
           (0.0, 8, False, False)],
    per_minute=10, workers=1, lag=0.0,
)  # fmt: skip
def test_no_sequence_of_leased_calls_exceeds_the_minute(
    steps: list[tuple[float, int, bool, bool]], per_minute: int, workers: int, lag: float
) -> None:
    """Whatever the calls, waits, give-backs and 429s of several workers taking slots ahead,
    and however long each slot's transaction takes, Dub never sees more than the minute's
    limit: a call reaches Dub up to USE_WITHIN after it is made, so no HELD_SECONDS (a
    minute and that) hold more calls made than the limit."""
    clock = ManualClock(start=1_800_000_000.0)
    ledger = MemoryLedger(clock=clock)
    real = ledger.take_slots

    def slow(key: str, per_minute: int, count: int, **kw: Any) -> Any:
        slots = real(key, per_minute, count, **kw)
        clock.advance(lag)  # the transaction's commit, the answer's way back
        return slots

    ledger.take_slots = slow  # type: ignore[method-assign]
    windows = [SharedWindow(ledger, KEY, per_minute, clock=clock) for _ in range(workers)]
    made: list[float] = []
    for n, (wait, wanted, unused, told_429) in enumerate(steps):
        clock.advance(wait)
        window = windows[n % workers]
        granted: list[tuple[Grant, float]] = []  # each call made when its slot came
        for _ in range(wanted):
            grant = window.acquire(clock.monotonic())
            if grant.granted:
                granted.append((grant, clock.time()))
        if unused and granted:
            window.give_back(granted.pop()[0])
        made.extend(at for _, at in granted)
        recent = [at for at in made if at > clock.time() - HELD_SECONDS]
        assert len(recent) <= per_minute
        if told_429:
            window.pause(1.0)


def test_a_slot_whose_transaction_ends_in_the_next_second_is_taken_again(
    ledger: MemoryLedger, clock: ManualClock
) -> None:
    """A slot counts in the second its transaction started: when the answer comes in the
    next second, a call made then could reach Dub after the slot stops counting, so it is
    given back and taken again in the new second."""
    clock.advance(0.99)
    real = ledger.take_slots
    lags = [0.02]

    def slow(key: str, per_minute: int, count: int, **kw: Any) -> Any:
        slots = real(key, per_minute, count, **kw)
        clock.advance(lags.pop() if lags else 0.0)
        return slots

    ledger.take_slots = slow  # type: ignore[method-assign]
    window = SharedWindow(ledger, KEY, 10, clock=clock)
    grant = window.acquire(clock.monotonic())
    assert grant.counted_at == int(clock.time())  # the new second
    ledger.take_slots = real  # type: ignore[method-assign]
    assert counted(ledger) == 1


def test_with_a_per_second_allowance_no_slot_is_taken_ahead(
    ledger: MemoryLedger, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DUB_RATE_LIMIT_PER_SECOND, calls spread over a second could put it over the
    allowance: every call takes its own slot, and the worker keeps no record of them."""
    window = SharedWindow(ledger, KEY, 100_000, per_second=50, clock=clock)
    takes = takes_of(ledger, monkeypatch)
    for _ in range(500):
        assert window.acquire(clock.monotonic()).granted
        clock.advance(0.025)  # 40 a second: never over the allowance
    assert takes == [1] * 500
    monkeypatch.undo()
    assert counted(ledger) == 500  # none held aside
    assert len(window._handed) == 0  # bounded: nothing recorded when no lease reads it


def test_a_lease_replaced_by_another_threads_gives_its_slots_back(
    ledger: MemoryLedger, clock: ManualClock
) -> None:
    """Two threads of a worker may find no lease at once and each take slots ahead: the
    lease installed second replaces the first, which gives back what it holds."""
    window = SharedWindow(ledger, KEY, 100_000, clock=clock)
    for _ in range(8):
        window.acquire(clock.monotonic())  # busy: the next take is a lease
    window.drop_lease()
    real = ledger.take_slots
    raced: list[bool] = []

    def racing(key: str, per_minute: int, count: int, **kw: Any) -> Any:
        slots = real(key, per_minute, count, **kw)
        if not raced:  # another thread takes and installs its own lease meanwhile
            raced.append(False)
            raced[0] = window.acquire(clock.monotonic()).granted
        return slots

    ledger.take_slots = racing  # type: ignore[method-assign]
    assert window.acquire(clock.monotonic()).granted and raced == [True]
    ledger.take_slots = real  # type: ignore[method-assign]
    window.drop_lease()
    assert counted(ledger) == 10  # the ten calls made: neither lease left anything counted


def test_a_lease_taken_during_a_429_never_serves_a_call(
    ledger: MemoryLedger, clock: ManualClock
) -> None:
    """A thread whose slots were taken just before another thread heard Dub's 429 does not
    keep them ahead: no call of this worker goes out before the pause ends."""
    window = SharedWindow(ledger, KEY, 100_000, clock=clock)
    for _ in range(8):
        window.acquire(clock.monotonic())
    window.drop_lease()
    real = ledger.take_slots

    def told_429(key: str, per_minute: int, count: int, **kw: Any) -> Any:
        slots = real(key, per_minute, count, **kw)
        ledger.take_slots = real  # type: ignore[method-assign]
        window.pause(0.5)  # another thread's call was answered 429 meanwhile
        return slots

    ledger.take_slots = told_429  # type: ignore[method-assign]
    assert window.acquire(clock.monotonic()).granted  # its own call was sent before the 429
    refused = window.acquire(clock.monotonic())
    assert not refused.granted and refused.wait == pytest.approx(0.5)
    clock.advance(0.5)
    assert counted(ledger) == 9  # the lease went back

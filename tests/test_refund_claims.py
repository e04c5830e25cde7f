"""A refund's absolute amount is worked out once and pinned to its claim: a process killed
between the GET and the PATCH (or right after the PATCH reached Dub), then retried by another
instance once the lease ran out, leaves the commission at the right amount. On every ledger
backend (PostgreSQL where BRIDGE_TEST_DATABASE_URL is set)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.core.items import Item
from bridge.core.outcomes import State
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.outbox import Outbox
from bridge.delivery.ratelimit import SlidingWindow
from bridge.delivery.retry import RetryPolicy
from bridge.dub.client import DubAnswer, DubClient
from bridge.ledger import open_ledger
from bridge.ledger.base import ClaimRequest, Ledger, erasure_note
from bridge.mapping.batch import plan_all
from bridge.service.mapping_files import load_directory
from tests.helpers.fakedub import FakeDub
from tests.helpers.fakes import ManualClock
from tests.helpers.ledgers import BACKENDS, backend_settings
from tests.lifecyclekit import REFUND_MAPPING, lifecycle_mappings, refund_event


class Killed(BaseException):
    """The process dies here: nothing after this line of the bridge runs."""


class DyingClient(DubClient):
    """A client whose process is killed at a PATCH: before sending it, or after Dub applied it."""

    def __init__(self, url: str, *, after_sending: bool):
        super().__init__(url, "test-key")
        self.after_sending = after_sending

    def call(self, action: str, method: str, path: str, body: Any = None,
             params: Any = None) -> DubAnswer:  # fmt: skip
        if method == "PATCH" and not self.after_sending:
            raise Killed
        answer = super().call(action, method, path, body, params)
        if method == "PATCH":
            raise Killed
        return answer


@pytest.fixture(params=BACKENDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Ledger]:
    pg_url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    opened = open_ledger(backend_settings(str(request.param), tmp_path, pg_url), clock=clock)
    assert opened is not None
    yield opened
    opened.close()


def deliverer(client: DubClient, ledger: Ledger, clock: ManualClock) -> Deliverer:
    return Deliverer(
        client,
        ledger,
        limiter=SlidingWindow(1200, clock=clock),
        policy=RetryPolicy(rng=random.Random(5)),
        clock=clock,
    )


@pytest.mark.parametrize("after_sending", [False, True], ids=["before-patch", "after-patch"])
def test_refund_killed_at_its_patch_then_retried_subtracts_once(
    fake_dub: FakeDub, ledger: Ledger, clock: ManualClock, tmp_path: Path, after_sending: bool
) -> None:
    """Killed between GET and PATCH (or once Dub applied the PATCH), retried by another
    instance after the lease: the commission ends at sale - refund, never less."""
    engine = load_directory(lifecycle_mappings(tmp_path)).engine
    fake_dub.add_commission("ORD-k", 10000)
    results, payloads = plan_all(engine, [Item(refund_event("k", "ORD-k", total=25))])

    dying = deliverer(DyingClient(fake_dub.url, after_sending=after_sending), ledger, clock)
    with pytest.raises(Killed):
        dying.deliver(results, 4.0, payloads)
    applied = 7500 if after_sending else 10000
    assert fake_dub.commission("ORD-k")["amount"] == applied  # type: ignore[index]
    row = ledger.get("msg-refund-k", REFUND_MAPPING)
    assert row is not None and row.state == "in_flight"
    assert row.request_body is not None and row.request_body["pin"]["patch"] == {"saleAmount": 7500}

    clock.advance(600)  # the dead holder's lease has run out
    other = deliverer(DubClient(fake_dub.url, "test-key"), ledger, clock)
    try:
        [done] = other.deliver(results, 4.0, payloads)
    finally:
        other.close()
    assert done.outcome == "refunded", done
    assert fake_dub.commission("ORD-k")["amount"] == 7500  # type: ignore[index]
    sent = [r.body for r in fake_dub.calls("PATCH", "/commissions/")]
    assert all(body == {"saleAmount": 7500} for body in sent)
    settled = ledger.get("msg-refund-k", REFUND_MAPPING)
    assert settled is not None and settled.state == "delivered"


def test_the_outbox_sends_nothing_of_a_user_deleted_since(
    fake_dub: FakeDub, ledger: Ledger, clock: ManualClock
) -> None:
    """A lead still pending when its user was deleted: the outbox finds the erasure note
    instead of the request and settles the row (not_recorded) without calling Dub."""
    body = {"customerExternalId": "gone", "clickId": "cl", "eventName": "Sign Up",
            "customerEmail": "gone@example.com"}  # fmt: skip
    wanted = ClaimRequest("m-gone", "signup-lead", "lead", "Sign Up", "gone", body)
    ledger.claim_many([wanted])
    ledger.finish("m-gone", "signup-lead", State.PENDING, calls=1)
    assert ledger.erase("gone", erasure_note("msg-delete-9")) == 1
    clock.advance(5 * 3600)
    sender = deliverer(DubClient(fake_dub.url, "test-key"), ledger, clock)
    try:
        counts = Outbox(ledger, sender, after_seconds=4 * 3600, clock=clock).run_once()
    finally:
        sender.close()
    assert counts == Counter({"skipped": 1})
    assert fake_dub.received_count() == 0
    row = ledger.get("m-gone", "signup-lead")
    assert row is not None and row.state == State.NOT_RECORDED
    assert "gone@example.com" not in str(row)

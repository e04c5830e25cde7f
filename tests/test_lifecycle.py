"""The conversion lifecycle through the webhook, end to end against the real fake Dub: refunds
(GET the invoice's commission, then PATCH it), customer updates, customer deletions with
erasure from the ledger, and Dub's own Segment source kept out.

Each refund scenario ends with the commission at the right absolute amount and exactly one
PATCH that changed it, whatever Segment retried or Dub failed at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.settings import Settings
from bridge.web.app import create_app
from tests.fakedub import FakeDub, Reset, Status
from tests.faultkit import SALE_MAPPING, Bridge, assert_settled, sale_event
from tests.lifecyclekit import REFUND_MAPPING, lifecycle_mappings, refund_event


@pytest.fixture
def lbridge(fake_dub: FakeDub, tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """A bridge pointed at the fake Dub, with the lifecycle mappings beside the shipped ones."""
    folder = lifecycle_mappings(tmp_path)
    made: list[Bridge] = []

    def make(**overrides: Any) -> Bridge:
        db = tmp_path / "ledger.sqlite3"
        settings = Settings.from_env(
            {}, dub_api_key="test-key", dub_api_url=fake_dub.url, db_path=db,
            mappings_dir=folder, reload_seconds=0, log_level="WARNING",
            **{"deadline_seconds": 2.0, **overrides},
        )  # fmt: skip
        made.append(Bridge(create_app(settings), db))
        return made[-1]

    yield make
    for b in made:
        b.close()


def patches(fake: FakeDub) -> list[Any]:
    """The PATCHes the fake applied to a commission, in order (refused ones left out)."""
    return [r.body for r in fake.records if r.key[0] == "commission"]


# --- refunds ------------------------------------------------------------------------------------


def test_full_refund_patches_status_refunded(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A refund without an amount GETs the invoice's commission and PATCHes status refunded."""
    b = lbridge()
    fake_dub.add_commission("ORD-1", 1999)
    answer = b.post([refund_event(1, "ORD-1")])
    assert answer.status == 200, answer.body
    assert answer.outcomes() == ["refunded"]
    assert [r.query for r in fake_dub.calls("GET", "/commissions")] == [{"invoiceId": "ORD-1"}]
    assert patches(fake_dub) == [{"status": "refunded"}]
    assert fake_dub.commission("ORD-1")["status"] == "refunded"  # type: ignore[index]
    assert assert_settled(b.db) == {"delivered": 1}


def test_partial_refund_patches_an_absolute_sale_amount(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A partial USD refund PATCHes the absolute saleAmount left, never modifySaleAmount."""
    b = lbridge()
    fake_dub.add_commission("ORD-2", 10000)
    assert b.post([refund_event(2, "ORD-2", total=25.5)]).outcomes() == ["refunded"]
    assert patches(fake_dub) == [{"saleAmount": 7450}]
    assert fake_dub.commission("ORD-2")["amount"] == 7450  # type: ignore[index]


def test_refund_without_commission_is_a_final_skip(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """No commission for the invoice (no partner referred the sale): a final `skipped`."""
    b = lbridge()
    answer = b.post([refund_event(3, "ORD-none", total=5)])
    assert answer.status == 200
    assert answer.outcomes() == ["skipped"]
    assert patches(fake_dub) == []
    row = b.ledger().get("msg-refund-3", REFUND_MAPPING)
    assert row is not None and row.state == "not_recorded"
    # Segment's retry is a duplicate, not a second GET.
    assert b.post([refund_event(3, "ORD-none", total=5)]).status == 200
    assert len(fake_dub.calls("GET", "/commissions")) == 1


def test_paid_commission_is_rejected_with_dubs_message(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A paid commission Dub refuses to change is `rejected`, with Dub's own message."""
    b = lbridge()
    cid = fake_dub.add_commission("ORD-4", 5000, status="paid")
    answer = b.post([refund_event(4, "ORD-4")])
    assert answer.status == 200
    assert answer.outcomes() == ["rejected"]
    [dead] = b.ledger().dead_letters()
    assert dead.state == "rejected"
    assert f"Commission {cid} has already been paid" in str(dead.error)


def test_refund_larger_than_the_sale_is_a_dead_letter_saying_why(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A refund larger than what is left of the sale is never sent: a dead letter says why."""
    b = lbridge()
    fake_dub.add_commission("ORD-5", 1000)
    answer = b.post([refund_event(5, "ORD-5", total=12)])
    assert answer.outcomes() == ["invalid"]
    assert patches(fake_dub) == []
    [dead] = b.ledger().dead_letters()
    assert dead.state == "invalid"
    assert "exceeds" in str(dead.error) and "1200" in str(dead.error)


def test_refund_in_another_currency_without_the_sale_is_a_dead_letter(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A EUR refund of a commission Dub keeps in USD, sale unknown to the ledger: no guess."""
    b = lbridge()
    fake_dub.add_commission("ORD-6", 1000)
    answer = b.post([refund_event(6, "ORD-6", total=2, currency="EUR")])
    assert answer.outcomes() == ["invalid"]
    assert patches(fake_dub) == []
    [dead] = b.ledger().dead_letters()
    assert "cannot be known" in str(dead.error)


def test_refund_in_the_sales_own_currency_uses_the_sale_the_ledger_sent(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A EUR partial refund of a EUR sale PATCHes the sale's EUR amount less the refund, in EUR;
    a second partial refund starts from what the first left, never from Dub's USD cents."""
    b = lbridge()
    sale = sale_event("eur")
    sale["properties"].update(revenue=100.0, currency="EUR")
    assert b.post([sale]).outcomes() == ["delivered"]
    fake_dub.add_commission("ORD-eur", 11000)  # Dub converted 100 EUR to 110 USD
    assert b.post([refund_event(7, "ORD-eur", total=30, currency="EUR")]).outcomes() == ["refunded"]
    assert b.post([refund_event(8, "ORD-eur", total=20, currency="EUR")]).outcomes() == ["refunded"]
    assert patches(fake_dub) == [
        {"saleAmount": 7000, "currency": "eur"},
        {"saleAmount": 5000, "currency": "eur"},
    ]
    assert b.state("msg-sale-eur", SALE_MAPPING) == "delivered"


def test_refund_in_usd_of_a_eur_sale_is_a_dead_letter(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Never subtract across currencies: a USD refund of a sale sent in EUR is a dead letter."""
    b = lbridge()
    sale = sale_event("mix")
    sale["properties"].update(revenue=100.0, currency="EUR")
    b.post([sale])
    fake_dub.add_commission("ORD-mix", 11000)
    assert b.post([refund_event(9, "ORD-mix", total=10)]).outcomes() == ["invalid"]
    assert patches(fake_dub) == []
    [dead] = b.ledger().dead_letters()
    assert "across currencies" in str(dead.error)


def test_refund_retried_by_segment_20_times_patches_once(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Segment retrying one partial refund 20 times: one PATCH, the amount subtracted once."""
    b = lbridge()
    fake_dub.add_commission("ORD-20", 10000)
    event = refund_event(20, "ORD-20", total=10)
    answers = [b.post([event]) for _ in range(20)]
    assert answers[0].outcomes() == ["refunded"]
    assert all(a.status == 200 for a in answers)
    assert len(patches(fake_dub)) == 1
    assert fake_dub.commission("ORD-20")["amount"] == 9000  # type: ignore[index]


@pytest.mark.parametrize(
    "fault",
    [
        Status(500),
        Status(503),
        Status(429, retry_after_in=0.3),
        Reset(after_processing=True),
        Reset(after_processing=False),
    ],
    ids=["500", "503", "429-ms-retry-after", "reset-after-processing", "reset-before"],
)
def test_partial_refund_patch_faults_leave_the_right_absolute_amount(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], fault: Any
) -> None:
    """A PATCH that fails (5xx, 429 with Dub's ms Retry-After, a reset before or after Dub
    applied it) is retried with the same absolute amount: subtracted once."""
    b = lbridge()
    cid = fake_dub.add_commission("ORD-f", 10000)
    fake_dub.script(("commission", cid), fault)
    answers = b.deliver([refund_event("f", "ORD-f", total=25)])
    assert answers[-1].status == 200, answers[-1].body
    assert answers[-1].outcomes() == ["refunded"]
    assert fake_dub.commission("ORD-f")["amount"] == 7500  # type: ignore[index]
    sent = [r.body for r in fake_dub.calls("PATCH", "/commissions/")]
    assert sent and all(body == {"saleAmount": 7500} for body in sent)
    assert_settled(b.db)


@pytest.mark.parametrize(
    "fault",
    [Status(500), Status(429, retry_after_in=0.3), Reset(after_processing=False)],
    ids=["500", "429-ms-retry-after", "reset"],
)
def test_refund_get_faults_are_retried(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], fault: Any
) -> None:
    """A GET /commissions that fails is retried; the refund is PATCHed once."""
    b = lbridge()
    fake_dub.add_commission("ORD-g", 4000)
    fake_dub.script(("commissions", "ORD-g"), fault)
    answers = b.deliver([refund_event("g", "ORD-g")])
    assert answers[-1].outcomes() == ["refunded"]
    assert patches(fake_dub) == [{"status": "refunded"}]


def test_full_refund_whose_answer_was_lost_is_not_rejected_on_retry(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A full refund Dub applied but whose answer was lost: Dub refusing the retried PATCH
    ('already in the refunded status') is read back from the commission as `refunded`."""
    b = lbridge()
    cid = fake_dub.add_commission("ORD-l", 4000)
    fake_dub.script(("commission", cid), Reset(after_processing=True))
    answers = b.deliver([refund_event("l", "ORD-l")])
    assert answers[-1].outcomes() == ["refunded"]
    assert patches(fake_dub) == [{"status": "refunded"}]  # the retried PATCH changed nothing
    assert assert_settled(b.db) == {"delivered": 1}

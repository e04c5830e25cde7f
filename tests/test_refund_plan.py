"""The refund arithmetic (``delivery.lifecycle``), pure: whatever the sequence of partial
refunds and retries, the commission ends at the sale less what was refunded, once each."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.outcomes import Outcome, State
from bridge.delivery.lifecycle import COMMISSION_WAIT_SECONDS, PIN, plan_refund, replan
from bridge.ledger.base import Row


def row(action: str, body: dict[str, Any], n: int) -> Row:
    return Row(f"m{n}", action, action, None, None, State.DELIVERED, 1, body, None, 200, None,
               float(n), float(n))  # fmt: skip


def apply(commission: dict[str, Any], patch: dict[str, Any], rate: float = 1.0) -> None:
    """Dub's PATCH: status wins for refunded; an absolute amount is converted, clamped at 0."""
    if "saleAmount" in patch:
        commission["amount"] = max(round(patch["saleAmount"] * rate), 0)
    if patch.get("status"):
        commission["status"] = patch["status"]


@given(
    sale=st.integers(1, 10**9),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    lost=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_usd_partial_refunds_with_lost_answers_subtract_once_each(
    sale: int, cuts: list[float], lost: list[bool]
) -> None:
    """USD refunds, each PATCH's answer possibly lost and retried with its pin: the amount
    ends at sale - sum(refunds) (or refunded at 0); never lower, never an extra refund."""
    commission = {"id": "cm_1", "amount": sale, "currency": "usd", "status": "pending"}
    left = sale
    for index, cut in enumerate(cuts):
        amount = int(left * cut)
        if commission["status"] == "refunded":
            break
        plan = plan_refund({"invoiceId": "I", "amount": amount}, commission, [])
        assert plan.outcome is Outcome.READY and plan.patch is not None
        apply(commission, plan.patch)
        if lost[index]:  # the answer was lost: the retry replans from the pin
            pin = plan.pinned({"invoiceId": "I"})[PIN]
            again = replan(pin, commission)
            assert again.patch is None or again.patch == plan.patch
            if again.patch is not None:
                apply(commission, again.patch)
        left -= amount
        if left == 0:
            assert commission["status"] == "refunded"
        else:
            assert commission["amount"] == left


@given(
    sale=st.integers(1, 10**7),
    refunds=st.lists(st.integers(1, 10**7), min_size=1, max_size=4),
)
def test_eur_refunds_start_from_the_sale_the_ledger_sent(sale: int, refunds: list[int]) -> None:
    """EUR refunds of a EUR sale: each PATCH is the sale's EUR amount less every refund so
    far, in EUR; one past what is left is a dead letter, never a clamp to 0."""
    sent = [row("sale", {"invoiceId": "I", "amount": sale, "currency": "eur"}, 0)]
    commission = {"id": "cm_1", "amount": round(sale * 1.1), "currency": "usd", "status": "pending"}
    left = sale
    for n, amount in enumerate(refunds, start=1):
        plan = plan_refund(
            {"invoiceId": "I", "amount": amount, "currency": "eur"}, commission, sent
        )
        if commission["status"] == "refunded":
            assert plan.outcome is Outcome.REFUNDED
            break
        if amount > left:
            assert plan.outcome is Outcome.INVALID and "exceeds" in (plan.reason or "")
            break
        left -= amount
        assert plan.patch is not None
        expected = {"status": "refunded"} if left == 0 else {"saleAmount": left, "currency": "eur"}
        assert plan.patch == expected
        apply(commission, plan.patch, rate=1.1)
        sent.append(row("refund", plan.pinned({"invoiceId": "I"}), n))


def test_a_refund_of_a_closed_commission_changes_nothing() -> None:
    """A commission already refunded (or canceled, duplicate, fraud): nothing to PATCH."""
    for status in ("refunded", "canceled", "duplicate", "fraud"):
        commission = {"id": "cm", "amount": 100, "status": status}
        plan = plan_refund({"invoiceId": "I"}, commission, [])
        assert plan.outcome is Outcome.REFUNDED and plan.patch is None


def test_a_commission_without_a_whole_amount_is_a_dead_letter() -> None:
    """A USD partial refund of a commission whose amount is not a whole number of cents."""
    plan = plan_refund({"invoiceId": "I", "amount": 5}, {"id": "cm", "amount": "x"}, [])
    assert plan.outcome is Outcome.INVALID


def test_no_commission_soon_after_the_sale_is_retried_later_skipped() -> None:
    """No commission within the wait after the ledger's sale: retry; after it: skipped."""
    sale = row("sale", {"invoiceId": "I", "amount": 100}, 1000)
    soon = plan_refund({"invoiceId": "I"}, None, [sale], now=1000 + 60)
    assert soon.outcome is Outcome.FAILED
    late = plan_refund({"invoiceId": "I"}, None, [sale], now=1000 + COMMISSION_WAIT_SECONDS + 1)
    assert late.outcome is Outcome.SKIPPED and "no partner referred" in (late.reason or "")

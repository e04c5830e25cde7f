"""What a refund PATCHes: pure, no I/O, from Dub's commission and what the ledger sent.

A refund is two calls: ``GET /commissions?invoiceId=`` finds the invoice's commission
(zero or one), then ``PATCH /commissions/{id}`` changes it. A partial refund PATCHes an
**absolute** ``saleAmount``, never ``modifySaleAmount``: it is worked out once, before the
PATCH, and pinned to the ledger row, so a retry (after a lost answer, a crash, a 5xx)
sends the same absolute amount and can never subtract twice.

Dub keeps a commission's amount in USD cents, converted when the sale came in; a PATCH in
another currency is converted at today's rate. So the bridge never subtracts across
currencies: a USD refund is taken from the commission's USD amount; a refund in another
currency from the sale the ledger sent for that invoice, in that sale's own currency,
less the partial refunds the bridge already made for it. When neither is known, or the
refund exceeds what is left, it is a dead letter that says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.outcomes import Outcome
from ..ledger.base import PINNED, Row

USD = "usd"
# A commission in these states no longer pays: a refund has nothing left to take back.
CLOSED = frozenset({"refunded", "duplicate", "canceled", "fraud"})
# Dub creates a sale's commission after the sale, in a queued workflow: a refund that finds
# none this soon after the bridge sent the sale retries instead of settling as skipped.
COMMISSION_WAIT_SECONDS = 3600.0
PIN = PINNED  # the key of a refund's request body that holds the PATCH worked out for it


@dataclass(frozen=True, slots=True)
class RefundPlan:
    """Either a PATCH to send (``commission``, ``patch``) or an outcome without one."""

    outcome: Outcome
    reason: str | None = None
    commission: str | None = None
    patch: dict[str, Any] | None = None

    def pinned(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The request body to keep with the claim: the event's, and this PATCH."""
        return {**body, PIN: {"commission": self.commission, "patch": self.patch}}


def no_commission(invoice: str) -> RefundPlan:
    return RefundPlan(
        Outcome.SKIPPED,
        f"no commission for invoice {invoice!r}: no partner referred this sale",
    )


def plan_refund(
    body: Mapping[str, Any],
    commission: Mapping[str, Any] | None,
    sent: Sequence[Row],
    now: float = 0.0,
) -> RefundPlan:
    """The PATCH for a refund ``body`` ({invoiceId, amount?, currency?}) of ``commission``
    (Dub's, None when there is none), given ``sent``: the ledger's delivered rows for that
    invoice (its sale, earlier refunds), and the time ``now``."""
    invoice = str(body["invoiceId"])
    if commission is None:
        recent = [
            r for r in sent if r.action == "sale" and r.updated_at > now - COMMISSION_WAIT_SECONDS
        ]
        if recent:
            return RefundPlan(
                Outcome.FAILED,
                f"no commission yet for invoice {invoice!r}, whose sale the bridge sent lately:"
                " Dub creates it after the sale; retry later",
            )
        return no_commission(invoice)
    commission_id = commission.get("id")
    if not isinstance(commission_id, str) or not commission_id:
        return RefundPlan(Outcome.FAILED, "Dub's commission has no id; retry later")
    status = commission.get("status")
    if status in CLOSED:
        return RefundPlan(Outcome.REFUNDED, f"the commission is already {status} in Dub")
    amount = body.get("amount")
    if amount is None:
        return RefundPlan(Outcome.READY, None, commission_id, {"status": "refunded"})
    currency = body.get("currency") or USD
    sale = _sale(sent)
    if sale is not None:
        sale_currency = sale.get("currency") or USD
        if sale_currency != currency:
            return _dead(
                f"the refund is in {currency.upper()} but the bridge sent invoice {invoice!r}'s"
                f" sale in {sale_currency.upper()}: it never subtracts across currencies;"
                " change the commission in Dub by hand"
            )
    if currency == USD and (commission.get("currency") or USD) == USD:
        left = commission.get("amount")
        if type(left) is not int and not (isinstance(left, float) and left.is_integer()):
            return _dead(f"Dub's commission {commission_id} has no whole amount ({left!r})")
        left, where = int(left), "the commission's amount in Dub"
    elif sale is not None:
        left, where = _left_of(sale, sent), "what is left of the sale the bridge sent"
    else:
        return _dead(
            f"the refund is in {currency.upper()}, Dub keeps commission {commission_id} in"
            f" USD cents, and the bridge has no record of invoice {invoice!r}'s sale in"
            f" {currency.upper()}: the absolute amount cannot be known; change it in Dub by hand"
        )
    if amount > left:
        return _dead(
            f"the refund of {amount} ({currency.upper()} minor units) exceeds {where}"
            f" ({left}): check the order; change the commission in Dub by hand"
        )
    if amount == left:
        # Dub would set refunded itself at 0; said outright, it also leaves the payout.
        return RefundPlan(Outcome.READY, None, commission_id, {"status": "refunded"})
    patch: dict[str, Any] = {"saleAmount": left - amount}
    if currency != USD:
        patch["currency"] = currency
    return RefundPlan(Outcome.READY, None, commission_id, patch)


def replan(pin: Mapping[str, Any], commission: Mapping[str, Any] | None) -> RefundPlan:
    """A retry of a refund whose PATCH was pinned: the same PATCH, unless Dub shows it done."""
    commission_id, patch = pin.get("commission"), pin.get("patch")
    if not isinstance(commission_id, str) or not isinstance(patch, dict):
        return _dead(f"the refund's kept PATCH is unreadable ({dict(pin)!r})")
    if commission is not None and commission.get("id") == commission_id:
        status = commission.get("status")
        if patch.get("status") == "refunded" and status in CLOSED:
            return RefundPlan(Outcome.REFUNDED, f"the commission is already {status} in Dub")
    return RefundPlan(Outcome.READY, None, commission_id, dict(patch))


def _sale(sent: Sequence[Row]) -> dict[str, Any] | None:
    for row in sent:
        if row.action == "sale" and isinstance(row.request_body, dict):
            amount = row.request_body.get("amount")
            if type(amount) is int:
                return row.request_body
    return None


def _left_of(sale: Mapping[str, Any], sent: Sequence[Row]) -> int:
    """The sale's amount after the partial refunds the bridge already made, in its currency."""
    left = int(sale["amount"])
    for row in sent:
        body = row.request_body
        if row.action != "refund" or not isinstance(body, dict):
            continue
        patch = (body.get(PIN) or {}).get("patch") or {}
        if patch.get("status") == "refunded":
            return 0
        if type(patch.get("saleAmount")) is int:
            left = min(left, patch["saleAmount"])
    return left


def _dead(reason: str) -> RefundPlan:
    return RefundPlan(Outcome.INVALID, reason)

"""What the lifecycle tests share: mapping files with the three lifecycle actions beside the
shipped lead and sale, Segment's refund, identify and delete events, and a bridge factory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.helpers.faultkit import MAPPINGS, just_now

REFUND_MAPPING, UPDATE_MAPPING, DELETE_MAPPING = "order-refund", "customer-update", "user-delete"

LIFECYCLE_YAML = """
version: 1
mappings:
  - name: order-refund
    trigger: {event: Order Refunded}
    action: refund
    fields:
      invoiceId: {path: $.properties.order_id, transform: string}
      amount: {path: $.properties.total, transform: minor_units}
      currency: {path: $.properties.currency, transform: lower, default: usd}
  - name: customer-update
    trigger: {type: identify}
    action: customer_update
    fields:
      customerExternalId: {path: $.userId, transform: string}
      name: $.traits.name
      email: $.traits.email
      avatar: $.traits.avatar
      stripeCustomerId: $.traits.stripe_customer_id
  - name: user-delete
    trigger: {type: delete}
    action: customer_delete
    fields:
      customerExternalId: {path: $.userId, transform: string}
"""


def lifecycle_mappings(tmp_path: Path) -> Path:
    """The shipped mapping files and ``lifecycle.yaml``, in a directory of their own."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    for name in ("leads.yaml", "sales.yaml"):
        shutil.copy(MAPPINGS / name, folder / name)
    (folder / "lifecycle.yaml").write_text(LIFECYCLE_YAML)
    return folder


def refund_event(
    n: int | str, order: str, total: float | None = None, currency: str = "USD"
) -> dict[str, Any]:
    properties: dict[str, Any] = {"order_id": order, "currency": currency}
    if total is not None:
        properties["total"] = total
    return {
        "type": "track",
        "event": "Order Refunded",
        "messageId": f"msg-refund-{n}",
        "userId": "buyer-1",
        "timestamp": just_now(),
        "properties": properties,
    }


def identify_event(n: int | str, user: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"msg-identify-{n}",
        "userId": user,
        "timestamp": just_now(),
        "traits": traits,
    }


def delete_event(n: int | str, user: str) -> dict[str, Any]:
    return {
        "type": "delete",
        "messageId": f"msg-delete-{n}",
        "userId": user,
        "timestamp": just_now(),
    }

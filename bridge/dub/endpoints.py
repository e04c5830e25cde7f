"""Dub's endpoints, each described once: path, fields and rules, request model, answer reading.

Adding a Dub action is one ``Endpoint`` here and its tests: the loader learns its
fields, the engine its rules and model, the deliverer its path and how to read a
2xx answer, from this table alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, create_model

from ..core.masking import mask_value
from ..core.outcomes import Outcome
from .fields import (
    EVENT_NAME_MAX,
    NAME_MAX,
    Amount,
    Currency,
    Email,
    FieldRejected,
    HttpUrl,
    Identity,
    IdentityRejected,
    Metadata,
    OneOf,
    Quantity,
    Rule,
    Text,
)

PAYMENT_PROCESSORS = (
    "stripe",
    "shopify",
    "polar",
    "paddle",
    "apple",
    "revenuecat",
    "dub",
    "custom",
)
LEAD_MODES = ("async", "wait", "deferred")


@dataclass(frozen=True, slots=True)
class DubField:
    rule: Rule
    needed: bool = False  # Dub needs it in every body: each mapping must give it
    strict: bool = False  # a bad value makes the event invalid instead of being dropped

    @property
    def fatal(self) -> bool:
        return self.needed or self.strict


@dataclass(frozen=True)
class Endpoint:
    action: str
    path: str
    fields: Mapping[str, DubField]
    settle: Callable[[dict[str, Any]], Outcome]  # what a 2xx JSON object means
    method: str = "POST"
    # The body field named in the path (``{customer}`` in ``path``): sent there, not in the body.
    in_path: str | None = None
    # Its call is computed from what Dub answers first: a retry sends the body pinned then.
    keeps_body: bool = False
    model: type[BaseModel] = field(init=False)
    # Each field's rule check, looked up once: clean runs for every planned event.
    field_checks: Mapping[str, Callable[[Any], tuple[Any, str | None]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # An optional field defaults to absent, and an explicit null is refused like any value
        # the rule refuses: the bridge never sends null.
        definitions: dict[str, Any] = {
            name: (f.rule.annotation(), ... if f.needed else None)
            for name, f in self.fields.items()
        }
        model = create_model(
            f"{self.action.capitalize()}Request",
            __config__=ConfigDict(extra="forbid", strict=True, frozen=True),
            **definitions,
        )
        object.__setattr__(self, "model", model)
        checks = {name: f.rule.check for name, f in self.fields.items()}
        object.__setattr__(self, "field_checks", checks)

    def request(self, body: Mapping[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        """(method, path, JSON body or None) of the one call that sends ``body``."""
        if self.in_path is None:
            return self.method, self.path, dict(body)
        rest = {k: v for k, v in body.items() if k != self.in_path}
        # Dub strips one ``ext_`` and looks the rest up as the external id, so an id that
        # itself begins with ext_ is reached as ext_ext_...; quoted, since it is the sender's.
        path = self.path.format(customer=quote(str(body[self.in_path]), safe=""))
        return self.method, path, (rest if self.method != "DELETE" else None)

    @property
    def needed(self) -> frozenset[str]:
        return frozenset(name for name, f in self.fields.items() if f.needed)

    def clean(
        self,
        body: Mapping[str, Any],
        required: frozenset[str] = frozenset(),
        origins: Mapping[str, str | None] | None = None,
    ) -> tuple[dict[str, Any], list[str], list[str]]:
        """Apply Dub's rules: (clean body, errors, warnings). Errors mean: do not send.

        A bad value in a field Dub needs, a strict field, or one the mapping marks
        ``required`` is an error, and so is an unreadable id in any field; in any other
        field a bad value is dropped with a warning.
        """
        clean: dict[str, Any] = {}
        errors: list[str] = []
        warnings: list[str] = []
        checks = self.field_checks
        for name, value in body.items():
            try:
                cleaned, note = checks[name](value)
            except FieldRejected as exc:
                spec = self.fields[name]
                fatal = spec.fatal or name in required or isinstance(exc, IdentityRejected)
                problem = rejection(name, value, (origins or {}).get(name), exc, dropped=not fatal)
                (errors if fatal else warnings).append(problem)
                continue
            if note:
                warnings.append(f"{name}: {note}")
            clean[name] = cleaned
        return clean, errors, warnings


def rejection(name: str, value: Any, path: str | None, exc: FieldRejected, *, dropped: bool) -> str:
    """How a value a rule refused is reported: the field, why, the path and the masked value."""
    shown = f"path {path}, value " if path else "value "
    shown += mask_value(name, value)
    return f"{name}: {'dropped, ' if dropped else ''}{exc} ({shown})"


def _lead_settled(body: dict[str, Any]) -> Outcome:
    # link: null is Dub's lead de-duplication: nothing was recorded this time.
    return Outcome.DEDUPLICATED if body.get("link", "") is None else Outcome.DELIVERED


def _sale_settled(body: dict[str, Any]) -> Outcome:
    # sale: null: an unknown customer without a click, or amount 0; nothing recorded.
    return Outcome.NOT_RECORDED if body.get("sale", "") is None else Outcome.DELIVERED


_CUSTOMER = {
    "customerName": DubField(Text(NAME_MAX)),
    "customerEmail": DubField(Email()),
    "customerAvatar": DubField(HttpUrl(trim=False)),
    "metadata": DubField(Metadata()),
}
LEAD = Endpoint(
    "lead",
    "/track/lead",
    {
        # "" is Dub's deferred lead: the click comes from the customer's earlier
        # `mode: deferred` lead. Only a literal or default gives "": a path that finds ""
        # finds nothing (an empty value counts as absent).
        "clickId": DubField(Text(trim=False, empty_ok=True), needed=True),
        "eventName": DubField(Text(EVENT_NAME_MAX), needed=True),
        "customerExternalId": DubField(Identity(NAME_MAX, trim=False), needed=True),
        "mode": DubField(OneOf(*LEAD_MODES)),
        "eventQuantity": DubField(Quantity()),
        **_CUSTOMER,
    },
    _lead_settled,
)
SALE = Endpoint(
    "sale",
    "/track/sale",
    {
        "customerExternalId": DubField(Identity(NAME_MAX, trim=False), needed=True),
        "amount": DubField(Amount(), needed=True),
        # Dub defaults a missing currency to usd; a wrong one would mis-value the amount by
        # up to 100x: invalid, never dropped.
        "currency": DubField(Currency(), strict=True),
        "eventName": DubField(Text(EVENT_NAME_MAX)),
        "paymentProcessor": DubField(OneOf(*PAYMENT_PROCESSORS)),
        "invoiceId": DubField(Identity()),
        "leadEventName": DubField(Text(EVENT_NAME_MAX)),
        "clickId": DubField(Text()),
        **_CUSTOMER,
    },
    _sale_settled,
)


def _changed(body: dict[str, Any]) -> Outcome:
    return Outcome.DELIVERED


REFUND = Endpoint(
    "refund",
    # Two calls: GET /commissions?invoiceId=, then PATCH /commissions/{id} (see
    # delivery.lifecycle); this path is the first one's.
    "/commissions",
    {
        "invoiceId": DubField(Text(), needed=True),
        # Absent: a full refund. Minor units of ``currency``, as a sale's amount.
        "amount": DubField(Amount(), strict=True),
        "currency": DubField(Currency(), strict=True),
    },
    _changed,
    method="PATCH",
    keeps_body=True,
)
CUSTOMER_UPDATE = Endpoint(
    "customer_update",
    "/customers/ext_{customer}",
    {
        "customerExternalId": DubField(Text(NAME_MAX, trim=False), needed=True),
        "name": DubField(Text(NAME_MAX)),
        "email": DubField(Email()),
        "avatar": DubField(Text()),
        "stripeCustomerId": DubField(Text()),
    },
    _changed,
    method="PATCH",
    in_path="customerExternalId",
)
CUSTOMER_DELETE = Endpoint(
    "customer_delete",
    "/customers/ext_{customer}",
    {"customerExternalId": DubField(Text(NAME_MAX, trim=False), needed=True)},
    _changed,
    method="DELETE",
    in_path="customerExternalId",
)
ENDPOINTS: dict[str, Endpoint] = {
    e.action: e for e in (LEAD, SALE, REFUND, CUSTOMER_UPDATE, CUSTOMER_DELETE)
}
DUB_FIELDS: dict[str, frozenset[str]] = {a: frozenset(e.fields) for a, e in ENDPOINTS.items()}

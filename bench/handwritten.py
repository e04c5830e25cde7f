"""Benchmark 1b: the default mappings written out by hand, the practical limit for Python.

Same input and output as the engine (event JSON text in, Dub body JSON text out), same
codec (bridge.core.jsoncodec), the same decimal cents and the same rules that matter on real
traffic (blank counts as missing, userId and order id as text, email pattern, name length,
metadata size), but no mapping interpreter, no pydantic, no Result objects.
``run.py`` checks that its bodies equal the engine's on the whole corpus.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from bridge.core.jsoncodec import dumps, loads
from bridge.dub.currencies import ZERO_DECIMAL_CURRENCIES
from bridge.dub.fields import EMAIL_RE

LEAD_EVENTS = frozenset({"Sign Up", "Signed Up"})
PROCESSORS = frozenset(
    {"stripe", "shopify", "polar", "paddle", "apple", "revenuecat", "dub", "custom"}
)
MAX_MINOR_UNITS = 9007199254740991
_HUNDRED = Decimal(100)
_ONE = Decimal(1)
_email_match = EMAIL_RE.match
_number_match = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$").match
_currency_match = re.compile(r"^[a-z]{3}$").match


def _present(value: Any) -> bool:
    # The engine's is_empty: None, blank text, [] and {} are "no value".
    if value is None:
        return False
    if type(value) is str:
        return bool(value.strip())
    if type(value) is dict or type(value) is list:
        return bool(value)
    return True


def _first(*values: Any) -> Any:
    for value in values:
        if _present(value):
            return value
    return None


def _text(value: Any) -> str | None:
    """userId / order_id as Dub wants them: text (numbers as their digits)."""
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return str(int(value)) if value.is_integer() else repr(value)
    if type(value) is bool:
        return "true" if value else "false"
    return None


def _minor_units(value: Any, currency: str) -> int | None:
    """Exact cents via Decimal, half away from zero; None when not a usable amount."""
    if type(value) is float and math.isfinite(value):
        amount = Decimal(repr(value))
    elif type(value) is int:
        amount = Decimal(value)
    elif type(value) is str and _number_match(value.strip()):
        amount = Decimal(value.strip())
    else:
        return None
    if amount < 0:
        return None
    if currency not in ZERO_DECIMAL_CURRENCIES:
        amount *= _HUNDRED
    if amount > MAX_MINOR_UNITS:
        return None
    return int(amount.quantize(_ONE, rounding=ROUND_HALF_UP))


def _customer(body: dict[str, Any], traits: dict[str, Any], props: dict[str, Any]) -> None:
    name = _first(traits.get("name"), props.get("name"))
    if type(name) is str:
        body["customerName"] = name[:100]
    email = _first(traits.get("email"), props.get("email"))
    if type(email) is str and len(email) <= 100 and _email_match(email):
        body["customerEmail"] = email
    avatar = _first(traits.get("avatar"), props.get("avatar"))
    if type(avatar) is str:
        body["customerAvatar"] = avatar


def _metadata(body: dict[str, Any], props: dict[str, Any]) -> None:
    # UTF-8 length >= UTF-16 length, so properties under the limit in bytes fit Dub's limit.
    # Over it, this drops metadata whole where the engine trims keys: never seen in the corpus.
    if props and len(dumps(props)) <= 10_000:
        body["metadata"] = props


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def lead(event: dict[str, Any]) -> dict[str, Any] | None:
    context = _dict(event.get("context"))
    traits = _dict(context.get("traits"))
    dub = _dict(_dict(event.get("integrations")).get("Dub (Actions)"))
    click_id = _first(traits.get("clickId"), dub.get("dub_id"))
    customer = _text(event.get("userId"))
    if type(click_id) is not str or not customer or len(customer) > 100:
        return None
    props = _dict(event.get("properties"))
    body: dict[str, Any] = {
        "clickId": click_id,
        "eventName": event["event"],
        "customerExternalId": customer,
    }
    _customer(body, traits, props)
    body["mode"] = "wait"
    _metadata(body, props)
    return body


def sale(event: dict[str, Any]) -> dict[str, Any] | None:
    props = _dict(event.get("properties"))
    customer = _text(event.get("userId"))
    if not customer or len(customer) > 100:
        return None
    currency = props.get("currency")
    currency = currency.lower() if type(currency) is str and currency.strip() else "usd"
    if not _currency_match(currency):
        return None
    amount = _minor_units(_first(props.get("revenue"), props.get("total")), currency)
    if not amount:  # missing, unreadable, negative or zero: nothing to send
        return None
    context = _dict(event.get("context"))
    traits = _dict(context.get("traits"))
    processor = props.get("payment_processor")
    processor = processor.lower() if type(processor) is str and processor.strip() else "custom"
    body: dict[str, Any] = {
        "currency": currency,
        "customerExternalId": customer,
        "amount": amount,
        "invoiceId": _text(_first(props.get("order_id"), event.get("messageId"))),
        "paymentProcessor": processor if processor in PROCESSORS else "custom",
        "eventName": event["event"],
    }
    dub = _dict(_dict(event.get("integrations")).get("Dub (Actions)"))
    click_id = _first(traits.get("clickId"), dub.get("dub_id"))
    if type(click_id) is str:
        body["clickId"] = click_id
    _customer(body, traits, props)
    _metadata(body, props)
    return body


def plan(event: Any) -> list[tuple[str, dict[str, Any]]]:
    """(request path, body) for every Dub call the event causes."""
    if type(event) is not dict or event.get("type") != "track":
        return []
    name = event.get("event")
    if name in LEAD_EVENTS:
        body = lead(event)
        return [] if body is None else [("/track/lead", body)]
    if name == "Order Completed":
        body = sale(event)
        return [] if body is None else [("/track/sale", body)]
    return []


def map_line(line: bytes) -> list[bytes]:
    """The measured unit: event JSON text in, request body JSON texts out."""
    return [dumps(body) for _, body in plan(loads(line))]

"""Dub's two request bodies: the field rules from Dub's server, and the pydantic models.

``clean_body`` applies Dub's rules field by field before anything is sent: a
required field that breaks a rule makes the event invalid; an optional field that
Dub would reject is trimmed or dropped with a warning, so the conversion is still
sent. The pydantic models are the last gate: a body that passed ``clean_body``
always validates, and a test holds them to Dub's OpenAPI file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .amounts import CURRENCY_RE, MAX_MINOR_UNITS
from .jsoncodec import JSONEncodeFailure, dumps_str
from .masking import mask_value

PATHS = {"lead": "/track/lead", "sale": "/track/sale"}
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
# Dub's own email pattern (track-openapi.json), so we drop exactly what Dub would refuse.
EMAIL_RE = re.compile(
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)
METADATA_MAX = 10_000
NAME_MAX = 100
EVENT_NAME_MAX = 255


class FieldRejected(ValueError):
    """Dub would refuse this value for this field."""


@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], tuple[Any, str | None]]  # -> (clean value, warning or None)
    required: bool = False


def _text(
    max_len: int | None = None, *, trim: bool = True
) -> Callable[[Any], tuple[Any, str | None]]:
    def check(value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str):
            raise FieldRejected(f"must be text, got {type(value).__name__}")
        if not value:
            raise FieldRejected("must not be empty")
        if max_len is not None and len(value) > max_len // 2 and _js_length(value) > max_len:
            size = _js_length(value)
            if not trim:
                raise FieldRejected(f"is {size} characters, Dub allows at most {max_len}")
            return _js_trim(value, max_len), f"trimmed from {size} to {max_len} characters"
        return value, None

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], tuple[Any, str | None]]:
    def check(value: Any) -> tuple[Any, str | None]:
        if value not in choices:
            raise FieldRejected(f"must be one of {', '.join(choices)}")
        return value, None

    return check


def _email(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str) or _js_length(value) > NAME_MAX or not EMAIL_RE.match(value):
        raise FieldRejected("is not an email address Dub accepts (at most 100 characters)")
    return value, None


def _amount(value: Any) -> tuple[Any, str | None]:
    if type(value) is not int:
        raise FieldRejected("must be an integer in minor units (hint: transform: minor_units)")
    if not 0 <= value <= MAX_MINOR_UNITS:
        raise FieldRejected(f"must be between 0 and {MAX_MINOR_UNITS}")
    return value, None


def _currency(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str) or not CURRENCY_RE.match(value):
        raise FieldRejected(
            "must be a three-letter lower-case currency code (hint: transform: lower)"
        )
    return value, None


def _quantity(value: Any) -> tuple[Any, str | None]:
    if type(value) is not int or not 1 <= value <= 100:
        raise FieldRejected("must be an integer from 1 to 100")
    return value, None


def _metadata(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, dict):
        raise FieldRejected(f"must be an object, got {type(value).__name__}")
    try:
        size = _js_length(dumps_str(value))
    except JSONEncodeFailure:
        raise FieldRejected("cannot be written as JSON (nested too deeply)") from None
    if size <= METADATA_MAX:
        return value, None
    # Keep what fits: drop the largest keys first, so small attribution keys survive.
    sizes = sorted(
        ((_js_length(dumps_str(v)) + len(k) + 4, k) for k, v in value.items()), reverse=True
    )
    kept = dict(value)
    dropped: list[str] = []
    for _, key in sizes:
        if _js_length(dumps_str(kept)) <= METADATA_MAX:
            break
        del kept[key]
        dropped.append(key)
    note = f"was {size} characters as JSON (Dub allows {METADATA_MAX}); dropped keys: "
    return kept, note + ", ".join(dropped)


def _js_length(text: str) -> int:
    """Length as JavaScript counts it (UTF-16 code units), which is how Dub measures."""
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _js_trim(text: str, limit: int) -> str:
    """The longest prefix of at most ``limit`` UTF-16 units, never splitting a character."""
    units = 0
    for index, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text


_CUSTOMER = {
    "customerName": Rule(_text(NAME_MAX)),
    "customerEmail": Rule(_email),
    "customerAvatar": Rule(_text()),
    "metadata": Rule(_metadata),
}
RULES: dict[str, dict[str, Rule]] = {
    "lead": {
        "clickId": Rule(_text(trim=False), required=True),
        "eventName": Rule(_text(EVENT_NAME_MAX), required=True),
        "customerExternalId": Rule(_text(NAME_MAX, trim=False), required=True),
        "mode": Rule(_one_of(LEAD_MODES)),
        "eventQuantity": Rule(_quantity),
        **_CUSTOMER,
    },
    "sale": {
        "customerExternalId": Rule(_text(NAME_MAX, trim=False), required=True),
        "amount": Rule(_amount, required=True),
        # A wrong currency would mis-value the amount by up to 100x: invalid, never dropped.
        "currency": Rule(_currency, required=True),
        "eventName": Rule(_text(EVENT_NAME_MAX)),
        "paymentProcessor": Rule(_one_of(PAYMENT_PROCESSORS)),
        "invoiceId": Rule(_text()),
        "leadEventName": Rule(_text(EVENT_NAME_MAX)),
        "clickId": Rule(_text()),
        **_CUSTOMER,
    },
}
# Fields Dub needs in every body; currency is needed only once present (Dub defaults to usd).
REQUIRED: dict[str, frozenset[str]] = {
    "lead": frozenset({"clickId", "eventName", "customerExternalId"}),
    "sale": frozenset({"customerExternalId", "amount"}),
}


def clean_body(
    action: str,
    body: dict[str, Any],
    required: frozenset[str] = frozenset(),
    sources: Mapping[str, str | None] | None = None,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Apply Dub's field rules: (clean body, errors, warnings). Errors mean: do not send.

    A bad value in a field Dub needs (or the mapping marks ``required``) is an error;
    in any other field it is dropped with a warning.
    """
    rules = RULES[action]
    clean: dict[str, Any] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for name, value in body.items():
        rule = rules[name]
        try:
            cleaned, note = rule.check(value)
        except FieldRejected as exc:
            path = (sources or {}).get(name)
            shown = f"path {path}, value " if path else "value "
            shown += mask_value(name, value)
            if rule.required or name in required:
                errors.append(f"{name}: {exc} ({shown})")
            else:
                warnings.append(f"{name}: dropped, {exc} ({shown})")
            continue
        if note:
            warnings.append(f"{name}: {note}")
        clean[name] = cleaned
    return clean, errors, warnings


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, regex_engine="python-re")


class LeadRequest(_Body):
    """POST /track/lead, as the bridge sends it (no nulls: absent keys stay absent)."""

    clickId: str
    eventName: str = Field(min_length=1, max_length=EVENT_NAME_MAX)
    customerExternalId: str = Field(min_length=1, max_length=NAME_MAX)
    customerName: str | None = Field(None, max_length=NAME_MAX)
    customerEmail: str | None = Field(None, max_length=NAME_MAX, pattern=EMAIL_RE.pattern)
    customerAvatar: str | None = None
    mode: Literal["async", "wait", "deferred"] | None = None
    eventQuantity: int | None = Field(None, ge=1, le=100)
    metadata: dict[str, Any] | None = None


class SaleRequest(_Body):
    """POST /track/sale, as the bridge sends it."""

    customerExternalId: str = Field(min_length=1, max_length=NAME_MAX)
    amount: int = Field(ge=0, le=MAX_MINOR_UNITS)
    currency: str | None = Field(None, pattern=CURRENCY_RE.pattern)
    eventName: str | None = Field(None, min_length=1, max_length=EVENT_NAME_MAX)
    paymentProcessor: (
        Literal["stripe", "shopify", "polar", "paddle", "apple", "revenuecat", "dub", "custom"]
        | None
    ) = None
    invoiceId: str | None = None
    leadEventName: str | None = None
    clickId: str | None = None
    customerName: str | None = Field(None, max_length=NAME_MAX)
    customerEmail: str | None = Field(None, max_length=NAME_MAX, pattern=EMAIL_RE.pattern)
    customerAvatar: str | None = None
    metadata: dict[str, Any] | None = None


MODELS: dict[str, type[_Body]] = {"lead": LeadRequest, "sale": SaleRequest}
DUB_FIELDS: dict[str, frozenset[str]] = {a: frozenset(m.model_fields) for a, m in MODELS.items()}

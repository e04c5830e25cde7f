"""Dub's field rules, written once: each rule cleans a value and also types the request model.

A rule's ``check`` returns the value to send and a warning when it had to change
it (an over-long name trimmed), or raises ``FieldRejected`` when Dub would refuse
the value. The pydantic request models are built from the same rules in their
strict form (no change allowed), so the two can never disagree. Lengths count
UTF-16 units, as Dub's JavaScript does.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator

from ..core.jsoncodec import REPLACEMENT, JSONEncodeFailure, dumps_str
from .currencies import CURRENCY_RE, MAX_MINOR_UNITS

# Dub's own email pattern (track-openapi.json), so we drop exactly what Dub would refuse.
EMAIL_RE = re.compile(
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)
METADATA_MAX = 10_000
NAME_MAX = 100
EVENT_NAME_MAX = 255


class FieldRejected(ValueError):
    """Dub would refuse this value for this field."""


class IdentityRejected(FieldRejected):
    """Refused in any field, optional or not: sent or dropped, the value would do harm."""


class Rule:
    """One kind of Dub field value."""

    python_type: Any = str

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(value to send, warning when it was changed); ``FieldRejected`` when refused."""
        raise NotImplementedError

    def annotation(self) -> Any:
        """The strict form, for the pydantic request model: valid only as it is."""

        def strict(value: Any) -> Any:
            try:
                clean, note = self.check(value)
            except FieldRejected as exc:
                raise ValueError(str(exc)) from None
            if note is not None:
                raise ValueError(note)
            return clean

        # Before: the rule sees the raw value, so a float amount is refused, not coerced.
        return Annotated[self.python_type, BeforeValidator(strict)]


class Text(Rule):
    """Non-empty text, at most ``max_len`` UTF-16 units: trimmed when ``trim``, else refused.

    ``empty_ok`` lets "" through, for the one field where Dub gives it a meaning: a lead's
    ``clickId: ""`` asks Dub to take the click stored by an earlier deferred lead.
    """

    def __init__(self, max_len: int | None = None, *, trim: bool = True, empty_ok: bool = False):
        self.max_len = max_len
        self.trim = trim
        self.empty_ok = empty_ok

    def check(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str):
            raise FieldRejected(f"must be text, got {type(value).__name__}")
        if not value and not self.empty_ok:
            raise FieldRejected("must not be empty")
        limit = self.max_len
        if limit is not None and len(value) > limit // 2 and js_length(value) > limit:
            size = js_length(value)
            if not self.trim:
                raise FieldRejected(f"is {size} characters, Dub allows at most {limit}")
            return js_trim(value, limit), f"trimmed from {size} to {limit} characters"
        return value, None


class Identity(Text):
    """Text that names one customer or one sale (``customerExternalId``, ``invoiceId``).

    U+FFFD is what unreadable text becomes (an invalid UTF-8 byte, a lone surrogate, or the
    sender's own replacement): two different ids would read as one, merging two customers
    or making Dub swallow a second sale as a repeat. Such a value makes the event invalid,
    even in an optional field, since dropping an invoiceId would also change the sale.
    """

    def check(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str) and REPLACEMENT in value:
            raise IdentityRejected(
                "holds U+FFFD, the mark of unreadable text (an invalid byte or a lone "
                "surrogate): two different ids could read the same"
            )
        return super().check(value)


class HttpUrl(Text):
    """An http(s) URL with a host, as Dub's schema asks of ``customerAvatar``."""

    def check(self, value: Any) -> tuple[Any, str | None]:
        value, note = super().check(value)
        try:
            url = urlsplit(value)
        except ValueError:  # a bracketed host that is not an IP address
            url = None
        if url is None or url.scheme.lower() not in ("http", "https") or not url.hostname:
            raise FieldRejected("must be an http(s) URL")
        return value, note


class OneOf(Rule):
    def __init__(self, *choices: str):
        self.choices = choices

    def check(self, value: Any) -> tuple[Any, str | None]:
        if value not in self.choices:
            raise FieldRejected(f"must be one of {', '.join(self.choices)}")
        return value, None


class Email(Rule):
    def check(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str) or js_length(value) > NAME_MAX or not EMAIL_RE.match(value):
            raise FieldRejected("is not an email address Dub accepts (at most 100 characters)")
        return value, None


class Amount(Rule):
    python_type = int

    def check(self, value: Any) -> tuple[Any, str | None]:
        if type(value) is not int:
            raise FieldRejected("must be an integer in minor units (hint: transform: minor_units)")
        if not 0 <= value <= MAX_MINOR_UNITS:
            raise FieldRejected(f"must be between 0 and {MAX_MINOR_UNITS}")
        return value, None


class Currency(Rule):
    def check(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str) or not CURRENCY_RE.match(value):
            # `lower` is suggested only when it would help: a value that is already
            # lower-case (a mapping that has `lower` gives one) needs another fix.
            if isinstance(value, str) and CURRENCY_RE.match(value.lower()):
                hint = f"hint: {value.lower()!r}; transform: lower makes an event's value so"
            else:
                hint = "hint: map other spellings to a code with {map: {...}}"
            raise FieldRejected(f"must be a three-letter lower-case currency code ({hint})")
        return value, None


class Quantity(Rule):
    python_type = int

    def check(self, value: Any) -> tuple[Any, str | None]:
        if type(value) is not int or not 1 <= value <= 100:
            raise FieldRejected("must be an integer from 1 to 100")
        return value, None


class Metadata(Rule):
    """An object of at most 10,000 characters as JSON; the largest keys go first when over."""

    python_type = dict[str, Any]

    def check(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, dict):
            raise FieldRejected(f"must be an object, got {type(value).__name__}")
        notes: list[str] = []
        try:
            size = js_length(dumps_str(value))
        except JSONEncodeFailure:
            # NaN, Infinity or 1e400 from a lenient sender: JSON has no such number, and Dub
            # would refuse the whole body for one. The rest of the metadata still goes.
            try:
                value, odd = finite_only(value)
            except RecursionError:
                odd = []
            if not odd:
                raise FieldRejected("cannot be written as JSON (nested too deeply)") from None
            shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
            notes.append(f"dropped numbers JSON cannot hold (NaN, Infinity, 1e400) at {shown}")
            try:
                size = js_length(dumps_str(value))
            except JSONEncodeFailure:
                raise FieldRejected("cannot be written as JSON (nested too deeply)") from None
        if size <= METADATA_MAX:
            return value, "; ".join(notes) or None
        # Keep what fits: drop the largest keys first, so small attribution keys survive.
        sizes = sorted(
            ((js_length(dumps_str(v)) + len(k) + 4, k) for k, v in value.items()), reverse=True
        )
        kept = dict(value)
        dropped: list[str] = []
        for _, key in sizes:
            if js_length(dumps_str(kept)) <= METADATA_MAX:
                break
            del kept[key]
            dropped.append(key)
        note = f"was {size} characters as JSON (Dub allows {METADATA_MAX}); dropped keys: "
        return kept, "; ".join([*notes, note + ", ".join(dropped)])


def finite_only(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` without the numbers that are not finite, and where each one was.

    Raises ``RecursionError`` for nesting deeper than Python's stack.
    """
    odd: list[str] = []
    if isinstance(value, dict):
        kept_dict = {}
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if _not_finite(item):
                odd.append(inner)
            else:
                kept_dict[key], more = finite_only(item, inner)
                odd += more
        return kept_dict, odd
    if isinstance(value, list):
        kept_list = []
        for index, item in enumerate(value):
            inner = f"{where}[{index}]"
            if _not_finite(item):
                odd.append(inner)
            else:
                kept, more = finite_only(item, inner)
                kept_list.append(kept)
                odd += more
        return kept_list, odd
    return value, odd


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def js_length(text: str) -> int:
    """Length as JavaScript counts it (UTF-16 code units), which is how Dub measures."""
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def js_trim(text: str, limit: int) -> str:
    """The longest prefix of at most ``limit`` UTF-16 units, never splitting a character."""
    units = 0
    for index, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text

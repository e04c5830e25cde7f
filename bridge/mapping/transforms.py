"""Field transforms a mapping can name, built into plain functions at load time.

A transform takes the value a path found and the request fields resolved so far
(``minor_units`` reads the request's ``currency``) and returns the new value, or
raises ``TransformError`` with a message that names what is wrong with the value.
A transform may also find nothing (``query_param`` of a URL without that parameter):
it returns ``MISSING`` and the field goes on to its next path or its default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote

from ..dub.currencies import MAX_MINOR_UNITS
from .amounts import AmountError, minor_units, to_decimal
from .values import MISSING, compile_pattern

Transform = Callable[[Any, Mapping[str, Any]], Any]
EXACT_FLOAT_MAX = 2.0**53  # every integer up to here is a float exactly; not all above it
_INTEGER_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")


class TransformError(ValueError):
    """The value cannot go through the transform."""


def _lower(value: Any, _fields: Mapping[str, Any]) -> Any:
    if not isinstance(value, str):
        raise TransformError(f"lower needs text, got {type(value).__name__}")
    return value.lower()


def _upper(value: Any, _fields: Mapping[str, Any]) -> Any:
    if not isinstance(value, str):
        raise TransformError(f"upper needs text, got {type(value).__name__}")
    return value.upper()


def _trim(value: Any, _fields: Mapping[str, Any]) -> Any:
    if not isinstance(value, str):
        raise TransformError(f"trim needs text, got {type(value).__name__}")
    return value.strip()


def _string(value: Any, _fields: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Integers are read exactly, whatever their size; a float past 2**53 (1e20, or
        # 12345678901234567890.0) has lost digits, so two ids could become one text.
        if not math.isfinite(value) or abs(value) >= EXACT_FLOAT_MAX:
            raise TransformError(
                "string: a number written with a fraction or an exponent past 2^53 (or "
                "NaN, Infinity) has no exact text: send it as an integer or as text"
            )
        # An order id of 12345 may arrive as 12345.0 from a float-only sender.
        return str(int(value)) if value.is_integer() else repr(value)
    raise TransformError(f"string needs a scalar, got {type(value).__name__}")


def _whole(name: str, value: Any, fraction: str) -> int:
    try:
        number: Decimal = to_decimal(value)
    except AmountError as exc:
        raise TransformError(f"{name}: {exc}") from exc
    # Bound first: int(Decimal("1e999999")) builds a million-digit integer for 40 s.
    if abs(number) > MAX_MINOR_UNITS:
        raise TransformError(f"{name}: value is beyond ±{MAX_MINOR_UNITS}")
    if number != number.to_integral_value():
        raise TransformError(f"{name}: {fraction}")
    return int(number)


def _integer(value: Any, _fields: Mapping[str, Any]) -> Any:
    return _whole("integer", value, "value has a fractional part")


def _already_minor_units(value: Any, _fields: Mapping[str, Any]) -> Any:
    # "49.00" is a major amount written as text: taking it as 49 cents loses 48.51.
    if isinstance(value, str) and not _INTEGER_TEXT.match(value):
        raise TransformError(
            "already_minor_units: text is not a whole number of minor units "
            "(hint: '49.00' is a major amount, use minor_units)"
        )
    return _whole(
        "already_minor_units",
        value,
        "value has a fraction, but minor units are whole (hint: 19.99 needs minor_units)",
    )


def _minor_units(value: Any, fields: Mapping[str, Any]) -> Any:
    currency = fields.get("currency")
    try:
        return minor_units(value, currency if isinstance(currency, str) else "usd")
    except AmountError as exc:
        raise TransformError(str(exc)) from exc


def _minor_units_exact(value: Any, fields: Mapping[str, Any]) -> Any:
    currency = fields.get("currency")
    try:
        return minor_units(
            value, currency if isinstance(currency, str) else "usd", refuse_extra=True
        )
    except AmountError as exc:
        raise TransformError(str(exc)) from exc


def minor_units_step(extra_decimals: str) -> Transform:
    """``minor_units``, rounding half away from zero or (``refuse``) refusing extra decimals."""
    return _minor_units_exact if extra_decimals == "refuse" else _minor_units


NAMED: dict[str, Transform] = {
    "lower": _lower,
    "upper": _upper,
    "trim": _trim,
    "string": _string,
    "integer": _integer,
    "minor_units": _minor_units,
    "already_minor_units": _already_minor_units,
}
AMOUNT_TRANSFORMS = frozenset({"minor_units", "already_minor_units"})
# The transforms that read the mapping's other fields (minor_units reads the currency);
# every other one sees only its value, so the compiled mapping keeps resolved values
# aside only for these.
READS_FIELDS = frozenset({"minor_units"})


def query_param(name: str) -> Transform:
    """The value of ``name`` in a URL's query or a query string, percent-decoded."""

    def _param(value: Any, _fields: Mapping[str, Any]) -> Any:
        if not isinstance(value, str):
            raise TransformError(
                f"query_param needs a URL or query text, got {type(value).__name__}"
            )
        query = value.split("#", 1)[0]
        if "?" in query:
            query = query.split("?", 1)[1]
        elif "://" in query:
            return MISSING  # a URL without a query
        elif any(c.isspace() for c in query.strip()):
            # A query string has no blanks (they are encoded); cookie text has "; " between
            # cookies, and reading it as a query gave "cl_9; b=2" for "dub_id=cl_9; b=2".
            raise TransformError(
                "query_param needs a URL or query text, and text with blanks is neither "
                "(hint: cookie text takes {cookie: NAME})"
            )
        found = parse_qs(query, keep_blank_values=False).get(name)
        return found[0] if found else MISSING

    return _param


def _text(transform: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TransformError(f"{transform} needs text, got {type(value).__name__}")
    return value


def regex(pattern: str) -> Transform:
    """The first capture group of the first match (the whole match without a group);
    MISSING when nothing matches."""
    first = compile_pattern(pattern).first

    def _regex(value: Any, _fields: Mapping[str, Any]) -> Any:
        found = first(_text("regex", value))
        return MISSING if found is None else found

    return _regex


def replace(pattern: str, replacement: str) -> Transform:
    """Every match of ``pattern`` replaced by ``replacement`` (``\\1`` names a group)."""
    sub = compile_pattern(pattern).sub

    def _replace(value: Any, _fields: Mapping[str, Any]) -> Any:
        return sub(replacement, _text("replace", value))

    return _replace


def cookie(name: str) -> Transform:
    """The value of cookie ``name`` in cookie text (``a=1; dub_id=cl_9``), percent-decoded;
    MISSING when it is not there. Names compare whole: ``my_dub_id`` is not ``dub_id``."""

    def _cookie(value: Any, _fields: Mapping[str, Any]) -> Any:
        for part in _text("cookie", value).split(";"):
            key, equals, found = part.partition("=")
            if equals and key.strip() == name:
                found = found.strip()
                if len(found) >= 2 and found[0] == found[-1] == '"':
                    found = found[1:-1]
                return unquote(found) or MISSING
        return MISSING

    return _cookie


def value_map(table: Mapping[Any, Any], fallback: Any, has_fallback: bool) -> Transform:
    """A lookup table; a value not in it becomes ``fallback`` (or stays as it is)."""
    lookup = dict(table)

    def _map(value: Any, _fields: Mapping[str, Any]) -> Any:
        try:
            if value in lookup:
                return lookup[value]
        except TypeError:  # an unhashable value (list, object) is simply not in the table
            pass
        return fallback if has_fallback else value

    return _map


def is_empty(value: Any) -> bool:
    """None, blank text, and empty lists and objects count as 'no value'."""
    kind = type(value)
    if kind is int or kind is float or kind is bool:  # the common answers, asked first
        return False
    if value is None:
        return True
    if isinstance(value, str):
        # Text that starts with a non-space is not blank: no copy made to find out.
        return not value or (value[0].isspace() and not value.strip())
    if isinstance(value, (list, dict)):
        return not value
    return False


__all__ = [
    "AMOUNT_TRANSFORMS",
    "NAMED",
    "READS_FIELDS",
    "Transform",
    "TransformError",
    "cookie",
    "is_empty",
    "minor_units_step",
    "query_param",
    "regex",
    "replace",
    "value_map",
]

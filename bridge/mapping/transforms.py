"""Field transforms a mapping can name, built into plain functions at load time.

A transform takes the value a path found and the request fields resolved so far
(``minor_units`` reads the request's ``currency``) and returns the new value, or
raises ``TransformError`` with a message that names what is wrong with the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .amounts import AmountError, minor_units, to_decimal

Transform = Callable[[Any, Mapping[str, Any]], Any]


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
        # An order id of 12345 may arrive as 12345.0 from a float-only sender.
        return str(int(value)) if value.is_integer() else repr(value)
    raise TransformError(f"string needs a scalar, got {type(value).__name__}")


def _integer(value: Any, _fields: Mapping[str, Any]) -> Any:
    try:
        number = to_decimal(value)
    except AmountError as exc:
        raise TransformError(f"integer: {exc}") from exc
    if number != number.to_integral_value():
        raise TransformError("integer: value has a fractional part")
    return int(number)


def _minor_units(value: Any, fields: Mapping[str, Any]) -> Any:
    currency = fields.get("currency")
    try:
        return minor_units(value, currency if isinstance(currency, str) else "usd")
    except AmountError as exc:
        raise TransformError(str(exc)) from exc


NAMED: dict[str, Transform] = {
    "lower": _lower,
    "upper": _upper,
    "trim": _trim,
    "string": _string,
    "integer": _integer,
    "minor_units": _minor_units,
}


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
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, dict)):
        return not value
    return False


__all__ = ["NAMED", "Transform", "TransformError", "is_empty", "value_map"]

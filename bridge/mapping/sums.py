"""``sum: {items, value, times}``: an exact basket total from an array of line items.

Each item contributes ``item[value] * item[times]`` (``times`` absent or null means 1), added
as exact decimals: 19.99 * 3 is 59.97, never 59.970000000000006. A value that is not a
number or numeric text makes the event invalid, naming the item's index and key; an
empty or missing array gives no value (the field's ``default`` applies).
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .paths import cached_path, check_path
from .values import MISSING, as_number

_KEY = r"^[^\s].*$"
# Exact or nothing: a total that would need rounding (values hundreds of digits apart)
# makes the event invalid instead of silently losing a cent.
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation, Overflow])


class SumSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    items: str
    value: str = Field(pattern=_KEY)
    times: str | None = Field(None, pattern=_KEY)

    @field_validator("items")
    @classmethod
    def _items(cls, text: str) -> str:
        return check_path(text)


class SumError(ValueError):
    """An item cannot be added up; ``where`` and ``value`` say which and what."""

    def __init__(self, message: str, where: str, value: Any):
        super().__init__(message)
        self.where = where
        self.value = value


class Sum:
    """A compiled ``sum``: ``total(event)`` is a ``Decimal``, or MISSING for no items."""

    __slots__ = ("items", "label", "times", "value")

    def __init__(self, spec: SumSpec):
        self.items = cached_path(spec.items)
        self.value = spec.value
        self.times = spec.times
        times = f" * {self.times}" if self.times else ""
        self.label = f"sum of {self.value}{times} over {self.items.text}"

    def total(self, event: Any) -> Any:
        found = self.items.find(event)
        if not found or found[0] is None:
            return MISSING
        items = found[0]
        if not isinstance(items, list):
            raise SumError(
                f"items is a {type(items).__name__}, not an array", self.items.text, items
            )
        if not items:
            return MISSING
        total = Decimal(0)
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                where = f"{self.items.text}[{index}]"
                raise SumError(f"item {index} is not an object", where, item)
            value = self._number(item, index, self.value)
            # `times: null` counts as 1, as a missing key does: nothing says to repeat it.
            if self.times is not None and item.get(self.times) is not None:
                value = self._exact(
                    index, _EXACT.multiply, value, self._number(item, index, self.times)
                )
            total = self._exact(index, _EXACT.add, total, value)
        return total

    def _number(self, item: dict[str, Any], index: int, key: str) -> Decimal:
        raw = item.get(key, MISSING)
        number = None if raw is MISSING else as_number(raw)
        if number is None:
            problem = "has no" if raw is MISSING else "has a non-numeric"
            where = f"{self.items.text}[{index}].{key}"
            raise SumError(f"item {index} {problem} {key!r}", where, raw)
        return number

    def _exact(self, index: int, op: Any, a: Decimal, b: Decimal) -> Decimal:
        try:
            result: Decimal = op(a, b)
        except ArithmeticError:
            where = f"{self.items.text}[{index}]"
            raise SumError(
                f"item {index} cannot be added exactly (too many digits)", where, b
            ) from None
        return result

"""Exact conversion of a major-unit amount (19.99 dollars) to Dub's integer minor units (1999).

Money is never multiplied as a float: the value's decimal text is read into a
``Decimal``, scaled by the currency's exponent as Dub counts it, and rounded half
away from zero. A JSON number arrives as a Python float; ``repr`` gives back the
shortest decimal text that round-trips it, which is the sender's text for any
amount with up to 15 significant digits (send longer amounts as strings).

Arithmetic runs in a context that never rounds before the last step: the default
context keeps 28 digits, and rounding there first (12.344999...9 with 32 digits
to 12.345) and then to cents would round twice and land a cent off. Only scaling
and rounding run in it, so its unbounded precision costs nothing on ordinary amounts.
"""

from __future__ import annotations

import math
import re
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

from ..dub.currencies import MAX_MINOR_UNITS, ZERO_DECIMAL_CURRENCIES

# Decimal() also takes "1_000", "NaN", "Infinity" and surrounding blanks; a sender's
# amount text must be a plain decimal number, nothing else.
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_HUNDRED = Decimal(100)
_ONE = Decimal(1)
_EXACT = Context(prec=MAX_PREC, rounding=ROUND_HALF_UP, Emax=MAX_EMAX, Emin=MIN_EMIN)


class AmountError(ValueError):
    """The value cannot be a sale amount; the message says why, without the field name."""


def to_decimal(value: Any) -> Decimal:
    """Read a JSON amount (number or numeric string) as an exact ``Decimal``."""
    if isinstance(value, bool):  # bool is an int in Python; True is not 1 dollar
        raise AmountError("a boolean is not an amount")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AmountError("amount is not a finite number")
        return Decimal(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise AmountError("amount is not a finite number")
        return value
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER_RE.match(text):
            raise AmountError("text is not a decimal number")
        return Decimal(text)
    raise AmountError(f"a {type(value).__name__} is not an amount")


def minor_units(value: Any, currency: str = "usd", *, refuse_extra: bool = False) -> int:
    """Convert a major amount to Dub's integer minor units, exactly.

    Raises ``AmountError`` for a negative, non-finite, boolean or non-numeric
    value, or one above ``MAX_MINOR_UNITS`` once converted; with ``refuse_extra``,
    also for a value with more decimals than the currency has (instead of rounding).
    """
    # A finite JSON number, the usual case, read as to_decimal reads it, without its checks.
    amount = (
        Decimal(repr(value)) if type(value) is float and math.isfinite(value) else to_decimal(value)
    )
    if amount < 0:
        raise AmountError("amount is negative")
    zero_decimal = currency.lower() in ZERO_DECIMAL_CURRENCIES
    scaled = amount if zero_decimal else _EXACT.multiply(amount, _HUNDRED)
    # Compare before quantize: a huge exponent ("1e999999") would overflow it.
    if scaled > MAX_MINOR_UNITS + 1:
        raise AmountError(f"amount is above {MAX_MINOR_UNITS} minor units")
    if refuse_extra and scaled != scaled.to_integral_value():
        places = 0 if zero_decimal else 2
        raise AmountError(
            f"amount has more than {places} decimals, as {currency.upper()} has "
            "(hint: a thousands separator? extra_decimals: refuse does not round)"
        )
    try:
        result = int(_EXACT.quantize(scaled, _ONE))
    except InvalidOperation as exc:  # pragma: no cover - guarded by the bound above
        raise AmountError("amount cannot be rounded") from exc
    if result > MAX_MINOR_UNITS:
        raise AmountError(f"amount is above {MAX_MINOR_UNITS} minor units")
    return result

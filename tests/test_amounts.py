"""Amounts: major units to Dub's integer minor units, exactly."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.dub.currencies import MAX_MINOR_UNITS, ZERO_DECIMAL_CURRENCIES
from bridge.mapping.amounts import AmountError, minor_units
from tests.conftest import needs_shared

CURRENCIES = sorted(ZERO_DECIMAL_CURRENCIES) + ["usd", "eur", "gbp", "kwd", "bhd", "isk", "jod"]


def exact(amount: Decimal, currency: str) -> int:
    scale = 1 if currency in ZERO_DECIMAL_CURRENCIES else 100
    return int((amount * scale).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (19.99, "usd", 1999),
        ("19.99", "usd", 1999),
        (1.005, "usd", 101),
        (0.125, "usd", 13),
        (0.115, "eur", 12),
        (1500, "jpy", 1500),
        ("1500", "JPY", 1500),
        (1500.5, "jpy", 1501),
        (1.234, "kwd", 123),
        (100, "isk", 10000),
        ("1e2", "usd", 10000),
        (" 42.10 ", "usd", 4210),
        (0.1 + 0.2, "usd", 30),
        (0, "usd", 0),
        ("90071992547409.91", "usd", MAX_MINOR_UNITS),
    ],
)
def test_known_amounts(value: object, currency: str, expected: int) -> None:
    """Known amounts convert as Dub counts them: x100 except zero-decimal, half away from zero."""
    assert minor_units(value, currency) == expected


@pytest.mark.parametrize(
    "value",
    [
        -0.01,
        "-5",
        float("nan"),
        float("inf"),
        "NaN",
        "Infinity",
        True,
        False,
        "abc",
        "19,99",
        "1_000",
        "",
        None,
        [],
        {},
        "0x10",
        "90071992547409.92",
        "1e400",
        10**30,
    ],
)
def test_bad_amounts_are_refused(value: object) -> None:
    """Negative, NaN, infinite, boolean, non-numeric and too-large amounts are refused."""
    with pytest.raises(AmountError):
        minor_units(value, "usd")


@given(
    st.decimals(min_value=0, max_value=Decimal("9e13"), allow_nan=False, places=4),
    st.sampled_from(CURRENCIES),
)
def test_decimal_text_converts_exactly(amount: Decimal, currency: str) -> None:
    """For any amount text and currency, the result equals exact decimal arithmetic."""
    expected = exact(amount, currency)
    if expected > MAX_MINOR_UNITS:
        with pytest.raises(AmountError):
            minor_units(str(amount), currency)
    else:
        assert minor_units(str(amount), currency) == expected


@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=999),
    st.sampled_from(CURRENCIES),
)
def test_json_numbers_convert_from_their_text(units: int, fraction: int, currency: str) -> None:
    """A JSON number (a float) converts as its decimal text would, never as a float multiply."""
    text = f"{units}.{fraction:03d}"
    assert minor_units(float(text), currency) == exact(Decimal(text), currency)


def test_float_multiply_would_be_wrong_where_we_are_right() -> None:
    """The cases where round(x * 100) is off by one cent are exact here."""
    assert round(1.005 * 100) == 100  # what a float multiply gives
    assert minor_units(1.005, "usd") == 101
    assert round(0.125 * 100) == 12  # banker's rounding
    assert minor_units(0.125, "usd") == 13


def test_zero_decimal_list_matches_dubs_contract() -> None:
    """The zero-decimal currencies are exactly the 16 codes Dub's contract lists."""
    readme = (needs_shared() / "README.md").read_text()
    listed = "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF"
    assert listed in readme
    assert {c.lower() for c in listed.split()} == ZERO_DECIMAL_CURRENCIES
    assert minor_units("1.5", "kwd") == 150  # three-decimal currencies are hundredths at Dub


@settings(max_examples=60)
@given(st.integers(0, 10**12), st.text(alphabet="0123456789", min_size=25, max_size=40))
def test_long_amounts_round_once(units: int, digits: str) -> None:
    """Past the default 28 digits, an amount still rounds once, exactly: no cent lost twice."""
    text = f"{units}.{digits}"
    scaled = Fraction(text) * 100
    whole = int(scaled)
    expected = whole + (1 if scaled - whole >= Fraction(1, 2) else 0)
    assert minor_units(text, "usd") == expected
    assert minor_units("12.344999999999999999999999999999", "usd") == 1234

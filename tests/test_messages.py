"""Messages an ops person reads when a mapping goes wrong: hints that fit the mistake made.

Findings: the currency hint suggested `transform: lower` to a mapping that already had it;
a regular expression such as "^\\d+$" written in double quotes failed with YAML's bare
"unknown escape character", which says nothing of the fix.
"""

from __future__ import annotations

from typing import Any

from bridge.core.outcomes import Outcome
from tests.helpers.mapkit import engine, errors, event, sale


def _currency(transform: str, value: Any) -> str:
    """The error or warning about the currency of one planned sale."""
    text = sale(
        "amount: {path: $.properties.revenue, transform: minor_units}\n"
        f"currency: {{path: $.properties.currency{transform}, required: true}}"
    )
    (result,) = engine(text).plan(event(revenue=1, currency=value))
    assert result.outcome is Outcome.INVALID, result
    return next(e for e in result.errors if e.startswith("currency"))


def test_currency_hint_suggests_lower_only_when_it_would_help() -> None:
    """Upper-case `USD` without `lower` gets the hint; with `lower` already there it does not."""
    assert "hint: 'usd'; transform: lower makes" in _currency("", "USD")
    with_lower = _currency(", transform: lower", "US Dollar")
    assert "transform: lower" not in with_lower
    assert "map other spellings" in with_lower


def test_a_literal_currency_gets_the_hint_that_fits_it() -> None:
    """A literal in capitals is shown lower-cased; one lower-casing cannot fix is not told to."""
    found = errors(sale("amount: {value: 1}\ncurrency: {path: $.c, default: USD}"))
    assert any("currency.default" in e and "hint: 'usd'" in e for e in found), found
    found = errors(sale("amount: {value: 1}\ncurrency: {path: $.c, default: usd1}"))
    assert any("currency.default" in e and "map other spellings" in e for e in found), found


def test_unknown_escape_in_double_quotes_hints_at_single_quotes() -> None:
    """A backslash escape YAML does not know, inside double quotes, hints at '...' or \\\\."""
    text = sale(
        "amount: {value: 1}",
        trigger='{event: E, conditions: [{path: $.a, matches: "^\\d+$"}]}',
    )
    (found,) = errors(text)
    assert found.startswith("m.yaml:3: YAML: found unknown escape character")
    assert "use single quotes ('^\\d+$') or double the backslash (\"^\\\\d+$\")" in found

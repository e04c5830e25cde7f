"""Trigger conditions: every test, absence, combinators, reasons, and their load-time checks."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mapping.conditions import ConditionSpec, compile_condition
from bridge.mapping.values import json_equal
from bridge.service.mapping_files import load_directory

ABSENT = object()


def holds(condition: dict[str, Any], value: Any = ABSENT) -> bool:
    """Does ``condition`` hold on an event whose $.v is ``value`` (absent: no key)?"""
    compiled = compile_condition(ConditionSpec.model_validate({"path": "$.v", **condition}))
    event = {} if value is ABSENT else {"v": value}
    return compiled.holds(event)


COMPARISONS: list[tuple[dict[str, Any], Any, bool]] = [
    ({"equals": "USD"}, "USD", True),
    ({"equals": "USD"}, "usd", False),  # text is case-sensitive
    ({"equals": 1}, True, False),  # a boolean is never a number
    ({"equals": True}, 1, False),
    ({"equals": 1}, 1.0, True),  # one JSON number
    ({"equals": "12"}, 12, False),  # text is not a number
    ({"equals": [1, "a"]}, [1, "a"], True),
    ({"not_equals": "USD"}, "EUR", True),
    ({"not_equals": "USD"}, "USD", False),
    ({"in": ["USD", "EUR"]}, "EUR", True),
    ({"in": ["USD", "EUR"]}, "GBP", False),
    ({"in": [1, "x", {"a": 1}]}, {"a": 1}, True),
    ({"in": [1, "x"]}, True, False),
    ({"not_in": ["USD"]}, "EUR", True),
    ({"not_in": ["USD"]}, "USD", False),
    ({"gt": 10}, "12.50", True),
    ({"gt": "12.50"}, 12.5, False),
    ({"gte": "12.50"}, 12.5, True),
    ({"lt": 0.1}, "0.09", True),
    ({"lte": 3}, 3, True),
    ({"gt": 1}, "abc", False),  # not numeric: does not hold
    ({"gt": 0}, True, False),  # a boolean is not a number
    ({"lt": 1}, [0], False),
    ({"matches": "^TEST-"}, "TEST-1", True),
    ({"matches": "^TEST-"}, "A-TEST-1", False),
    ({"matches": "TEST"}, "A-TEST-1", True),  # searched, not anchored
    ({"matches": "1"}, 1, False),  # only text is searched
    ({"exists": True}, None, True),  # null is present
    ({"not_empty": True}, "", False),
    ({"not_empty": False}, "  ", True),
]


def test_each_test_compares_exactly() -> None:
    """Each test compares JSON values exactly: types, case and decimals as written."""
    wrong = [(c, v, e) for c, v, e in COMPARISONS if holds(c, v) is not e]
    assert wrong == []


ON_ABSENT: list[tuple[dict[str, Any], bool]] = [
    ({"not_equals": "x"}, True),
    ({"not_in": ["x"]}, True),
    ({"exists": False}, True),
    ({"not_empty": False}, True),
    ({"equals": "x"}, False),
    ({"in": ["x"]}, False),
    ({"gt": 0}, False),
    ({"lte": 0}, False),
    ({"matches": ".*"}, False),
    ({"exists": True}, False),
    ({"not_empty": True}, False),
]


def test_an_absent_value() -> None:
    """Absent: not_equals, not_in, exists: false and not_empty: false hold; nothing else."""
    for condition, expected in ON_ABSENT:
        assert holds(condition) is expected, condition
        if "exists" not in condition:  # "" counts as absent (but exists sees it)
            assert holds(condition, "") is expected, condition


def test_combinators_nest() -> None:
    """any, all and not combine tests and each other, to any depth."""
    spec = {
        "all": [
            {"path": "$.currency", "in": ["USD", "EUR"]},
            {
                "not": {
                    "any": [{"path": "$.test", "equals": True}, {"path": "$.id", "matches": "^T"}]
                }
            },
        ]
    }
    compiled = compile_condition(ConditionSpec.model_validate(spec))
    assert compiled.holds({"currency": "USD", "id": "A1"})
    assert not compiled.holds({"currency": "USD", "id": "T1"})
    assert not compiled.holds({"currency": "USD", "test": True})
    assert not compiled.holds({"currency": "JPY"})


def test_reason_names_the_failing_condition() -> None:
    """A skip reason names the failing test's path, the value seen and what was expected."""
    spec = ConditionSpec.model_validate(
        {"all": [{"path": "$.a", "exists": True}, {"path": "$.email", "in": ["x@example.com"]}]}
    )
    reason = compile_condition(spec).why_not({"a": 1, "email": "jane.doe@example.com"})
    assert reason.startswith("$.email is 'j***@example.com', expected in [")
    assert "jane.doe" not in reason
    spec = ConditionSpec.model_validate({"not": {"path": "$.test", "equals": True}})
    assert compile_condition(spec).why_not({"test": True}) == (
        "expected not ($.test equals True, value True)"
    )
    spec = ConditionSpec.model_validate({"path": "$.n", "gt": "10.00", "reason": "too small"})
    assert compile_condition(spec).why_not({"n": 3}) == "too small"


def test_a_skipped_event_carries_the_reason(tmp_path: Path) -> None:
    """The engine's skipped result says which condition failed and on what."""
    (tmp_path / "m.yaml").write_text(
        textwrap.dedent("""\
        mappings:
          - name: s
            trigger:
              event: Order Completed
              conditions: [{path: $.properties.currency, in: [USD, EUR]}]
            action: sale
            fields: {customerExternalId: $.userId, amount: {path: $.properties.revenue, transform: minor_units}}
        """)
    )
    engine = load_directory(tmp_path).engine
    event = {"type": "track", "event": "Order Completed", "messageId": "m", "userId": "u"}
    (result,) = engine.plan(event | {"properties": {"currency": "JPY", "revenue": 1}})
    assert result.outcome == "skipped"
    assert result.reason == "$.properties.currency is 'JPY', expected in ['USD', 'EUR']"
    (result,) = engine.plan(event)
    assert result.reason == "$.properties.currency is absent, expected in ['USD', 'EUR']"


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("{path: $.a, matches: '('}", "bad regular expression '('"),
        ("{path: $.a, gt: ten}", "numeric text"),
        ("{path: $.a, equals: null}", "null never matches"),
        ("{path: $.a, in: []}", "at least one value"),
        ("{path: $.a, equals: 2026-01-01}", "a YAML date is not a JSON value"),
        ("{path: $.a, equals: 1, in: [1]}", "exactly one test"),
        ("{path: $.a}", "exactly one test"),
        ("{any: [], reason: x}", "at least 1 item"),
        ("{not: {path: $.a, exists: true}, path: $.b}", "one of `any`, `all` or `not`"),
        ("{all: [{path: $.a, equls: 1}]}", "unknown key (did you mean 'equals'?)"),
        ("{path: $.a..b..c..d, exists: true}", "at most 1 is allowed"),
    ],
)
def test_bad_conditions_are_load_errors(tmp_path: Path, condition: str, message: str) -> None:
    """A bad regex, number, literal or shape is a load error at its line, with a hint."""
    (tmp_path / "m.yaml").write_text(
        "mappings:\n  - name: s\n    trigger:\n      event: E\n"
        f"      conditions:\n        - {condition}\n"
        "    action: sale\n    fields: {customerExternalId: $.u, amount: $.a}\n"
    )
    errors = [str(i) for i in load_directory(tmp_path, strict=False).errors]
    assert any(e.startswith(f"{tmp_path / 'm.yaml'}:6: s.trigger.conditions") for e in errors), (
        errors
    )
    assert any(message in e for e in errors), errors


numeric_text = st.decimals(
    allow_nan=False, allow_infinity=False, places=4, max_value=10**9, min_value=-(10**9)
)


@settings(max_examples=60, deadline=None)
@given(numeric_text, numeric_text, st.sampled_from(["gt", "gte", "lt", "lte"]), st.booleans())
def test_numeric_comparisons_are_exact(a: Decimal, b: Decimal, test: str, as_text: bool) -> None:
    """Numbers and numeric text compare as exact decimals, as rational arithmetic would."""
    ops = {
        "gt": Fraction.__gt__,
        "gte": Fraction.__ge__,
        "lt": Fraction.__lt__,
        "lte": Fraction.__le__,
    }
    value: Any = str(a) if as_text else float(a) if a == Decimal(repr(float(a))) else str(a)
    assert holds({test: str(b)}, value) is ops[test](Fraction(a), Fraction(b))


json_scalars = (
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3) | st.text(max_size=2)
)


@settings(max_examples=60, deadline=None)
@given(json_scalars, json_scalars)
def test_json_equality_never_mixes_booleans_and_numbers(a: Any, b: Any) -> None:
    """json_equal is symmetric, and a boolean equals only the same boolean."""
    assert json_equal(a, b) is json_equal(b, a)
    if isinstance(a, bool) != isinstance(b, bool):
        assert not json_equal(a, b)

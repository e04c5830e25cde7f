"""Reading JSON as Segment's JavaScript client writes it: odd text is repaired, never fatal."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.jsoncodec import REPLACEMENT, loads_repaired

SURROGATE = re.compile("[\ud800-\udfff]")
# Text as JavaScript strings may hold it: any code point, lone surrogates included.
TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def expected(value: Any) -> Any:
    if isinstance(value, str):
        return SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, list):
        return [expected(v) for v in value]
    if isinstance(value, dict):
        return {expected(k): expected(v) for k, v in value.items()}
    return value


@given(JSON_VALUES)
def test_any_value_written_as_javascript_does_is_read_with_lone_surrogates_replaced(
    value: Any,
) -> None:
    """Whatever JSON.stringify can write (lone surrogates escaped) is read, each one as U+FFFD."""
    raw = json.dumps(value).encode()  # ensure_ascii: \\udXXX escapes, as JavaScript writes
    parsed, repairs = loads_repaired(raw)
    assert parsed == expected(value)
    assert bool(repairs) == (SURROGATE.search(json.dumps(value, ensure_ascii=False)) is not None)


def test_repairs_name_the_path_of_each_repaired_text() -> None:
    """Each repair is the path to the text (or key) that held the odd character."""
    raw = b'[{"a": "ok"}, {"p": {"c": "x\\udc00"}, "\\ud800k": 1}]'
    parsed, repairs = loads_repaired(raw)
    assert parsed[1] == {"p": {"c": "x" + REPLACEMENT}, REPLACEMENT + "k": 1}
    assert repairs == [(1, "p", "c"), (1, REPLACEMENT + "k")]


def test_valid_surrogate_pairs_are_not_repairs() -> None:
    """An escaped pair (an emoji) is one character, read as it is."""
    assert loads_repaired(b'{"e": "\\ud83d\\ude00"}') == ({"e": "\U0001f600"}, [])

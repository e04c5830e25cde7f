"""The fast path compiler.py derives for each mapping: no mapping text reaches its code, its
syntax tree is held to an allow-list, and it hands an event to the interpreter only when the
event does not plainly send. That its results are the interpreter's is
``tests/test_interpret.py::test_perturbed_golden_events`` (traced against untraced)."""

from __future__ import annotations

import ast
import json
import linecache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.outcomes import Outcome
from bridge.mapping.compiler import UnsafeFastPath, check_allowed
from bridge.mapping.engine import CompiledMapping
from tests.helpers.mapkit import engine as engine_of
from tests.test_interpret import _golden_sets

HOSTILE = st.text(
    alphabet=st.sampled_from(['"', "'", "\\", "\n", ")", "(", ";", "_", "o", "s", " ", "#", "{"]),
    min_size=1,
    max_size=12,
)


def _source(mapping: CompiledMapping) -> str:
    return "".join(linecache.getlines(mapping.untraced.__code__.co_filename))


@settings(max_examples=60, deadline=None)
@given(key=HOSTILE, default=HOSTILE, value=HOSTILE)
def test_no_mapping_text_reaches_the_generated_code(key: str, default: str, value: str) -> None:
    """Keys and defaults full of quotes, newlines and code compile into a function that holds
    none of them (every one is a namespace value), and it plans as the interpreter does."""
    text = (
        "mappings:\n  - name: s\n    trigger: {event: Order Completed}\n    action: sale\n"
        "    fields:\n      customerExternalId: $.userId\n"
        "      amount: {path: $.properties.revenue, transform: minor_units}\n"
        f"      customerName: {{paths: [{json.dumps(f'$.properties[{json.dumps(key)}]')}, "
        f"$.context.traits.name], default: {json.dumps(default)}}}\n"
    )
    engine = engine_of(text)
    (mapping,) = engine.mappings
    source = _source(mapping)
    assert source.startswith("def plan(")
    for hostile in {key, default} - {"_", "o", "s", " ", "(", ")"}:
        assert json.dumps(hostile) not in source and repr(hostile) not in source
    event = {
        "type": "track", "event": "Order Completed", "messageId": "m", "userId": "u",
        "timestamp": "2100-01-01T00:00:00Z",
        "properties": {"revenue": 5, key: value}, "context": {"traits": {"name": "N"}},
    }  # fmt: skip
    assert engine.plan(event) == engine.plan(event, {})


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("def plan(event, message_id, event_name):\n    return 'x'\n", "constant"),
        ("def plan(event, message_id, event_name):\n    import os\n", "Import"),
        ("def plan(event, message_id, event_name):\n    return event.__class__\n", "attribute"),
        ("def plan(event, message_id, event_name):\n    return open(event)\n", "name 'open'"),
        ("def plan(event, message_id, event_name):\n    return (lambda: 1)()\n", "Lambda"),
        ("def other(event):\n    return None\n", "function 'other'"),
    ],
)
def test_the_allow_list_refuses_what_the_writer_never_writes(code: str, why: str) -> None:
    """A string constant, an import, a dunder attribute, an unbound name, a lambda or another
    function in a generated tree is refused, naming it."""
    with pytest.raises(UnsafeFastPath, match=why):
        check_allowed(ast.parse(code), frozenset())


def test_golden_events_that_send_never_reach_the_interpreter(tmp_path: Path) -> None:
    """Every golden event that sends without a warning is planned by the fast path alone, to
    the interpreter's result: a generated function that failed quietly (and handed every event over) fails
    here."""

    def handed_over(*args: Any) -> Any:
        raise AssertionError("an event that sends was handed over")

    sent = 0
    for engine, events in _golden_sets(tmp_path):
        for event in events:
            for traced in engine.plan(event, {}):
                if traced.outcome is not Outcome.READY or traced.warnings:
                    continue  # a warning (a value dropped, trimmed) is the interpreter's
                mapping = next(m for m in engine.mappings if m.name == traced.mapping)
                space = mapping.untraced.__globals__
                space["interpret"], kept = handed_over, space["interpret"]
                try:
                    assert mapping.untraced(event, traced.message_id, traced.event) == traced
                finally:
                    space["interpret"] = kept
                sent += 1
    assert sent >= 20

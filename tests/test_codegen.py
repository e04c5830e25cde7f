"""Mappings compiled to Python: the same results as the generic interpreter, and safe code."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.dub.endpoints import ENDPOINTS
from bridge.mapping.codegen import _TEXT_STEPS, _Writer
from bridge.mapping.engine import CompiledMapping, Engine
from bridge.mapping.events import SegmentEvent, well_formed
from bridge.mapping.paths import simple_steps
from bridge.mapping.transforms import NAMED, READS_FIELDS
from bridge.sources import load_directory
from tests.mapkit import engine as engine_of
from tests.reference_engine import reference_apply

ROOT = Path(__file__).resolve().parents[1]
ODD: list[Any] = [
    None, "", "  ", 0, -1, 1.5, 19.99, "19.99", " 19.99 ", "abc", [], {}, True, False, 10**30,
    "x" * 300, "\U0001f600" * 60, {"a": {"b": 1}}, "\uff35\uff33\uff24", "usd", "JPY", " stripe ", "a@b.co",
    "not-an-email", [1, 2], "0", 0.0, -0.0, 2**53, 1e20, "1e400", 3.14159, "https://x.co/?via=a",
]  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(ODD),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _mapping_sets(tmp: Path) -> list[Engine]:
    """The default mappings and every recipe in mappings/examples, each loaded alone."""
    engines = [load_directory(ROOT / "mappings").engine]
    for recipe in sorted((ROOT / "mappings" / "examples").glob("*.yaml")):
        folder = tmp / recipe.stem
        folder.mkdir()
        shutil.copy(recipe, folder / recipe.name)
        engines.append(load_directory(folder).engine)
    return engines


@pytest.fixture(scope="module")
def mapping_sets(tmp_path_factory: pytest.TempPathFactory) -> list[Engine]:
    return _mapping_sets(tmp_path_factory.mktemp("recipes"))


def _paths(mapping: CompiledMapping) -> list[tuple[str | int, ...]]:
    texts = [p.text for f in mapping.fields for p in f.paths]
    texts += [p.text for c in mapping.conditions for p in c.paths]
    return [steps for steps in map(simple_steps, texts) if steps]


def _put(event: dict[str, Any], steps: tuple[str | int, ...], value: Any) -> None:
    node = event
    for step in steps[:-1]:
        if isinstance(step, int) or not isinstance(node.get(step), dict):
            if isinstance(step, int):
                return
            node[step] = {}
        node = node[step]
    if isinstance(steps[-1], str):
        node[steps[-1]] = value


@st.composite
def cases(draw: st.DrawFn, engines: list[Engine]) -> tuple[CompiledMapping, dict[str, Any]]:
    """A mapping and an event that sets some of the paths it reads to odd JSON values."""
    engine = draw(st.sampled_from(engines))
    mapping = draw(st.sampled_from(engine.mappings))
    names = sorted(mapping.event_names) or ["Order Completed"]
    event: dict[str, Any] = {"type": "track", "event": draw(st.sampled_from(names))}
    event |= {"messageId": draw(st.sampled_from(["m-1", "", 7])), "userId": "u1"}
    for steps in draw(st.lists(st.sampled_from(_paths(mapping) or [("x",)]), max_size=8)):
        _put(event, steps, draw(json_values))
    return mapping, event


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_mappings_give_the_interpreters_results(
    mapping_sets: list[Engine], data: st.DataObject
) -> None:
    """On any event, each compiled mapping's result equals the generic interpreter's, field
    for field: outcome, body, errors, warnings and reason."""
    mapping, event = data.draw(cases(mapping_sets))
    message_id = event["messageId"] if isinstance(event["messageId"], str) else None
    got = mapping.apply(event, message_id, event["event"])
    assert got == reference_apply(mapping, event, message_id, event["event"])


def test_no_mapping_text_reaches_the_generated_code() -> None:
    """Names, path keys, literals and defaults travel as values, never as code: a mapping
    whose every string is Python still compiles, and none of its text is in the source."""
    hostile = 'x\'; raise SystemExit("boom") # '
    key = 'k"]); raise SystemExit("boom") #'
    mapping = {
        "name": "s",
        "trigger": {"event": hostile},
        "action": "sale",
        "fields": {
            "customerExternalId": {"path": f"$[{json.dumps(hostile)}]", "default": hostile},
            "amount": {"path": "$.properties.revenue", "transform": "minor_units"},
            "eventName": {"value": hostile},
            "customerName": {"path": f"$['{key}']"},  # a simple path: a dict look-up
        },
    }
    compiled = engine_of(yaml.safe_dump({"mappings": [mapping]}))
    code = compiled.mappings[0].code
    assert hostile not in code and key not in code and "SystemExit" not in code
    event = {"type": "track", "event": hostile, "messageId": "m", "properties": {"revenue": 2}}
    (result,) = compiled.plan(event | {key: "Ada"})
    assert result.body == {
        "customerExternalId": hostile, "amount": 200, "eventName": hostile, "customerName": "Ada"
    }  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["event", "userId", "anonymousId", "timestamp", "properties", "context",
             "integrations", "messageId", "sentAt"]
        ),
        json_values,
    ),
    st.text(max_size=3) | st.text(min_size=999, max_size=1001) | st.none(),
    st.text(max_size=3),
)  # fmt: skip
def test_well_formed_says_yes_only_to_what_pydantic_accepts(
    event: dict[str, Any], message_id: str | None, name: str
) -> None:
    """The engine's quick shape check never lets through an event SegmentEvent refuses (the
    engine calls it with a track event whose name is text, and its messageId if text)."""
    event = {**event, "type": "track", "event": name, "messageId": message_id}
    if well_formed(event, message_id):
        SegmentEvent.model_validate(event)


def test_the_usual_event_takes_the_quick_check(engine: Engine) -> None:
    """A complete analytics.js track event passes the quick check (pydantic is not asked)."""
    event = {
        "type": "track", "event": "Order Completed", "messageId": "ajs-1", "userId": 42,
        "anonymousId": "anon", "timestamp": "2026-11-30T00:00:00Z", "properties": {},
        "context": {"traits": {}}, "integrations": {}, "sentAt": "2026-11-30T00:00:01Z",
    }  # fmt: skip
    assert well_formed(event, "ajs-1")


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(ENDPOINTS)), st.data())
def test_a_clean_body_is_always_a_valid_request(action: str, data: st.DataObject) -> None:
    """What Endpoint.clean() keeps without an error, the strict pydantic request model
    accepts: why the compiled mappings do not validate each body again."""
    endpoint = ENDPOINTS[action]
    names = sorted(endpoint.fields)
    body = {name: data.draw(json_values) for name in endpoint.needed}
    body |= data.draw(st.dictionaries(st.sampled_from(names), json_values, max_size=6))
    clean, errors, _ = endpoint.clean(body)
    if not errors:
        endpoint.model.model_validate(clean)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([(a, n) for a, e in ENDPOINTS.items() for n in e.fields]),
    # and text around the length limits, with characters that take two UTF-16 units
    json_values | st.text(st.sampled_from("a.@\U0001f600"), min_size=40, max_size=300),
)
def test_a_value_a_rule_skips_is_one_it_keeps_unchanged(field: tuple[str, str], value: Any) -> None:
    """The inline test that lets a value skip its Dub rule is true only for values the rule
    returns as they are, with no warning."""
    action, name = field
    rule = ENDPOINTS[action].fields[name].rule
    writer = _Writer(_any_mapping())
    expression = writer._accepts(rule)
    if expression is not None and eval(expression, writer.namespace | {"v": value}):  # noqa: S307
        assert rule.check(value) == (value, None)


def _any_mapping() -> CompiledMapping:
    return engine_of("mappings:\n  - {name: s, trigger: {event: E}, action: sale, fields: "
                     "{customerExternalId: $.u, amount: $.a}}").mappings[0]  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(set(NAMED) - READS_FIELDS)), json_values, json_values)
def test_only_the_transforms_that_say_so_read_other_fields(
    name: str, value: Any, other: Any
) -> None:
    """A transform outside READS_FIELDS gives the same answer whatever the other fields hold,
    so the compiled mapping keeps resolved values aside only for the others."""

    def run(fields: dict[str, Any]) -> Any:
        try:
            return NAMED[name](value, fields)
        except ValueError as exc:
            return str(exc)

    assert _same(run({}), run({"currency": other, "amount": other}))


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a))


@given(st.text(max_size=20))
def test_text_steps_are_the_transforms_on_text(text: str) -> None:
    """On text, the transforms the compiled code runs as str methods give what they give."""
    for (name,), method in _TEXT_STEPS.items():
        expected = getattr(text, method)() if method else text
        assert NAMED[name](text, {}) == expected


def test_a_malformed_event_still_gets_pydantics_message(engine: Engine) -> None:
    """An event the quick check refuses is explained by pydantic, naming the field."""
    event = {"type": "track", "event": "Order Completed", "messageId": "m", "properties": "x"}
    (result,) = engine.plan(event)
    assert result.outcome == "invalid"
    with pytest.raises(ValidationError):
        SegmentEvent.model_validate(event)
    assert result.errors[0].startswith("properties:")

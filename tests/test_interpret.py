"""One interpreter of mapping semantics, held to Dub's contract rather than to a copy of itself.

Mappings used to be compiled to generated code, holding its own copy of the rules, checked
against a reference interpreter kept in the tests, and ``bridge explain`` walked the mappings a third time. One-line
mutations of those copies went unnoticed; each of these must now fail the fast tier:

- Dub's ``eventQuantity`` range changed in ``bridge/dub/fields.py`` (``1 <= v <= 100``
  widened or narrowed): ``test_every_length_and_range_rule_at_its_bounds``.
- Whitespace-only text counted as a value (a sale with ``revenue: "  "`` becomes invalid
  instead of falling back to ``total``): ``test_whitespace_only_text_is_no_value``.
- A differential test that mostly compared error tuples: ``test_perturbed_golden_events``
  now starts from the golden tests' events, so at least half its cases end with a body,
  and holds every body to Dub's OpenAPI file and server rules.
- A typo in an environment variable's name (``BRIDGE_OUTBOX_AFTER_HOUR``):
  ``tests/test_settings.py::test_the_configuration_table_and_the_settings_agree``.
- Dropping the ``omitted`` rule of a batch answer:
  ``tests/test_webhook.py::test_a_mixed_size_batch_answer_lists_a_prefix``.
- ``bridge explain`` disagreeing with what is sent: ``test_explain_is_the_same_walk``.
- The fast path compiler.py derives disagreeing with the interpreter (an empty value read as
  present, a default not applied): ``test_perturbed_golden_events`` compares the traced
  interpreter with the untraced fast path; a fast path that hands every event over:
  ``tests/test_fast_path.py::test_golden_events_that_send_never_reach_the_interpreter``.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.outcomes import Outcome
from bridge.dub.endpoints import ENDPOINTS
from bridge.mapping.engine import CompiledMapping, Engine
from bridge.mapping.explain import explain
from bridge.mapping.paths import simple_steps
from bridge.mapping.transforms import is_empty
from bridge.service.mapping_files import load_directory
from tests.helpers.mapkit import engine as engine_of
from tests.test_dub_endpoints import assert_valid, request_schemas

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(3)
CASES_PER_EVENT = 12

# Values a perturbed path takes: mostly plausible ones (so most cases still send), and the
# odd ones each rule must refuse or clean.
PLAUSIBLE: list[Any] = [
    "cl_2", "user_2", "Bob", "bob@example.com", 5, 12.5, "49.50", "EUR", "jpy", 1500, "ORD-9",
    "stripe", {"plan": "pro"}, 3, "https://example.com/a.png",
]  # fmt: skip
ODD: list[Any] = [
    None, "", "  ", 0, -1, 1.5, 19.99, " 19.99 ", "abc", [], {}, True, 10**30, "x" * 300,
    "\U0001f600" * 60, "\uff35\uff33\uff24", 101, 100, 1, "1e400", 2**53, "not-an-email",
]  # fmt: skip


def _golden_sets(tmp: Path) -> list[tuple[Engine, list[dict[str, Any]]]]:
    """Each shipped mapping set (the defaults, each recipe alone) with its golden events."""
    folders = [ROOT / "mappings"]
    for recipe in sorted((ROOT / "mappings" / "examples").glob("*.yaml")):
        folder = tmp / recipe.stem
        folder.mkdir()
        shutil.copy(recipe, folder / recipe.name)
        folders.append(folder)
    sets = []
    for folder in folders:
        events = []
        for file in sorted(folder.glob("*.yaml")):
            for test in yaml.safe_load(file.read_text()).get("tests") or ():
                events += [test["event"]] if "event" in test else []
        sets.append((load_directory(folder).engine, events))
    return sets


@pytest.fixture(scope="module")
def golden_sets(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Engine, list[Any]]]:
    return _golden_sets(tmp_path_factory.mktemp("goldens"))


def _paths(mappings: tuple[CompiledMapping, ...]) -> list[tuple[str | int, ...]]:
    texts = [p.text for m in mappings for f in m.fields for p in f.all_paths()]
    texts += [p.text for m in mappings for c in m.conditions for p in c.paths]
    return sorted({steps for steps in map(simple_steps, texts) if steps}, key=str)


def _put(event: dict[str, Any], steps: tuple[str | int, ...], value: Any) -> None:
    node = event
    for step in steps[:-1]:
        if isinstance(step, int):
            return
        if not isinstance(node.get(step), dict):
            node[step] = {}
        node = node[step]
    if isinstance(steps[-1], str):
        node[steps[-1]] = value


def _check_body(result: Any, schemas: dict[str, Any]) -> None:
    assert result.request_path is not None and result.body is not None
    assert_valid(result.request_path, result.body, schemas)
    ENDPOINTS[result.action].model.model_validate(result.body)


@pytest.mark.parametrize("seed", SEEDS)
def test_perturbed_golden_events(golden_sets: list[tuple[Engine, list[Any]]], seed: int) -> None:
    """Golden events with one or two paths changed: every body the engine builds is valid for
    Dub, the traced walk gives the same results, and at least half the cases send."""
    schemas = request_schemas()
    rng = random.Random(seed)
    cases = with_body = 0
    for engine, events in golden_sets:
        for golden in events:
            if not any(r.outcome is Outcome.READY for r in engine.plan(golden)):
                continue  # a golden test of a skip or an error: nothing to perturb towards
            mappings = engine.candidates(golden.get("event", "")) or ()
            paths = _paths(mappings)
            for _ in range(CASES_PER_EVENT):
                event = copy.deepcopy(golden)
                for steps in rng.sample(paths, min(len(paths), rng.choice((1, 2)))):
                    pool = PLAUSIBLE if rng.random() < 0.7 else ODD
                    _put(event, steps, copy.deepcopy(rng.choice(pool)))
                results = engine.plan(event)
                traced = engine.plan(event, {})
                assert traced == results
                cases += 1
                sent = [r for r in results if r.outcome is Outcome.READY]
                with_body += bool(sent)
                for result in sent:
                    _check_body(result, schemas)
    assert cases >= 100
    assert with_body * 2 >= cases, f"only {with_body} of {cases} cases end with a body"


def test_explain_is_the_same_walk(golden_sets: list[tuple[Engine, list[Any]]]) -> None:
    """What explain reports per mapping (outcome, body, errors) is what the engine plans."""
    for engine, events in golden_sets:
        for event in events:
            report = explain(engine, event)
            planned = {r.mapping: r for r in engine.plan(event)}
            for step in report["mappings"]:
                result = planned[step["mapping"]]
                assert step["outcome"] == str(result.outcome)
                assert step["body"] == result.body and step["errors"] == list(result.errors)


def _limits() -> list[tuple[str, str, int, int]]:
    """(action, field, lowest, highest) for every bounded field, from Dub's OpenAPI file and
    the server's rules the file records beside it (``x-dub-source-deltas``)."""
    found = []
    for path, schema in request_schemas().items():
        action = path.rsplit("/", 1)[1]
        for name, prop in schema["properties"].items():
            if "maxLength" in prop:
                found.append((action, name, prop.get("minLength", 1), prop["maxLength"]))
    # eventQuantity: "nullable integer, > 0, <= 100" in Dub's server (the spec has no bounds).
    found.append(("lead", "eventQuantity", 1, 100))
    return found


def _text(field: str, size: int) -> str:
    """Text of exactly ``size`` characters that is otherwise what the field wants."""
    shape = {"customerEmail": ("", "@example.com"), "customerAvatar": ("https://x.co/", "")}
    head, tail = shape.get(field, ("", ""))
    return head + "a" * (size - len(head) - len(tail)) + tail


def _lead_or_sale(action: str, field: str, value: Any) -> dict[str, Any]:
    mapping = {
        "name": "m",
        "trigger": {"event": "E"},
        "action": action,
        "fields": {
            "customerExternalId": "$.userId",
            "eventName": {"value": "E"},
            field: "$.properties.v",
        },
    }
    if action == "lead":
        mapping["fields"]["clickId"] = {"value": "cl_1"}
    else:
        mapping["fields"]["amount"] = {"value": 100}
    engine = engine_of(yaml.safe_dump({"mappings": [mapping]}))
    event = {"type": "track", "event": "E", "messageId": "m1", "userId": "u1"}
    (result,) = engine.plan(event | {"properties": {"v": value}})
    return {"result": result}


@pytest.mark.parametrize(("action", "field", "low", "high"), _limits())
def test_every_length_and_range_rule_at_its_bounds(
    action: str, field: str, low: int, high: int
) -> None:
    """At each bound a value is sent unchanged; one past it never reaches Dub as it is."""
    schemas = request_schemas()
    if field == "eventQuantity":
        inside, outside = [low, high], [low - 1, high + 1]
    else:
        inside = [_text(field, high), _text(field, max(low, 20))]
        outside = [_text(field, high + 1)]
    for value in inside:
        result = _lead_or_sale(action, field, value)["result"]
        assert result.outcome is Outcome.READY, (field, value, result.errors)
        assert result.body[field] == value
        _check_body(result, schemas)
    for value in outside:
        result = _lead_or_sale(action, field, value)["result"]
        if result.outcome is Outcome.READY:
            assert result.body.get(field) != value, (field, value)
            _check_body(result, schemas)
        else:
            assert result.outcome is Outcome.INVALID and any(field in e for e in result.errors)


@pytest.mark.parametrize("blank", ["  ", "\t\n", ""])
def test_whitespace_only_text_is_no_value(blank: str) -> None:
    """Whitespace-only text is no value: the next path gives the amount."""
    mapping = {
        "name": "s",
        "trigger": {"event": "Order Completed"},
        "action": "sale",
        "fields": {
            "customerExternalId": "$.userId",
            "amount": {
                "paths": ["$.properties.revenue", "$.properties.total"],
                "transform": "minor_units",
            },
        },
    }
    engine = engine_of(yaml.safe_dump({"mappings": [mapping]}))
    event = {"type": "track", "event": "Order Completed", "messageId": "m", "userId": "u"}
    (result,) = engine.plan(event | {"properties": {"revenue": blank, "total": "12.5"}})
    assert result.outcome is Outcome.READY, result.errors
    assert result.body is not None and result.body["amount"] == 1250
    step = explain(engine, event | {"properties": {"revenue": blank, "total": "12.5"}})
    (fields,) = [m["fields"] for m in step["mappings"]]
    amount = next(f for f in fields if f["field"] == "amount")
    assert amount["from"] == "$.properties.total"
    assert json.dumps(amount["tried"][0]["value"]) == json.dumps(blank)


@given(st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", "a", "0", "é"])))
def test_blank_text_is_empty_exactly_when_nothing_is_left_once_stripped(text: str) -> None:
    """is_empty's shortcut (text that starts with a non-space is not blank) says what
    stripping says, for every mix of spaces of every kind and other characters."""
    assert is_empty(text) is (not text.strip())

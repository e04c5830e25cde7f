"""Triggers: exact names or a regular expression, worked out once per distinct event name."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.mapping import compiler, paths
from bridge.mapping.engine import NAME_CACHE_MAX_LENGTH, NAME_CACHE_SIZE
from tests.helpers.mapkit import engine, errors, event, load, one, sale

VARIANTS = sale(
    "amount: {path: $.properties.revenue, transform: minor_units}",
    trigger='{event_matches: "^(Order Completed - (iOS|Android)|Checkout Finished)$"}',
)


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        ("Order Completed - iOS", True),
        ("Order Completed - Android", True),
        ("Checkout Finished", True),
        ("Order Completed", False),
        ("Order Completed - iOS beta", False),
    ],
)
def test_event_matches_takes_every_variant(name: str, taken: bool) -> None:
    """One mapping takes every event name its regular expression matches."""
    got = one(engine(VARIANTS), event(name, revenue=1))
    assert (got.outcome == "ready") is taken
    if not taken:
        assert got.reason == f"no mapping for event {name!r}"


def test_exact_and_regex_mappings_share_an_event_leads_first() -> None:
    """An event taken by an exact-name lead and a regex sale makes both calls, lead first."""
    both = (
        VARIANTS.replace('"^(Order', '"^(Sign Up|Order')
        + """\
  - name: a-lead
    trigger: {event: Sign Up}
    action: lead
    fields: {clickId: $.c, eventName: $.event, customerExternalId: $.userId}
"""
    )
    results = engine(both).plan(event("Sign Up", revenue=1) | {"c": "cl"})
    assert [r.mapping for r in results] == ["a-lead", "s"]


def test_regex_lookups_are_cached_and_bounded() -> None:
    """Each distinct name is matched once; the cache holds a bounded number of short names."""
    compiled = engine(VARIANTS)
    for _ in range(3):
        compiled.plan(event("Checkout Finished", revenue=1))
    lookup: Any = compiled.candidates
    cached = lookup.__closure__[0].cell_contents  # the lru_cache of the name look-up
    assert cached.cache_info().hits >= 2 and cached.cache_info().maxsize == NAME_CACHE_SIZE
    long_name = "x" * (NAME_CACHE_MAX_LENGTH + 1)
    before = cached.cache_info().currsize
    assert compiled.plan(event(long_name))[0].outcome == "skipped"
    assert cached.cache_info().currsize == before  # a long name is matched, never kept


def test_exact_names_use_the_plain_dictionary() -> None:
    """Without regex triggers the look-up is the dict's own get: no cache, no regex."""
    compiled = engine(sale("amount: $.a"))
    assert compiled.candidates == compiled._by_event.get


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ('{event: E, event_matches: "^E$"}', "exactly one of `event`"),
        ("{conditions: []}", "exactly one of `event`"),
        ('{event_matches: "(unclosed"}', "bad regular expression '(unclosed'"),
    ],
)
def test_bad_triggers_are_load_errors(trigger: str, message: str) -> None:
    """event xor event_matches; a regular expression that does not compile is a load error."""
    found = errors(sale("amount: $.a", trigger=trigger))
    assert any(e.startswith("m.yaml:3: s.trigger") and message in e for e in found), found


def test_a_regex_overlapping_an_exact_name_warns() -> None:
    """A regex trigger that takes another mapping's exact name for the same action warns."""
    text = VARIANTS + sale("amount: $.a").replace("mappings:\n", "").replace("name: s", "name: t")
    text = text.replace("Order Completed}", "Checkout Finished}")
    warnings = [str(w) for w in load(text).warnings]
    assert any("'Checkout Finished' also makes a sale" in w for w in warnings), warnings


def test_a_path_that_fails_on_one_event_costs_only_that_result(monkeypatch: Any) -> None:
    """jsonpath-ng failing on an odd event makes that (event, mapping) invalid, naming the path."""
    text = "$.properties.items[*].cost"  # a path no other test compiles (paths are cached)

    class Broken:
        def find(self, doc: Any) -> list[Any]:
            raise TypeError("odd value")

    real_parse = paths.jsonpath_parse
    monkeypatch.setattr(paths, "jsonpath_parse", lambda t: Broken() if t == text else real_parse(t))
    monkeypatch.setattr(paths, "check_selecting", lambda parsed: None)
    compiled = engine(sale(f"amount: {{path: '{text}', transform: minor_units}}"))
    got = one(compiled, event(items=[{"cost": 1}]))
    assert got.outcome == "invalid"
    assert got.errors == (f"path {text} could not be evaluated: TypeError: odd value",)


def test_a_bug_in_a_mapping_is_one_invalid_result(monkeypatch: Any) -> None:
    """Any exception while applying a mapping becomes an invalid result, never a traceback."""

    def bug(*_: Any) -> Any:
        raise TypeError("a bug")

    monkeypatch.setitem(compiler.NAMED, "minor_units", bug)
    compiled = engine(sale("amount: {path: $.properties.revenue, transform: minor_units}"))
    got = one(compiled, event(revenue=1))
    assert got.outcome == "invalid" and "failed on this event: TypeError" in got.errors[0]

"""The mapping language's second step, conditions and structure: what ops could not write.

Findings: `gte: 2` skipped app version "2.10.1" with a reason that read as if it were
smaller; two overlapping `event_matches` triggers passed validate without a warning and
sent two sales, while mappings whose conditions exclude each other got a false warning
nobody could silence; conditions could only skip, so a guard protecting money lost the
event quietly.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.outcomes import Outcome
from bridge.mapping.conditions import as_version
from bridge.mapping.explain import explain, explain_text
from tests.helpers.mapkit import engine, errors, load

BASE = {"type": "track", "messageId": "m1", "userId": "u1"}


def _event(name: str = "Order Completed", **properties: Any) -> dict[str, Any]:
    return BASE | {"event": name, "properties": properties}


def _sale(condition: str, *, key: str = "conditions") -> str:
    return f"""
        mappings:
          - name: s
            trigger:
              event: Order Completed
              {key}:
                - {condition}
            action: sale
            fields:
              customerExternalId: $.userId
              amount: {{path: $.properties.revenue, transform: minor_units}}
        """


def _outcome(text: str, **properties: Any) -> Any:
    (result,) = engine(text).plan(_event(revenue=10, **properties))
    return result


@pytest.mark.parametrize(
    ("seen", "test", "held"),
    [
        ("2.10.1", "version_gte: '2'", True),
        ("2.10.1", "version_gt: '2.9'", True),
        ("10.0", "version_gt: '2.9'", True),
        ("2", "version_gte: '2.0.0'", True),
        ("2", "version_gt: '2.0.0'", False),
        ("v3.1", "version_lt: '3.2'", True),
        ("1.9.9", "version_gte: '2'", False),
    ],
)
def test_versions_compare_part_by_part(seen: str, test: str, held: bool) -> None:
    """Dotted versions compare numerically part by part; missing parts are 0."""
    result = _outcome(_sale(f"{{path: $.properties.app, {test}}}"), app=seen)
    assert (result.outcome is Outcome.READY) is held, result.reason


def test_a_number_test_on_a_version_says_not_a_number() -> None:
    """`gte: 2` on "2.10.1" does not hold, and the reason says the value is not a number."""
    result = _outcome(_sale("{path: $.properties.app, gte: 2}"), app="2.10.1")
    assert result.outcome is Outcome.SKIPPED
    assert "not a number" in (result.reason or "") and "2.10.1" in (result.reason or "")


def test_a_version_test_on_other_text_says_not_a_version() -> None:
    """Text that is no dotted version fails a version test, saying so."""
    result = _outcome(_sale("{path: $.properties.app, version_gte: '2'}"), app="beta")
    assert result.outcome is Outcome.SKIPPED and "not a version" in (result.reason or "")


@given(st.lists(st.integers(0, 999), min_size=1, max_size=5), st.integers(0, 3))
def test_trailing_zeros_never_change_a_version(parts: list[int], zeros: int) -> None:
    """ "2.1" and "2.1.0.0" are the same version; a JSON number is read by its text."""
    text = ".".join(map(str, parts))
    assert as_version(text) == as_version(text + ".0" * zeros)
    assert as_version("v" + text) == as_version(text)


@pytest.mark.parametrize(
    ("test", "value", "held"),
    [
        ("starts_with: 'https://'", "https://x.co/a.png", True),
        ("starts_with: 'https://'", "http://x.co", False),
        ("ends_with: '@staff.example'", "ada@staff.example", True),
        ("contains: test", "a-test-order", True),
        ("contains: TEST", "a-test-order", False),
        ("{contains: TEST, ignore_case: true}", "a-test-order", True),
        ("{equals: PRO, ignore_case: true}", "pro", True),
        ("{in: [Pro, Team], ignore_case: true}", "TEAM", True),
        ("{not_in: [Pro], ignore_case: true}", "pro", False),
        ("{matches: '^ord-', ignore_case: true}", "ORD-1", True),
        ("{starts_with: 'HTTPS', ignore_case: true}", "https://x", True),
    ],
)
def test_text_tests_and_ignore_case(test: str, value: str, held: bool) -> None:
    """starts_with, ends_with, contains, and ignore_case beside the text tests."""
    if test.startswith("{"):
        condition = "{path: $.properties.v, " + test[1:]
    else:
        condition = "{path: $.properties.v, " + test + "}"
    result = _outcome(_sale(condition), v=value)
    assert (result.outcome is Outcome.READY) is held, result.reason


def test_in_without_a_list_says_it_needs_one() -> None:
    """`in: pro` is a load error saying that `in` needs a list."""
    found = errors(_sale("{path: $.properties.plan, in: pro}"))
    assert any("`in` needs a list" in e for e in found), found


def test_ignore_case_beside_a_number_test_is_refused() -> None:
    """`ignore_case` only goes with text tests."""
    found = errors(_sale("{path: $.properties.v, gt: 2, ignore_case: true}"))
    assert any("`ignore_case` goes with" in e for e in found), found


def test_a_trigger_test_without_a_path_is_refused() -> None:
    """A path-less test belongs in a source's `when`; in a trigger it is a load error."""
    found = errors(_sale("{starts_with: x}"))
    assert any("needs a `path`" in e for e in found), found


def test_require_makes_a_failing_event_a_dead_letter() -> None:
    """A `require` condition that fails makes the event invalid with its reason, not skipped."""
    text = _sale("{path: $.properties.currency, in: [USD, EUR], reason: unknown currency}",
                 key="require")  # fmt: skip
    result = _outcome(text, currency="XXX")
    assert result.outcome is Outcome.INVALID
    assert result.errors == ("required: unknown currency",)
    assert _outcome(text, currency="USD").outcome is Outcome.READY
    report = explain_text(explain(engine(text), _event(revenue=10, currency="XXX")))
    assert any(line.strip().startswith("require $.properties.currency") for line in report)


EXCLUDE = """
    exclude:
      - {path: $.context.traits.email, ends_with: '@staff.example', reason: staff order}
      - {path: $.properties.test, equals: true}
    mappings:
      - name: s
        trigger: {event: Order Completed}
        action: sale
        fields:
          customerExternalId: $.userId
          amount: {path: $.properties.revenue, transform: minor_units}
      - name: l
        trigger: {event: Order Completed}
        action: lead
        fields:
          customerExternalId: $.userId
          clickId: {value: cl_1}
          eventName: {value: Purchase}
    """


def test_exclude_skips_every_mapping_of_the_set() -> None:
    """A top-level `exclude` that holds skips the event for every mapping, naming the file."""
    staff = engine(EXCLUDE).plan(
        _event(revenue=5) | {"context": {"traits": {"email": "a@staff.example"}}}
    )
    assert [r.outcome for r in staff] == [Outcome.SKIPPED, Outcome.SKIPPED]
    assert {r.reason for r in staff} == {"excluded by m.yaml: staff order"}
    test_order = engine(EXCLUDE).plan(_event(revenue=5, test=True))
    assert all(
        (r.reason or "").startswith("excluded by m.yaml: $.properties.test") for r in test_order
    )
    assert [r.outcome for r in engine(EXCLUDE).plan(_event(revenue=5))] == ["ready", "ready"]


GROUP = """
    mappings:
      - name: big-sale
        group: order
        trigger:
          event: Order Completed
          conditions: [{path: $.properties.revenue, gte: 100}]
        action: sale
        fields:
          customerExternalId: $.userId
          amount: {path: $.properties.revenue, transform: minor_units}
          eventName: {value: Big order}
      - name: any-sale
        group: order
        trigger: {event: Order Completed}
        action: sale
        fields:
          customerExternalId: $.userId
          amount: {path: $.properties.revenue, transform: minor_units}
    """


def test_the_first_mapping_of_a_group_whose_conditions_hold_takes_the_event() -> None:
    """In a group, the first (load order) whose conditions hold takes it; the rest skip."""
    big = {r.mapping: r for r in engine(GROUP).plan(_event(revenue=150))}
    assert big["big-sale"].outcome is Outcome.READY
    assert big["any-sale"].outcome is Outcome.SKIPPED
    assert big["any-sale"].reason == "group order: taken by big-sale"
    small = {r.mapping: r for r in engine(GROUP).plan(_event(revenue=15))}
    assert small["big-sale"].outcome is Outcome.SKIPPED
    assert small["any-sale"].outcome is Outcome.READY


def test_a_group_member_that_takes_the_event_keeps_it_even_when_invalid() -> None:
    """Taking is decided by the conditions: an invalid result still takes the event."""
    text = GROUP.replace(
        "{path: $.properties.revenue, gte: 100}", "{path: $.properties.tier, equals: gold}"
    )
    results = {r.mapping: r for r in engine(text).plan(_event(revenue="abc", tier="gold"))}
    assert results["big-sale"].outcome is Outcome.INVALID
    assert results["any-sale"].reason == "group order: taken by big-sale"


def test_a_group_silences_the_overlap_warning() -> None:
    """Two sales for one event warn, unless both are in one group."""
    warned = [str(w) for w in load(GROUP.replace("group: order", "")).warnings]
    assert any("one event would send two sales" in w for w in warned), warned
    assert [str(w) for w in load(GROUP).warnings] == []


def test_two_regex_triggers_overlapping_on_a_known_name_are_warned() -> None:
    """Two `event_matches` of one action that both match a name the set knows (an exact
    trigger or a golden test's event) are warned about."""
    text = """
        mappings:
          - name: a
            trigger: {event_matches: '^Order'}
            action: sale
            fields: {customerExternalId: $.userId, amount: {value: 1}}
          - name: b
            trigger: {event_matches: 'Completed$'}
            action: sale
            fields: {customerExternalId: $.userId, amount: {value: 1}}
        tests:
          - name: one order
            event: {type: track, event: Order Completed, messageId: t1, userId: u}
            expect:
              - {mapping: a, body: {customerExternalId: u, amount: 1}}
              - {mapping: b, body: {customerExternalId: u, amount: 1}}
        """
    warned = [str(w) for w in load(text).warnings]
    assert any("'Order Completed' also makes a sale through 'a'" in w for w in warned), warned

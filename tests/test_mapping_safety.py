"""Mapping files cannot hurt the service: linear-time regexes, bounded JSONPath, no YAML aliases.

Each attack of issue 23 against mapping files: a pattern that backtracks for ever on a
visitor's text, a path whose cost grows with the square of the event's depth, and a YAML
alias bomb that takes `bridge validate` to MemoryError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bridge.cli import main
from bridge.mapping import values
from bridge.mapping.paths import PathSyntaxError, compile_path
from bridge.mapping.yamlread import YAMLProblem, read_yaml
from tests.helpers.mapkit import engine, errors, event, one, sale

CATASTROPHIC = "^(a+)+$"
# Python's `re` tries 2**n ways to split n a's before failing on the last character.
ADVERSARIAL = "a" * 100_000 + "!"


def test_a_catastrophic_condition_pattern_returns_on_a_long_adversarial_value() -> None:
    """`matches: ^(a+)+$` on 100,000 a's and a `!` is answered (RE2), not backtracked for ever."""
    mappings = engine(
        sale(
            "amount: $.properties.revenue",
            trigger=f'{{event: Order Completed, conditions: [{{path: $.properties.sku, matches: "{CATASTROPHIC}"}}]}}',
        )
    )
    result = one(mappings, event(sku=ADVERSARIAL, revenue=5))
    assert result.outcome == "skipped"
    assert result.reason is not None and "expected matches '^(a+)+$'" in result.reason
    assert one(mappings, event(sku="aaaa", revenue=5)).outcome == "ready"


def test_a_catastrophic_trigger_pattern_returns_on_a_long_adversarial_name() -> None:
    """`event_matches: ^(a+)+$` on a 100,001-character event name is answered, not backtracked."""
    mappings = engine(
        sale("amount: $.properties.revenue", trigger=f'{{event_matches: "{CATASTROPHIC}"}}')
    )
    result = one(mappings, event(ADVERSARIAL, revenue=5))
    assert result.outcome == "skipped" and result.reason is not None
    assert result.reason.startswith("no mapping for event 'aaaa")
    assert one(mappings, event("aaa", revenue=5)).outcome == "ready"


def test_the_compiled_mapping_runs_the_one_re2_object_of_its_pattern() -> None:
    """The mapping's condition searches through the pattern's one compiled RE2 form."""
    mappings = engine(
        sale(
            "amount: $.properties.revenue",
            trigger='{event: Order Completed, conditions: [{path: $.properties.sku, matches: "^SKU-"}]}',
        )
    )
    (mapping,) = mappings.mappings
    regex = values.compile_pattern("^SKU-")
    (condition,) = mapping.conditions
    assert condition.test is not None
    searches = [c.cell_contents for c in condition.test.__closure__ or ()]
    assert any(getattr(s, "__self__", None) is regex for s in searches), searches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"^(a)\1$", r"invalid escape sequence: \1"),  # a backreference
        ("^a(?=b)", "invalid perl operator: (?="),  # lookahead
        ("(?<!a)b", "invalid perl operator: (?<!"),  # lookbehind
        ("^(?P<x>a)(?P=x)$", "invalid perl operator: (?P"),  # a named backreference
        ("(", "missing ): ("),
    ],
)
def test_a_pattern_re2_refuses_is_a_load_error_naming_it(pattern: str, reason: str) -> None:
    """Backreferences and lookaround, which RE2 lacks, are load errors at their line, with RE2's
    reason and a hint, for triggers and conditions alike."""
    trigger = f"{{event_matches: '{pattern}'}}"  # single quotes: YAML keeps backslashes
    (found,) = errors(sale("amount: $.a", trigger=trigger))
    where = "m.yaml:3: s.trigger.event_matches"
    assert found.startswith(
        f"{where}: bad regular expression {pattern!r}: RE2 refuses it: {reason}"
    )
    assert "(hint: mapping files use RE2 syntax" in found and "no backreferences" in found
    condition = f"{{event: E, conditions: [{{path: $.a, matches: '{pattern}'}}]}}"
    (found,) = errors(sale("amount: $.a", trigger=condition))
    assert found.startswith("m.yaml:3: s.trigger.conditions.0.matches: bad regular expression")
    assert f"RE2 refuses it: {reason}" in found


def test_a_filter_regex_is_refused_for_the_matches_condition() -> None:
    """jsonpath-ng's `=~` runs Python's backtracking regex: it is a load error pointing at `matches`."""
    (found,) = errors(sale(f"amount: \"$.items[?(@.sku =~ '{CATASTROPHIC}')].price\""))
    assert found.startswith("m.yaml:7: s.fields.amount: bad JSONPath")
    assert "a filter's regular expression (=~) is not supported" in found
    assert "`matches` condition, which runs RE2" in found


def test_a_regex_searches_text_holding_a_lone_surrogate() -> None:
    """Text UTF-8 cannot hold (a lone surrogate) is searched as repaired; such a pattern is refused."""
    assert values.Regex("^a.b$").search("a\ud800b") is True
    assert values.Regex("^ab$").search("a\udfffb") is False
    with pytest.raises(ValueError, match="a lone surrogate is not text"):
        values.Regex("^\ud800")


# The shipped recipes' patterns, and the common shapes; RE2 and `re` agree on them for text
# without a newline (the README states where they differ).
SHARED_SYNTAX = [
    "^(Order Completed - (iOS|Android)|Checkout Finished)$",
    "^TEST-",
    "^https://staging\\.",
    "[?&]dub_id=",
    "(?i)^order [a-z]+$",
    "^[A-Z]{2,3}-\\d+$",
    "^(?P<kind>sku|id)_[0-9a-f]*$",
]
_TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(["Order Completed - iOS", "TEST-1", "https://staging.x", "?a=1&dub_id=c"]),
    st.sampled_from(["ORDER paid", "AB-12", "sku_0af", "id_", "Checkout Finished"]),
)


@given(pattern=st.sampled_from(SHARED_SYNTAX), text=_TEXT)
def test_re2_finds_what_pythons_re_finds_for_the_common_syntax(pattern: str, text: str) -> None:
    """On one-line ASCII text the shipped and common patterns hold exactly where `re`'s did."""
    assert values.Regex(pattern).search(text) is (re.search(pattern, text) is not None)


def _deep(depth: int) -> dict[str, Any]:
    """{"a": {"b": 1, "a": {"b": 1, "a": ...}}}: every `a` lies below every earlier one."""
    top: dict[str, Any] = {}
    node = top
    for _ in range(depth):
        node["a"] = {"b": 1}
        node = node["a"]
    return top


@pytest.mark.parametrize(
    "path",
    ["$..a..b", "$..a[?(@..b == 1)]", "$.x[?(@..b)]..c", "$..[?(@..b)]"],
)
def test_a_path_with_two_descents_is_refused_at_load(path: str) -> None:
    """A second `..` (a filter's too) walks the event again below every match: refused at load."""
    (found,) = errors(sale(f'amount: "{path}"'))
    assert found.startswith("m.yaml:7: s.fields.amount: bad JSONPath")
    assert "2 recursive descents (..), counting filters': at most 1 is allowed" in found


def test_one_descent_walks_a_deep_and_wide_event_once() -> None:
    """`$..b` on 900 nested levels plus 5,000 siblings finds each value once (linear, not squared)."""
    deep = _deep(900)
    deep["wide"] = [{"b": n, "c": [n]} for n in range(5000)]
    found = compile_path("$..b").find(deep)
    assert len(found) == 900 + 5000
    assert compile_path("$..a.b").find(deep) == [1] * 900
    with pytest.raises(PathSyntaxError, match="2 recursive descents"):
        compile_path("$..a..b")


BOMB = """\
version: 1
mappings:
  - name: s
    trigger: {event: E}
    action: sale
    fields:
      customerExternalId: $.userId
      amount: $.a
      metadata:
        value:
          a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
          b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
          c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
          d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
          e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
          f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
          g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
          h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
          i: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_yaml_alias_bomb_is_a_clear_validate_error(tmp_path: Path) -> None:
    """A 1 KB billion-laughs file makes `bridge validate` exit 1 naming the first alias's line."""
    assert len(BOMB) < 1300
    (tmp_path / "bomb.yaml").write_text(BOMB)
    done = CliRunner().invoke(main, ["validate", str(tmp_path)], catch_exceptions=False)
    assert done.exit_code == 1
    assert done.stderr.splitlines() == [
        f"{tmp_path / 'bomb.yaml'}:12: YAML: an alias (*a) repeats an anchored value: mapping "
        "files take no aliases, since a few lines of them can stand for billions of values "
        "(hint: write the value out)",
        f"1 error(s) in {tmp_path}",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: &x 1\nb: *x\n", 2),  # a scalar
        ("base: &b {x: 1}\nm:\n  <<: *b\n", 3),  # a merge key takes an alias too
        ("a: &x [1]\nb:\n  - 2\n  - *x\n", 4),
        ("a: &x [*x]\n", 1),  # an alias inside its own anchor: a cycle
    ],
)
def test_any_yaml_alias_is_refused_at_its_line(text: str, line: int) -> None:
    """Every alias, however small, is refused at the line it is written on."""
    with pytest.raises(YAMLProblem, match=r"an alias \(\*[xb]\)") as info:
        read_yaml(text.encode())
    assert info.value.line == line


def test_anchors_without_aliases_and_plain_files_still_read() -> None:
    """An anchor no alias uses is harmless; nothing else about reading changes."""
    data, duplicates = read_yaml(b"a: &x [1, 2]\nb: {c: 3}\nb: 4\n")
    assert data == {"a": [1, 2], "b": 4} and duplicates == [(3, "b")]

"""JSONPath: the compiled fast path answers exactly as jsonpath-ng does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng.ext import parse

from bridge.mapping.paths import PathSyntaxError, compile_path, simple_steps

KEYS = ["a", "b", "c_1", "Dub (Actions)", "x y", "0", "properties", "where"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=20,
)


def _step(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    # jsonpath-ng reads `where` as an operator: such keys must be quoted.
    if key.replace("_", "").isalnum() and not key[0].isdigit() and key != "where":
        return f".{key}"
    return f"['{key}']"


paths = st.lists(st.sampled_from(KEYS) | st.integers(0, 3), min_size=1, max_size=4).map(
    lambda steps: "$" + "".join(_step(s) for s in steps)
)


@settings(max_examples=200)
@given(json_values, paths)
def test_fast_path_equals_jsonpath_ng(doc: Any, path: str) -> None:
    """On random documents and simple paths, the fast walk returns jsonpath-ng's values."""
    compiled = compile_path(path)
    expected = [m.value for m in parse(path).find(doc)]
    assert compiled.find(doc) == expected


@pytest.mark.parametrize(
    ("path", "fast"),
    [
        ("$.a.b", True),
        ("$.a['b c']", True),
        ('$.a["b c"]', True),
        ("$.a[0].b", True),
        ("$.integrations['Dub (Actions)'].dub_id", True),
        ("$.a[*].b", False),
        ("$.a[-1]", False),
        ("$.a[0:2]", False),
        ("$.a[?(@.b > 1)].b", False),
        ("$..b", False),
        ("$['where'].b", True),
    ],
)
def test_simple_paths_take_the_fast_path(path: str, fast: bool) -> None:
    """Plain key and index paths compile to look-ups; the rest go to jsonpath-ng."""
    assert compile_path(path).fast is fast
    assert (simple_steps(path) is not None) is fast


def test_fallback_paths_still_work() -> None:
    """Filters and wildcards are evaluated by jsonpath-ng, compiled once."""
    doc = {"a": [{"b": 1}, {"b": 2}, {"b": 3}]}
    assert compile_path("$.a[*].b").find(doc) == [1, 2, 3]
    assert compile_path("$.a[?(@.b > 1)].b").find(doc) == [2, 3]


@pytest.mark.parametrize("bad", ["a.b", "$.a[", "$.a[?(@.b >)]", "", "$$"])
def test_bad_paths_are_refused(bad: str) -> None:
    """A path jsonpath-ng cannot parse, or one not starting with $, is an error."""
    with pytest.raises(PathSyntaxError):
        compile_path(bad)


REFUSED = [
    ("$.a.`sub(/x/, y)`", "`sub()` is not supported (hint: use a transform or a `template`)"),
    ("$.a.`str()`", "`str()` is not supported (hint: use `transform: string`"),
    ("$.a.`split(,, 0, -1)`", "`split()` is not supported"),
    ("$.a - $.b", "arithmetic (+ - * /) is not supported (hint: use `add: [...]` and `subtract:"),
    ("$.a * 2", "arithmetic"),
    ("$.a.`len`", "`len` is not supported"),
    ("$.a.`keys`", "`keys` is not supported"),
    ("$.a.`sorted`", "sorting"),
    ("$.a[\\b]", "sorting"),
    ("$.`parent`", "`parent` is not supported"),
    ("$.a|$.b", "union (|) is not supported (hint: list the alternatives under `paths"),
    ("$.a[?(@.b =~ 'x')]", "a filter's regular expression (=~) is not supported"),
    ("$..a..b..c", "3 recursive descents (..), counting filters': at most 1 is allowed"),
    ("$.a[?(@..b > 1)]..c", "2 recursive descents"),
]


def test_computing_paths_are_refused_with_a_hint() -> None:
    """jsonpath-ng's extension operators and chained descents are refused, saying what instead."""
    for path, message in REFUSED:
        with pytest.raises(PathSyntaxError) as info:
            compile_path(path)
        assert message in str(info.value), path


@pytest.mark.parametrize(
    "path", ["$.a[?(@.b > 1)].b", "$..b", "$..a.b", "$.a[*].b", "$.a[0:2]", "$.a where $.b"]
)
def test_selecting_paths_are_kept(path: str) -> None:
    """Filters, wildcards, slices and one descent still work."""
    assert compile_path(path).find({"a": [{"b": 2}]}) is not None


def test_200_chained_descents_are_refused_by_validate(tmp_path: Any) -> None:
    """The path that took 10 s and 380 MB per event is refused at load by `bridge validate`."""
    from click.testing import CliRunner

    from bridge.cli import main

    (tmp_path / "m.yaml").write_text(
        "mappings:\n  - name: s\n    trigger: {event: E}\n    action: sale\n"
        f"    fields: {{customerExternalId: $.u, amount: '${'..a' * 200}'}}\n"
    )
    done = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert done.exit_code == 1
    assert "200 recursive descents (..), counting filters': at most 1 is allowed" in done.stderr

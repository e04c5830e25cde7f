"""Trigger conditions: tests on the event and their combinators, compiled into closures at load.

A test reads the first non-empty value of its ``path``/``paths`` (``exists`` asks
whether any path finds anything at all) and compares it exactly: JSON equality for
``equals``/``in``, exact decimals for ``gt``..``lte``, a regular expression searched in
text for ``matches`` (RE2's, linear in the text: ``values.Regex``). An absent value
satisfies ``not_equals``, ``not_in``, ``not_empty: false`` and ``exists: false`` only.
``any``, ``all`` and ``not`` nest freely.

Each condition compiles to a ``holds(event) -> bool`` closure specialised to its test,
which is all the hot path calls. ``trace`` walks the same compiled tree again, recording
the values seen, for a skipped event's reason and for ``bridge explain``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core.masking import mask_value
from .paths import CompiledPath, cached_path, check_path
from .transforms import is_empty
from .values import (
    MISSING,
    Pattern,
    as_number,
    check_json,
    compile_pattern,
    json_equal,
    json_key,
    shown,
)

TESTS: tuple[str, ...] = ("exists", "equals", "not_equals", "in", "not_in", "gt", "gte")
TESTS += ("lt", "lte", "matches", "not_empty", "starts_with", "ends_with", "contains")
TESTS += ("version_gt", "version_gte", "version_lt", "version_lte")
# The tests on text that `ignore_case: true` may go with.
CASELESS: tuple[str, ...] = ("equals", "not_equals", "in", "not_in", "starts_with")
CASELESS += ("ends_with", "contains", "matches")
TEXT_TESTS = ("starts_with", "ends_with", "contains")
VERSIONS = ("version_gt", "version_gte", "version_lt", "version_lte")
# A dotted version: an optional leading v, numeric parts ("2", "2.10.1", "v10.0").
_VERSION = re.compile(r"[vV]?(\d{1,9}(?:\.\d{1,9}){0,9})")
COMBINATORS = ("any", "all", "not")
_ORDER: dict[str, Callable[[Decimal, Decimal], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}

Holds = Callable[[Any], bool]


class ConditionSpec(BaseModel):
    """One condition as written: a test on ``path``/``paths``, or ``any``/``all``/``not``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)
    paths: tuple[str, ...] = ()
    exists: bool | None = None
    equals: Any = None
    not_equals: Any = None
    in_: tuple[Any, ...] | None = Field(None, alias="in")
    not_in: tuple[Any, ...] | None = None
    gt: Decimal | None = None
    gte: Decimal | None = None
    lt: Decimal | None = None
    lte: Decimal | None = None
    matches: Pattern | None = None
    not_empty: bool | None = None
    starts_with: str | None = Field(None, min_length=1)
    ends_with: str | None = Field(None, min_length=1)
    contains: str | None = Field(None, min_length=1)
    version_gt: str | None = None
    version_gte: str | None = None
    version_lt: str | None = None
    version_lte: str | None = None
    ignore_case: bool = False
    any: tuple[ConditionSpec, ...] | None = Field(None, min_length=1)
    all: tuple[ConditionSpec, ...] | None = Field(None, min_length=1)
    not_: ConditionSpec | None = Field(None, alias="not")
    reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "path" in data:
            if "paths" in data:
                raise ValueError("give `path` or `paths`, not both")
            data = dict(data)
            data["paths"] = [data.pop("path")]
        return data

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for text in paths:
            check_path(text)
        return paths

    @field_validator("equals", "not_equals")
    @classmethod
    def _literal(cls, value: Any) -> Any:
        return check_json(value)

    @field_validator("in_", "not_in")
    @classmethod
    def _literals(cls, values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if values is not None:
            if not values:
                raise ValueError("give at least one value")
            return tuple(check_json(v) for v in values)
        return values

    @field_validator("gt", "gte", "lt", "lte", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        number = as_number(value)
        if number is None:
            raise ValueError("a number, or numeric text such as '12.50'")
        return number

    @field_validator("version_gt", "version_gte", "version_lt", "version_lte", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if as_version(value) is None:
            raise ValueError("a dotted version such as '2.0' or 'v10.1.3'")
        return str(value)

    @model_validator(mode="before")
    @classmethod
    def _in_needs_a_list(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("in", "not_in"):
                if key in data and not isinstance(data[key], (list, tuple)):
                    raise ValueError(f"`{key}` needs a list of values, e.g. {key}: [{data[key]!r}]")
        return data

    @model_validator(mode="after")
    def _one_test(self) -> ConditionSpec:
        given = self.model_fields_set
        tests = [t for t in TESTS if _attr(t) in given]
        combinators = [c for c in COMBINATORS if _attr(c) in given]
        if combinators:
            if len(combinators) > 1 or tests or self.paths or self.ignore_case:
                raise ValueError("a condition is one of `any`, `all` or `not`, or one test")
        elif len(tests) != 1:
            raise ValueError(f"a condition is a path and exactly one test: {', '.join(TESTS)}")
        elif self.ignore_case and tests[0] not in CASELESS:
            raise ValueError(f"`ignore_case` goes with {', '.join(CASELESS)}, not {tests[0]}")
        return self

    def without_path(self) -> list[str]:
        """The tests (here or nested) that name no path: they test a value, not the event."""
        if self.kind in COMBINATORS:
            children = self.any or self.all or ((self.not_,) if self.not_ else ())
            return [k for c in children for k in c.without_path()]
        return [] if self.paths else [self.kind]

    @property
    def kind(self) -> str:
        """The test or combinator this condition is."""
        given = self.model_fields_set
        return next(k for k in (*COMBINATORS, *TESTS) if _attr(k) in given)

    @property
    def expected(self) -> Any:
        return getattr(self, _attr(self.kind))


def as_version(value: Any) -> tuple[int, ...] | None:
    """A dotted version's numbers, trailing zeros dropped ("2" == "2.0.0"); None otherwise.
    A JSON number is read by its text (2.1 is "2.1")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        value = str(value)
    if not isinstance(value, str):
        return None
    match = _VERSION.fullmatch(value.strip())
    if match is None:
        return None
    parts = [int(p) for p in match[1].split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _attr(word: str) -> str:
    """The model attribute of a key: `in` and `not` are Python words."""
    return {"in": "in_", "not": "not_"}.get(word, word)


def keys() -> list[str]:
    """Every key a condition may hold, as written in YAML."""
    return ["path", "paths", *TESTS, *COMBINATORS, "ignore_case", "reason"]


# --- compiled form ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trace:
    """What one condition saw on one event: for reasons and ``bridge explain``."""

    kind: str
    held: bool
    text: str  # the test as written: "in ['USD', 'EUR']", "any", ...
    path: str | None = None  # the path that gave the value, or the paths tried
    value: Any = MISSING
    reason: str | None = None
    children: tuple[Trace, ...] = ()

    def failure(self) -> str:
        """Why this condition does not hold: its own reason, or path, value and test."""
        if self.reason:
            return self.reason
        if self.kind == "all":
            return next(c.failure() for c in self.children if not c.held)
        if self.kind == "any":
            return "none of: " + "; ".join(c.failure() for c in self.children)
        if self.kind == "not":
            return f"expected not ({self.children[0].summary()})"
        seen = f"{self.path or 'the value'} is {shown(self.path or '', self.value)}"
        if self.value is not MISSING and not is_empty(self.value):
            if self.kind in _ORDER and as_number(self.value) is None:
                return f"{seen}, not a number (expected {self.text})"
            if self.kind in VERSIONS and as_version(self.value) is None:
                return f"{seen}, not a version (expected {self.text})"
        return f"{seen}, expected {self.text}"

    def summary(self) -> str:
        """What held, for the message of a `not` that failed."""
        if self.kind in COMBINATORS:
            return f"{self.kind}: " + "; ".join(c.summary() for c in self.children)
        return f"{self.path} {self.text}, value {shown(self.path or '', self.value)}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"test": self.text, "held": self.held}
        if self.kind not in COMBINATORS:
            out["path"] = self.path
            out["value"] = None if self.value is MISSING else self.value
            out["absent"] = self.value is MISSING
        if self.reason:
            out["reason"] = self.reason
        if self.children:
            out["conditions"] = [c.to_json() for c in self.children]
        return out


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition: ``holds`` is the hot path, ``trace`` the instrumented one."""

    kind: str
    text: str
    holds: Holds
    paths: tuple[CompiledPath, ...] = ()
    children: tuple[Condition, ...] = ()
    reason: str | None = None
    # For a test on a value (every kind but exists and the combinators): holds(event) is
    # test(the first non-empty value of paths, or MISSING). The compiled mapping reads
    # the value inline and calls this alone.
    test: Holds | None = None

    def why_not(self, event: Any) -> str:
        """The reason a skipped event shows (called only once the condition failed)."""
        return self.reason or self.trace(event).failure()

    def trace(self, event: Any) -> Trace:
        if self.children:
            traces = tuple(child.trace(event) for child in self.children)
            held = self.holds(event)
            return Trace(self.kind, held, self.text, reason=self.reason, children=traces)
        if not self.paths:  # a `when` test of a value: ``event`` is that value
            seen = event if self.kind == "exists" else _present(event)
            return Trace(self.kind, self.holds(event), self.text, None, seen, self.reason)
        path, value = _seen(self.paths, event, self.kind == "exists")
        return Trace(self.kind, self.holds(event), self.text, path, value, self.reason)


def _seen(paths: tuple[CompiledPath, ...], event: Any, exists: bool) -> tuple[str, Any]:
    for path in paths:
        found = path.find(event)
        if found and (exists or not is_empty(found[0])):
            return path.text, found[0]
    return ", ".join(p.text for p in paths), MISSING


def compile_condition(spec: ConditionSpec) -> Condition:
    kind = spec.kind
    if kind in COMBINATORS:
        subs = spec.any or spec.all or ((spec.not_,) if spec.not_ else ())
        children = tuple(compile_condition(s) for s in subs)
        return Condition(
            kind, kind, _combine(kind, children), children=children, reason=spec.reason
        )
    paths = tuple(cached_path(p) for p in spec.paths)
    expected = spec.expected
    text = _describe(kind, expected) + (" (ignoring case)" if spec.ignore_case else "")
    if not paths:  # in a source's `when`: a test of the source's own value
        if kind == "exists":
            wanted = bool(expected)
            return Condition(kind, text, lambda v: (v is not MISSING) is wanted, reason=spec.reason)
        test = _test(kind, expected, spec.ignore_case)
        return Condition(kind, text, lambda v: test(_present(v)), reason=spec.reason, test=test)
    if kind == "exists":
        return Condition(kind, text, _exists(paths, bool(expected)), paths, reason=spec.reason)
    test, first = _test(kind, expected, spec.ignore_case), _first(paths)
    return Condition(
        kind, text, lambda event: test(first(event)), paths, reason=spec.reason, test=test
    )


def _present(value: Any) -> Any:
    """A value as a test sees it: an empty one is no value."""
    return MISSING if value is MISSING or is_empty(value) else value


def _describe(kind: str, expected: Any) -> str:
    if kind in ("exists", "not_empty"):
        return kind if expected else f"{kind}: false"
    if isinstance(expected, Decimal):
        return f"{kind} {expected}"
    if isinstance(expected, tuple):
        expected = list(expected)
    return f"{kind} {mask_value('', expected)}"


def _combine(kind: str, children: tuple[Condition, ...]) -> Holds:
    tests = tuple(c.holds for c in children)
    if kind == "not":
        (inner,) = tests
        return lambda event: not inner(event)
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:  # the usual size: two calls, no generator
        first, second = tests
        if kind == "all":
            return lambda event: first(event) and second(event)
        return lambda event: first(event) or second(event)
    if kind == "all":
        return lambda event: all(test(event) for test in tests)
    return lambda event: any(test(event) for test in tests)


def _exists(paths: tuple[CompiledPath, ...], wanted: bool) -> Holds:
    finds = tuple(p.find for p in paths)
    return lambda event: any(find(event) for find in finds) is wanted


def _first_match(path: CompiledPath) -> Callable[[Any], Any]:
    """A path's first match, or MISSING (a simple path has at most one)."""
    if path.fast:
        return path.first
    find = path.find

    def first(event: Any) -> Any:
        found = find(event)
        return found[0] if found else MISSING

    return first


def _first(paths: tuple[CompiledPath, ...]) -> Callable[[Any], Any]:
    """The first non-empty value the paths find, or MISSING."""
    readers = tuple(_first_match(p) for p in paths)
    if len(readers) == 1:
        (read,) = readers

        def only(event: Any) -> Any:
            value = read(event)
            return value if value is MISSING or not is_empty(value) else MISSING

        return only

    def first(event: Any) -> Any:
        for read in readers:
            value = read(event)
            if value is not MISSING and not is_empty(value):
                return value
        return MISSING

    return first


def _test(kind: str, expected: Any, ignore_case: bool = False) -> Holds:
    """The test on the value the paths found (MISSING when none)."""
    if kind in TEXT_TESTS:
        wanted = expected.casefold() if ignore_case else expected
        method = {"starts_with": str.startswith, "ends_with": str.endswith}.get(kind)

        def text_test(value: Any) -> bool:
            if type(value) is not str:
                return False
            text = value.casefold() if ignore_case else value
            return method(text, wanted) if method is not None else wanted in text

        return text_test
    if kind in VERSIONS:
        order: Callable[[Any, Any], bool] = _ORDER[kind.removeprefix("version_")]
        bound = as_version(expected)
        assert bound is not None  # checked at load
        return lambda value: (
            (v := as_version(value)) is not None and order(_pad(v, bound), _pad(bound, v))
        )
    if ignore_case and kind in ("equals", "not_equals", "in", "not_in"):
        choices = (expected,) if kind in ("equals", "not_equals") else expected
        folded = frozenset(c.casefold() for c in choices if type(c) is str)
        exact = _member_of(tuple(c for c in choices if type(c) is not str) or (MISSING,))

        def caseless(value: Any) -> bool:
            if type(value) is str:
                return value.casefold() in folded
            return value is not MISSING and exact(value)

        if kind in ("equals", "in"):
            return caseless
        return lambda value: not caseless(value)
    if kind == "matches" and ignore_case:
        expected = f"(?i){expected}"
    if kind == "not_empty":
        return (lambda value: value is not MISSING) if expected else (lambda v: v is MISSING)
    if kind in ("equals", "not_equals"):
        same = _equal_to(expected)
        if kind == "equals":
            return same
        return lambda value: not same(value)  # absent: not equal, so it holds
    if kind in ("in", "not_in"):
        member = _member_of(expected)
        if kind == "in":
            return member
        return lambda value: not member(value)
    if kind == "matches":
        search = compile_pattern(expected).search
        return lambda value: type(value) is str and search(value)
    order = _ORDER[kind]

    def compare(value: Any) -> bool:
        number = as_number(value)
        return number is not None and order(number, expected)

    return compare


def _pad(version: tuple[int, ...], other: tuple[int, ...]) -> tuple[int, ...]:
    """``version`` with zeros up to ``other``'s length: "2" compares as "2.0.0"."""
    return version + (0,) * (len(other) - len(version))


def _equal_to(expected: Any) -> Holds:
    if type(expected) is str:  # the common case: one type check and one comparison
        return lambda value: type(value) is str and value == expected
    return lambda value: value is not MISSING and json_equal(value, expected)


def _member_of(choices: tuple[Any, ...]) -> Holds:
    keyed = frozenset(k for k in map(json_key, choices) if k is not None)
    nested = tuple(c for c in choices if json_key(c) is None)
    if all(type(c) is str for c in choices):
        texts = frozenset(choices)
        return lambda value: type(value) is str and value in texts

    def member(value: Any) -> bool:
        if value is MISSING:
            return False
        key = json_key(value)
        if key is not None:
            return key in keyed
        return any(json_equal(value, c) for c in nested)

    return member

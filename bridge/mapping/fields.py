"""A Dub field's value, resolved from one event: compiled once, evaluated per event.

A field is a source, and sources nest. A source reads the first non-empty value of its
paths (or renders its template, adds up its ``sum``, takes its literal ``value``, takes
the first of its ``first`` alternatives that gives a value, adds its ``add`` terms and
subtracts its ``subtract`` terms, or builds an ``object`` of chosen keys), runs it
through its transforms, keeps it only when its ``when`` conditions hold, and falls back
to its ``default`` when nothing gave a value. A transform that finds nothing
(``query_param`` of a URL without that parameter), or a ``when`` test of the value that
fails, sends the source on to its next path or alternative, as an empty value would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from math import isfinite
from typing import Any

from ..core.masking import mask_value
from .conditions import Condition
from .paths import CompiledPath
from .sums import Sum, SumError
from .templates import Template
from .transforms import Transform, TransformError, is_empty
from .values import MISSING, as_number

# Exact or nothing, as `sum` adds: a result that would need rounding makes the event invalid.
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation, Overflow])


def shown(value: Any) -> Any:
    """A value as JSON can show it: an exact decimal total as its text."""
    return str(value) if isinstance(value, Decimal) else value


class FieldProblem(Exception):
    def __init__(self, field: str, message: str, path: str, value: Any):
        super().__init__(f"{field}: {message} (path {path}, value {mask_value(field, value)})")


@dataclass(frozen=True, slots=True)
class CompiledField:
    """A compiled source; a field is the top one (``required`` is only the field's)."""

    name: str  # the Dub field this source belongs to, for messages
    paths: tuple[CompiledPath, ...]
    literal: Any
    default: Any  # MISSING when the mapping gives none
    transforms: tuple[Transform, ...]
    required: bool
    computed: Template | Sum | None = None  # the field's template or sum, when it has one
    compute: Callable[[Any], Any] | None = None  # its render/total, bound once
    steps: tuple[str, ...] = ()  # the transforms' names, for `bridge explain`
    kind: str = "paths"  # paths, value, template, sum, first, add or object
    parts: tuple[CompiledField, ...] = ()  # first's alternatives, add's terms, object's values
    minus: tuple[CompiledField, ...] = ()  # subtract's terms
    keys: tuple[str, ...] = ()  # object's keys, one per part
    when: tuple[Condition, ...] = ()  # `when` tests of the event (with a path)
    checks: tuple[Condition, ...] = ()  # `when` tests of the source's own value (no path)
    label: str = field(init=False)  # what the source reads, as a message names it
    _terms: tuple[tuple[CompiledField, str, int], ...] = field(init=False, repr=False)
    # Decided once, not per event: which of the ways below this source reads by, each
    # path's reader with its text, and each transform with its name.
    _way: Callable[..., tuple[Any, str | None]] = field(init=False, repr=False, compare=False)
    _readers: tuple[tuple[Callable[[Any], Any], str], ...] = field(
        init=False, repr=False, compare=False
    )
    _named: tuple[tuple[str, Transform], ...] = field(init=False, repr=False, compare=False)
    # ``resolve`` without a trace: (value, where), FieldProblem when a transform refuses.
    read: Callable[..., tuple[Any, str | None]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Made once: messages and `add`'s result name it on every event.
        object.__setattr__(self, "label", self._label())
        terms = [(p, "add", 1) for p in self.parts] + [(p, "subtract", -1) for p in self.minus]
        object.__setattr__(self, "_terms", tuple(terms) if self.kind == "add" else ())
        object.__setattr__(self, "_readers", tuple((p.first, p.text) for p in self.paths))
        object.__setattr__(self, "_named", tuple(zip(self.steps, self.transforms, strict=True)))
        if self.paths:
            way = self._paths
        elif self.compute is not None:
            way = self._computed
        else:
            way = {
                "first": self._first, "add": self._add, "object": self._object
            }.get(self.kind, self._literal)  # fmt: skip
        object.__setattr__(self, "_way", way)
        # Untraced, a source without `when` tests of the event reads straight by its way.
        object.__setattr__(self, "read", way if not self.when else self._resolve)

    def resolve(
        self,
        event: Mapping[str, Any],
        fields: Mapping[str, Any],
        trace: dict[str, Any] | None = None,
    ) -> tuple[Any, str | None]:
        """(value, where it came from); raises FieldProblem when a transform refuses it.

        ``trace`` (for ``bridge explain``) receives each step as it is taken: the paths
        tried and what they held, where the value came from, each transform's result,
        each nested source's own trace under ``parts``."""
        if trace is None:
            return self.read(event, fields, None)
        try:
            value, where = self._resolve(event, fields, trace)
        except FieldProblem:
            trace["value"], trace["absent"] = None, True
            raise
        trace["value"] = None if value is MISSING else shown(value)
        trace["absent"] = value is MISSING
        return value, where

    def _resolve(
        self, event: Mapping[str, Any], fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        if self.when and not self._event_holds(event, trace):
            return self._default(trace)
        return self._way(event, fields, trace)

    def _literal(
        self, event: Mapping[str, Any], fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        if trace is not None:
            trace["from"] = "value"
        if self.checks and not self._value_holds(self.literal, trace):
            return MISSING, None
        return self.literal, None

    def _paths(
        self, event: Mapping[str, Any], fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        tried = None if trace is None else trace.setdefault("tried", [])
        for first, text in self._readers:
            value = first(event)
            if tried is not None:
                tried.append({"path": text, "value": None if value is MISSING else value})
            if value is MISSING or is_empty(value):
                continue
            if trace is not None:
                trace["from"] = text
            if self._named or trace is not None:
                value = self.transform(value, fields, text, trace)
                if value is MISSING:
                    continue
            if self.checks and not self._value_holds(value, trace):
                continue
            return value, text
        return self._default(trace)

    def _default(self, trace: dict[str, Any] | None) -> tuple[Any, str | None]:
        if trace is not None and self.default is not MISSING:
            trace["from"] = "default"
        return self.default, None

    def _event_holds(self, event: Any, trace: dict[str, Any] | None) -> bool:
        """Whether every `when` test of the event holds (each is traced when explained)."""
        if trace is None:  # a loop, not all(): no generator per event
            for condition in self.when:  # noqa: SIM110
                if not condition.holds(event):
                    return False
            return True
        traced = [condition.trace(event) for condition in self.when]
        trace.setdefault("when", []).extend(t.to_json() for t in traced)
        return all(t.held for t in traced)

    def _value_holds(self, value: Any, trace: dict[str, Any] | None) -> bool:
        """Whether every `when` test of the source's own value holds for ``value``."""
        if trace is None:  # a loop, not all(): no generator per event
            for check in self.checks:  # noqa: SIM110
                if not check.holds(value):
                    return False
            return True
        traced = [check.trace(value) for check in self.checks]
        trace.setdefault("when", []).extend(t.to_json() for t in traced)
        return all(t.held for t in traced)

    def _finish(
        self, value: Any, fields: Mapping[str, Any], where: str, trace: dict[str, Any] | None
    ) -> Any:
        """A value this source made, through its transforms and value tests; or MISSING."""
        if value is MISSING:
            return MISSING
        value = self.transform(value, fields, where, trace)
        if value is not MISSING and self.checks and not self._value_holds(value, trace):
            return MISSING
        return value

    def _computed(
        self, event: Any, fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        assert self.compute is not None
        if trace is not None:
            trace["from"] = self.label
            if isinstance(self.computed, Template):
                trace["placeholders"] = [
                    {"path": path, "value": None if v is MISSING else v}
                    for path, v in self.computed.steps(event)
                ]
        try:
            value = self.compute(event)
        except SumError as exc:
            if trace is not None:
                trace["error"] = f"{exc} (at {exc.where})"
            raise FieldProblem(self.name, str(exc), exc.where, exc.value) from exc
        value = self._finish(value, fields, self.label, trace)
        if value is not MISSING:
            return value, self.label
        return self._default(trace)

    def _part(
        self,
        part: CompiledField,
        label: str,
        event: Any,
        fields: Mapping[str, Any],
        trace: dict[str, Any] | None,
    ) -> tuple[Any, str | None]:
        """A nested source's value, its trace kept under this one's ``parts``."""
        if trace is None:
            return part.read(event, fields, None)  # resolve() adds only the tracing
        sub: dict[str, Any] = {"part": label}
        trace.setdefault("parts", []).append(sub)
        return part.resolve(event, fields, sub)

    def _first(
        self, event: Any, fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        for index, part in enumerate(self.parts, 1):
            value, where = self._part(part, f"first {index}", event, fields, trace)
            if value is MISSING or is_empty(value):
                continue
            at = where or part.label
            if trace is not None:
                trace["from"] = f"first {index} ({at})"
            value = self._finish(value, fields, at, trace)
            if value is not MISSING:
                return value, where
        return self._default(trace)

    def _add(
        self, event: Any, fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        total = Decimal(0)
        whole = True  # every term an integer: the total stays one (cents added to cents)
        counts = {"add": 0, "subtract": 0}
        for part, word, sign in self._terms:
            counts[word] += 1
            if trace is None:
                value, where = part.read(event, fields, None)
            else:
                value, where = self._part(part, f"{word} {counts[word]}", event, fields, trace)
            if value is MISSING:
                # A term without a value (and no default of its own) leaves no total: a
                # total without its discount would be a wrong amount, not a smaller one.
                return self._default(trace)
            kind = type(value)
            # The usual terms, JSON numbers, read as as_number would, without its checks.
            if kind is int:
                number: Decimal | None = Decimal(value)
            elif kind is float and isfinite(value):
                number = Decimal(repr(value))
                whole = False
            else:
                number = as_number(value)
                whole = False
            if number is None:
                at = where or part.label
                message = f"{word} term {counts[word]} is not a number"
                if trace is not None:
                    trace["error"] = f"{message} (at {at})"
                raise FieldProblem(self.name, message, at, value)
            try:
                total = _EXACT.add(total, number) if sign > 0 else _EXACT.subtract(total, number)
            except ArithmeticError:
                message = f"{word} term {counts[word]} cannot be added exactly (too many digits)"
                raise FieldProblem(self.name, message, where or part.label, value) from None
        if trace is not None:
            trace["from"] = self.label
        result: Any = int(total) if whole else total
        result = self._finish(result, fields, self.label, trace)
        if result is not MISSING:
            return result, self.label
        return self._default(trace)

    def _object(
        self, event: Any, fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        built: dict[str, Any] = {}
        for key, part in zip(self.keys, self.parts, strict=True):
            value, _ = self._part(part, f"key {key}", event, fields, trace)
            if value is not MISSING and not is_empty(value):
                built[key] = shown(value)
        if trace is not None and built:
            trace["from"] = self.label
        value = self._finish(built or MISSING, fields, self.label, trace)
        if value is not MISSING:
            return value, self.label
        return self._default(trace)

    def transform(
        self,
        value: Any,
        fields: Mapping[str, Any],
        where: str,
        trace: dict[str, Any] | None = None,
    ) -> Any:
        """``value`` through every transform; MISSING as soon as one finds nothing."""
        raw = value
        steps: list[dict[str, Any]] | None = None
        if trace is not None:
            trace["raw"] = shown(raw)
            steps = trace["steps"] = []
        for name, transform in self._named:
            try:
                value = transform(value, fields)
            except TransformError as exc:
                if steps is not None and trace is not None:
                    steps.append({"transform": name, "error": str(exc)})
                    trace["error"] = str(exc)
                raise FieldProblem(self.name, str(exc), where, raw) from exc
            if steps is not None:
                if value is MISSING:
                    steps.append({"transform": name, "value": None, "absent": True})
                else:
                    steps.append({"transform": name, "value": shown(value)})
            if value is MISSING:
                return MISSING
        return value

    def _label(self) -> str:
        if self.computed is not None:
            return self.computed.label
        if self.kind == "first":
            return "first of (" + "; ".join(p.label for p in self.parts) + ")"
        if self.kind == "add":
            text = "add (" + "; ".join(p.label for p in self.parts) + ")"
            if self.minus:
                text += " subtract (" + "; ".join(p.label for p in self.minus) + ")"
            return text
        if self.kind == "object":
            return "object {" + ", ".join(self.keys) + "}"
        if self.kind == "value":
            return "value"
        return ", ".join(p.text for p in self.paths)

    @property
    def tried(self) -> str:
        return self.label

    def all_paths(self) -> list[CompiledPath]:
        """Every path this source and its nested sources read."""
        found = list(self.paths)
        for part in (*self.parts, *self.minus):
            found += part.all_paths()
        return found

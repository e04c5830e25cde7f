"""A Dub field's value, resolved from one event: compiled once, evaluated per event.

A field reads the first non-empty value of its paths (or renders its template, or
adds up its ``sum``, or takes its literal ``value``), runs it through its transforms,
and falls back to its ``default`` when nothing gave a value. A transform that finds
nothing (``query_param`` of a URL without that parameter) sends the field on to its
next path, as an empty value would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..core.masking import mask_value
from .paths import CompiledPath
from .sums import Sum, SumError
from .templates import Template
from .transforms import Transform, TransformError, is_empty
from .values import MISSING


def shown(value: Any) -> Any:
    """A value as JSON can show it: an exact decimal total as its text."""
    return str(value) if isinstance(value, Decimal) else value


class FieldProblem(Exception):
    def __init__(self, field: str, message: str, path: str, value: Any):
        super().__init__(f"{field}: {message} (path {path}, value {mask_value(field, value)})")


@dataclass(frozen=True, slots=True)
class CompiledField:
    name: str
    paths: tuple[CompiledPath, ...]
    literal: Any
    default: Any  # MISSING when the mapping gives none
    transforms: tuple[Transform, ...]
    required: bool
    computed: Template | Sum | None = None  # the field's template or sum, when it has one
    compute: Callable[[Any], Any] | None = None  # its render/total, bound once
    steps: tuple[str, ...] = ()  # the transforms' names, for `bridge explain`

    def resolve(
        self,
        event: Mapping[str, Any],
        fields: Mapping[str, Any],
        trace: dict[str, Any] | None = None,
    ) -> tuple[Any, str | None]:
        """(value, where it came from); raises FieldProblem when a transform refuses it.

        ``trace`` (for ``bridge explain``) receives each step as it is taken: the paths
        tried and what they held, where the value came from, each transform's result."""
        try:
            value, where = self._resolve(event, fields, trace)
        except FieldProblem:
            if trace is not None:
                trace["value"], trace["absent"] = None, True
            raise
        if trace is not None:
            trace["value"] = None if value is MISSING else shown(value)
            trace["absent"] = value is MISSING
        return value, where

    def _resolve(
        self, event: Mapping[str, Any], fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        if self.compute is not None:
            return self._computed(event, fields, trace)
        if not self.paths:
            if trace is not None:
                trace["from"] = "value"
            return self.literal, None
        tried = None if trace is None else trace.setdefault("tried", [])
        for path in self.paths:
            value = path.first(event)
            if tried is not None:
                tried.append({"path": path.text, "value": None if value is MISSING else value})
            if value is MISSING or is_empty(value):
                continue
            if trace is not None:
                trace["from"] = path.text
            if self.transforms or trace is not None:
                value = self.transform(value, fields, path.text, trace)
                if value is MISSING:
                    continue
            return value, path.text
        return self._default(trace)

    def _default(self, trace: dict[str, Any] | None) -> tuple[Any, str | None]:
        if trace is not None and self.default is not MISSING:
            trace["from"] = "default"
        return self.default, None

    def _computed(
        self, event: Any, fields: Mapping[str, Any], trace: dict[str, Any] | None
    ) -> tuple[Any, str | None]:
        assert self.compute is not None
        if trace is not None:
            trace["from"] = self.source
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
        if value is not MISSING:
            value = self.transform(value, fields, self.source, trace)
            if value is not MISSING:
                return value, self.source
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
        for name, transform in zip(self.steps, self.transforms, strict=True):
            try:
                value = transform(value, fields)
            except TransformError as exc:
                if steps is not None and trace is not None:
                    steps.append({"transform": name, "error": str(exc)})
                    trace["error"] = str(exc)
                raise FieldProblem(self.name, str(exc), where, raw) from exc
            if steps is not None:
                shows = None if value is MISSING else shown(value)
                steps.append({"transform": name, "value": shows})
            if value is MISSING:
                return MISSING
        return value

    @property
    def source(self) -> str:
        """What the field reads, as a message names it."""
        if self.computed is not None:
            return self.computed.label
        return ", ".join(p.text for p in self.paths)

    @property
    def tried(self) -> str:
        return self.source

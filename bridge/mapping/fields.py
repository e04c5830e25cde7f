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
from typing import Any

from ..masking import mask_value
from .paths import CompiledPath
from .sums import Sum, SumError
from .templates import Template
from .transforms import Transform, TransformError, is_empty
from .values import MISSING


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
        self, event: Mapping[str, Any], fields: Mapping[str, Any]
    ) -> tuple[Any, str | None]:
        """(value, where it came from); raises FieldProblem when a transform refuses it."""
        if self.compute is not None:
            return self._computed(event, fields)
        if not self.paths:
            return self.literal, None
        for path in self.paths:
            value = path.first(event)
            if value is MISSING or is_empty(value):
                continue
            if self.transforms:
                value = self.transform(value, fields, path.text)
                if value is MISSING:
                    continue
            return value, path.text
        return self.default, None

    def transformer(self) -> Callable[[Any, Mapping[str, Any], str], Any]:
        """``transform``, without its loop when there is one step (the compiled path's)."""
        if len(self.transforms) != 1:
            return self.transform
        (step,) = self.transforms
        name = self.name

        def transform(value: Any, fields: Mapping[str, Any], where: str) -> Any:
            try:
                return step(value, fields)
            except TransformError as exc:
                raise FieldProblem(name, str(exc), where, value) from exc

        return transform

    def _computed(self, event: Any, fields: Mapping[str, Any]) -> tuple[Any, str | None]:
        assert self.compute is not None
        try:
            value = self.compute(event)
        except SumError as exc:
            raise FieldProblem(self.name, str(exc), exc.where, exc.value) from exc
        if value is not MISSING:
            value = self.transform(value, fields, self.source)
            if value is not MISSING:
                return value, self.source
        return self.default, None

    def transform(self, value: Any, fields: Mapping[str, Any], where: str) -> Any:
        """``value`` through every transform; MISSING as soon as one finds nothing."""
        raw = value
        for transform in self.transforms:
            try:
                value = transform(value, fields)
            except TransformError as exc:
                raise FieldProblem(self.name, str(exc), where, raw) from exc
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

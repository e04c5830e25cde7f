"""The pure part: one Segment event in, the Dub requests it should cause out.

Nothing here sends or reads anything: the webhook, ``bridge replay --dry-run`` and
redrive all call ``Engine.plan`` and get the same answer. Mappings arrive compiled
(paths, transforms and field order fixed at load), so per event the work is a dict
look-up by event name, a pydantic check of the event's shape, and path walks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from ..dub.endpoints import Endpoint
from ..items import Unreadable
from ..masking import mask_value
from ..outcomes import Outcome
from ..results import Result
from .events import SegmentEvent, describe_validation_error
from .paths import CompiledPath
from .transforms import Transform, TransformError, is_empty


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class CompiledField:
    name: str
    paths: tuple[CompiledPath, ...]
    literal: Any
    default: Any  # MISSING when the mapping gives none
    transforms: tuple[Transform, ...]
    required: bool

    def resolve(
        self, event: Mapping[str, Any], fields: Mapping[str, Any]
    ) -> tuple[Any, str | None]:
        """(value, path it came from); raises FieldProblem when a transform refuses it."""
        if not self.paths:
            return self.literal, None
        for path in self.paths:
            found = path.find(event)
            if not found:
                continue
            value = found[0] if len(found) == 1 else found
            if is_empty(value):
                continue
            for transform in self.transforms:
                try:
                    value = transform(value, fields)
                except TransformError as exc:
                    raise FieldProblem(self.name, str(exc), path.text, found[0]) from exc
            return value, path.text
        return self.default, None

    @property
    def tried(self) -> str:
        return ", ".join(p.text for p in self.paths)


class FieldProblem(Exception):
    def __init__(self, field: str, message: str, path: str, value: Any):
        super().__init__(f"{field}: {message} (path {path}, value {mask_value(field, value)})")


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    paths: tuple[CompiledPath, ...]
    test: str  # exists | equals | not_empty
    expected: Any
    reason: str

    def holds(self, event: Mapping[str, Any]) -> bool:
        if self.test == "exists":
            present = any(path.find(event) for path in self.paths)
            return present is bool(self.expected)
        value = MISSING
        for path in self.paths:
            found = path.find(event)
            if found and not is_empty(found[0]):
                value = found[0]
                break
        if self.test == "not_empty":
            return (value is not MISSING) is bool(self.expected)
        return value is not MISSING and value == self.expected


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    name: str
    endpoint: Endpoint
    event_names: frozenset[str]
    conditions: tuple[CompiledCondition, ...]
    fields: tuple[CompiledField, ...]  # currency before amount: minor_units reads it
    source: str

    @property
    def action(self) -> str:
        return self.endpoint.action

    @property
    def required(self) -> frozenset[str]:
        return self.endpoint.needed | {f.name for f in self.fields if f.required}

    def apply(self, event: Mapping[str, Any], message_id: str | None, event_name: str) -> Result:
        result = Result(
            message_id=message_id, event=event_name, mapping=self.name, action=self.action
        )
        for condition in self.conditions:
            if not condition.holds(event):
                return result.finish(Outcome.SKIPPED, reason=condition.reason)
        body: dict[str, Any] = {}
        sources: dict[str, str | None] = {}
        errors: list[str] = []
        warnings: list[str] = []
        required = self.required
        for field in self.fields:
            is_required = field.name in required
            try:
                value, sources[field.name] = field.resolve(event, body)
            except FieldProblem as exc:
                if is_required:
                    errors.append(str(exc))
                else:
                    warnings.append(f"dropped {exc}")
                continue
            if value is MISSING:
                if is_required:
                    errors.append(f"{field.name}: no value (paths tried: {field.tried})")
                continue
            body[field.name] = value
        clean, rule_errors, rule_warnings = self.endpoint.clean(body, required, sources)
        errors += rule_errors
        result = replace(result, warnings=(*warnings, *rule_warnings))
        if errors:
            return result.finish(Outcome.INVALID, errors=tuple(errors))
        if self.action == "sale" and clean.get("amount") == 0:
            return result.finish(
                Outcome.SKIPPED, reason="amount is 0: Dub records nothing for a zero sale"
            )
        try:
            self.endpoint.model.model_validate(clean)
        except ValidationError as exc:  # clean() missed a rule: say so, send nothing
            return result.finish(Outcome.INVALID, errors=tuple(describe_validation_error(exc)))
        return replace(result, request_path=self.endpoint.path, body=clean)


class Engine:
    """The compiled mappings, indexed by event name."""

    def __init__(self, mappings: Iterable[CompiledMapping], version: str = ""):
        self.mappings = tuple(mappings)
        self.version = version
        index: dict[str, list[CompiledMapping]] = {}
        for mapping in self.mappings:
            for name in mapping.event_names:
                index.setdefault(name, []).append(mapping)
        # Leads before sales: a sale sent after its lead finds the customer in Dub.
        self._by_event = {
            name: tuple(sorted(found, key=lambda m: (m.action != "lead", m.name)))
            for name, found in index.items()
        }

    def __len__(self) -> int:
        return len(self.mappings)

    def matches(self, event_name: Any) -> bool:
        return isinstance(event_name, str) and event_name in self._by_event

    def plan(self, event: Any) -> list[Result]:
        """Every Dub request this event should cause, or one result saying why none."""
        if type(event) is not dict:
            if isinstance(event, Unreadable):
                return [Result().finish(Outcome.INVALID, errors=(str(event),))]
            kind = type(event).__name__
            return [
                Result().finish(Outcome.INVALID, errors=(f"an event is a JSON object, got {kind}",))
            ]
        name = event.get("event")
        message_id = event.get("messageId")
        message_id = message_id if isinstance(message_id, str) else None
        shown = name if isinstance(name, str) else None
        candidates = self._by_event.get(name) if isinstance(name, str) else None
        if candidates is None or event.get("type") != "track":
            # The common case on a busy source: dismissed before any other work.
            if event.get("type") != "track":
                reason = f"type {event.get('type')!r} is not 'track'"
            else:
                reason = f"no mapping for event {shown!r}" if shown else "no event name"
            return [
                Result(message_id=message_id, event=shown).finish(Outcome.SKIPPED, reason=reason)
            ]
        try:
            SegmentEvent.model_validate(event)
        except ValidationError as exc:
            errors = tuple(describe_validation_error(exc))
            return [
                Result(message_id=message_id, event=shown, mapping=m.name, action=m.action).finish(
                    Outcome.INVALID, errors=errors
                )
                for m in candidates
            ]
        return [mapping.apply(event, message_id, str(name)) for mapping in candidates]

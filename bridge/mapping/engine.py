"""The pure part: one Segment event in, the Dub requests it should cause out.

Nothing here sends or reads anything: the webhook, ``bridge replay --dry-run`` and
redrive all call ``Engine.plan`` and get the same answer. Mappings arrive compiled
(paths, conditions, transforms and field order fixed at load), so per event the work
is a dict look-up by event name, a pydantic check of the event's shape, and path walks.
Whatever an event holds, each mapping gives a result: an error while evaluating one
mapping makes that (event, mapping) invalid and costs nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from ..dub.endpoints import Endpoint
from ..items import Unreadable
from ..outcomes import Outcome
from ..results import Result
from .conditions import Condition
from .events import SegmentEvent, describe_validation_error
from .fields import CompiledField, FieldProblem
from .paths import PathEvalError
from .values import MISSING

__all__ = [
    "MISSING",
    "NO_MAPPING",
    "CompiledField",
    "CompiledMapping",
    "Engine",
    "FieldProblem",
]

# Event names are the sender's text: only this many distinct ones have their regex
# matches remembered, and only names up to this length (Segment's are far shorter).
NAME_CACHE_SIZE = 4096
NAME_CACHE_MAX_LENGTH = 200
NO_MAPPING = "no mapping for event"  # how a skipped event no mapping takes begins its reason


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    name: str
    endpoint: Endpoint
    event_names: frozenset[str]
    conditions: tuple[Condition, ...]
    fields: tuple[CompiledField, ...]  # currency before amount: minor_units reads it
    source: str
    event_pattern: re.Pattern[str] | None = None  # trigger.event_matches, instead of names

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
        try:
            return self._apply(event, result)
        except PathEvalError as exc:
            return result.finish(Outcome.INVALID, errors=(str(exc),))
        except Exception as exc:  # a bug must cost this (event, mapping), not the batch
            message = f"mapping {self.name!r} failed on this event: {type(exc).__name__}: {exc}"
            return result.finish(Outcome.INVALID, errors=(message[:300],))

    def _apply(self, event: Mapping[str, Any], result: Result) -> Result:
        for condition in self.conditions:
            if not condition.holds(event):
                return result.finish(Outcome.SKIPPED, reason=condition.why_not(event))
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


def _ordered(found: Iterable[CompiledMapping]) -> tuple[CompiledMapping, ...]:
    # Leads before sales: a sale sent after its lead finds the customer in Dub.
    return tuple(sorted(found, key=lambda m: (m.action != "lead", m.name)))


class Engine:
    """The compiled mappings, indexed by event name."""

    def __init__(self, mappings: Iterable[CompiledMapping], version: str = ""):
        self.mappings = tuple(mappings)
        self.version = version
        index: dict[str, list[CompiledMapping]] = {}
        for mapping in self.mappings:
            for name in mapping.event_names:
                index.setdefault(name, []).append(mapping)
        self._by_event = {name: _ordered(found) for name, found in index.items()}
        self._patterned = tuple(m for m in self.mappings if m.event_pattern is not None)
        self.candidates: Callable[[str], tuple[CompiledMapping, ...] | None] = (
            self._by_event.get if not self._patterned else self._cached_lookup()
        )

    def _cached_lookup(self) -> Callable[[str], tuple[CompiledMapping, ...] | None]:
        """Exact names, then the regex triggers, worked out once per distinct event name."""

        def lookup(name: str) -> tuple[CompiledMapping, ...] | None:
            found = [
                m
                for m in self._patterned
                if m.event_pattern is not None and m.event_pattern.search(name)
            ]
            exact = self._by_event.get(name, ())
            return _ordered((*exact, *found)) if found else exact or None

        cached = lru_cache(maxsize=NAME_CACHE_SIZE)(lookup)

        def candidates(name: str) -> tuple[CompiledMapping, ...] | None:
            return cached(name) if len(name) <= NAME_CACHE_MAX_LENGTH else lookup(name)

        return candidates

    def __len__(self) -> int:
        return len(self.mappings)

    def matches(self, event_name: Any) -> bool:
        return isinstance(event_name, str) and self.candidates(event_name) is not None

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
        candidates = self.candidates(name) if isinstance(name, str) else None
        if candidates is None or event.get("type") != "track":
            # The common case on a busy source: dismissed before any other work.
            if event.get("type") != "track":
                reason = f"type {event.get('type')!r} is not 'track'"
            else:
                reason = f"{NO_MAPPING} {shown!r}" if shown else "no event name"
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

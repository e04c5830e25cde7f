"""The pure part: one Segment event in, the Dub requests it should cause out.

Nothing here sends or reads anything: the webhook, ``bridge replay --dry-run`` and
redrive all call ``Engine.plan`` and get the same answer. Mappings arrive compiled
(paths, conditions, transforms and field order fixed at load), so per event the work
is a dict look-up by event name, a pydantic check of the event's shape, and path walks.
Whatever an event holds, each mapping gives a result: an error while evaluating one
mapping makes that (event, mapping) invalid and costs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from ..dub.endpoints import Endpoint
from ..items import Unreadable
from ..outcomes import Outcome
from ..results import Result
from .codegen import build_apply
from .conditions import Condition
from .events import SegmentEvent, describe_validation_error, well_formed
from .fields import CompiledField, FieldProblem
from .values import MISSING, Regex

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
NO_MAPPING = "no mapping for event"
SKIPPED = Outcome.SKIPPED
_new = tuple.__new__  # how a skipped event no mapping takes begins its reason


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    name: str
    endpoint: Endpoint
    event_names: frozenset[str]
    conditions: tuple[Condition, ...]
    fields: tuple[CompiledField, ...]  # currency before amount: minor_units reads it
    source: str
    event_pattern: Regex | None = None  # trigger.event_matches, instead of names
    required: frozenset[str] = field(init=False)
    # The mapping compiled into one function of (event, messageId, event name), and its text.
    apply: Callable[[Mapping[str, Any], str | None, str], Result] = field(
        init=False, repr=False, compare=False
    )
    code: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        required = self.endpoint.needed | {f.name for f in self.fields if f.required}
        object.__setattr__(self, "required", required)
        apply, text = build_apply(self)
        object.__setattr__(self, "apply", apply)
        object.__setattr__(self, "code", text)

    @property
    def action(self) -> str:
        return self.endpoint.action


# Dismissed events repeat a handful of types and names: their reasons are made once each.
@lru_cache(maxsize=64)
def _not_track(kind: str) -> str:
    return f"type {kind!r} is not 'track'"


@lru_cache(maxsize=NAME_CACHE_SIZE)
def _no_mapping(name: str) -> str:
    return f"{NO_MAPPING} {name!r}"


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
            what = type(event).__name__
            return [
                Result().finish(Outcome.INVALID, errors=(f"an event is a JSON object, got {what}",))
            ]
        kind = event.get("type")
        name: Any = event.get("event")
        message_id = event.get("messageId")
        if type(message_id) is not str:
            message_id = message_id if isinstance(message_id, str) else None
        candidates = self.candidates(name) if kind == "track" and isinstance(name, str) else None
        if candidates is None:
            # The common case on a busy source: dismissed before any other work, its result
            # built as a bare tuple in Result's field order (half the cost of planned()).
            if type(name) is not str and not isinstance(name, str):
                name = None
            if kind != "track":
                reason = _not_track(kind) if type(kind) is str else f"type {kind!r} is not 'track'"
            elif name:
                reason = _no_mapping(name) if len(name) <= NAME_CACHE_MAX_LENGTH else ""
                reason = reason or f"{NO_MAPPING} {name!r}"
            else:
                reason = "no event name"
            return [_new(Result, (message_id, name, None, None, SKIPPED, None, None, None, (), (),
                                  reason, None, None, 0, None))]  # fmt: skip
        if not well_formed(event, message_id):
            try:
                SegmentEvent.model_validate(event)
            except ValidationError as exc:
                errors = tuple(describe_validation_error(exc))
                return [
                    Result(message_id, name, m.name, m.action, Outcome.INVALID, errors=errors)
                    for m in candidates
                ]
        if len(candidates) == 1:
            return [candidates[0].apply(event, message_id, name)]
        return [mapping.apply(event, message_id, name) for mapping in candidates]

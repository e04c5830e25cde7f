"""The pure part: one Segment event in, the Dub requests it should cause out.

Nothing here sends or reads anything: the webhook, ``bridge replay --dry-run`` and
redrive all call ``Engine.plan`` and get the same answer. Mappings arrive compiled
(paths, conditions, transforms and field order fixed at load), so per event the work
is a dict look-up by event name, a pydantic check of the event's shape, and path walks.
Whatever an event holds, each mapping gives a result: an error while evaluating one
mapping makes that (event, mapping) invalid and costs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from pydantic import ValidationError

from ..core.items import Unreadable
from ..core.outcomes import Outcome
from ..core.results import Result
from ..dub.endpoints import Endpoint
from .conditions import Condition
from .events import SegmentEvent, SegmentMessage, describe_validation_error, well_formed
from .fields import CompiledField, FieldProblem
from .interpret import Steps, interpret
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
# Dub's own Segment source sends Dub's lead.created and sale.created back as track events:
# a bridge listening to it would track every conversion again.
DUB_SOURCE = "sent by Dub's own Segment source"
SKIPPED = Outcome.SKIPPED


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    name: str
    endpoint: Endpoint
    event_names: frozenset[str]
    conditions: tuple[Condition, ...]
    fields: tuple[CompiledField, ...]  # currency before amount: minor_units reads it
    file: str  # the mapping file it came from
    event_pattern: Regex | None = None  # trigger.event_matches, instead of names
    require: tuple[Condition, ...] = ()  # trigger.require: a failure makes the event invalid
    group: str | None = None  # the first of a group whose conditions hold takes the event
    event_type: str = "track"  # identify and delete triggers take every event of their type
    required: frozenset[str] = field(init=False)
    # Each field with whether it is required, decided once instead of per event.
    planned: tuple[tuple[CompiledField, bool], ...] = field(init=False, repr=False)
    # The untraced result of an event: the interpreter, or the fast path compiler.py derives
    # from this mapping's own rule objects (see ``compiler.derive_fast_path``).
    untraced: Callable[[dict[str, Any], str | None, str | None], Result] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        required = self.endpoint.needed | {f.name for f in self.fields if f.required}
        object.__setattr__(self, "required", required)
        planned = tuple((f, f.name in required) for f in self.fields)
        object.__setattr__(self, "planned", planned)
        object.__setattr__(self, "untraced", partial(interpret, self))

    @property
    def action(self) -> str:
        return self.endpoint.action


@dataclass(frozen=True, slots=True)
class Exclude:
    """One condition of a file's top-level ``exclude``: it holds, every mapping skips."""

    file: str
    condition: Condition


# Dismissed events repeat a handful of types and names: their reasons are made once each.
@lru_cache(maxsize=64)
def _not_track(kind: str) -> str:
    return f"type {kind!r} is not 'track'"


@lru_cache(maxsize=NAME_CACHE_SIZE)
def _no_mapping(name: str) -> str:
    return f"{NO_MAPPING} {name!r}"


def _from_dub(event: dict[str, Any]) -> bool:
    """Whether Dub's own Segment source sent it (``context.library.name`` is ``dub``)."""
    context = event.get("context")
    library = context.get("library") if type(context) is dict else None
    return type(library) is dict and library.get("name") == "dub"


def _ordered(found: Iterable[CompiledMapping]) -> tuple[CompiledMapping, ...]:
    # Leads before sales: a sale sent after its lead finds the customer in Dub.
    return tuple(sorted(found, key=lambda m: (m.action != "lead", m.name)))


class Engine:
    """The compiled mappings, indexed by event name."""

    def __init__(
        self,
        mappings: Iterable[CompiledMapping],
        version: str = "",
        excludes: Iterable[Exclude] = (),
    ):
        self.mappings = tuple(mappings)
        self.version = version
        self.excludes = tuple(excludes)
        self._load_order = {m.name: i for i, m in enumerate(self.mappings)}
        self._grouped = any(m.group for m in self.mappings)
        index: dict[str, list[CompiledMapping]] = {}
        typed: dict[str, list[CompiledMapping]] = {}
        for mapping in self.mappings:
            if mapping.event_type != "track":
                typed.setdefault(mapping.event_type, []).append(mapping)
            for name in mapping.event_names:
                index.setdefault(name, []).append(mapping)
        self._by_event = {name: _ordered(found) for name, found in index.items()}
        self._by_type = {kind: _ordered(found) for kind, found in typed.items()}
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

    def plan(
        self,
        event: Any,
        trace: dict[str, Steps] | None = None,
        *,
        accept_dub_source: bool = False,
    ) -> list[Result]:
        """Every Dub request this event should cause, or one result saying why none.

        ``trace`` (``bridge explain``) receives each candidate mapping's steps by name.
        ``accept_dub_source``: plan events of Dub's own Segment source too
        (BRIDGE_ACCEPT_DUB_SOURCE)."""
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
        if kind == "track":
            candidates = self.candidates(name) if isinstance(name, str) else None
        else:
            candidates = self._by_type.get(kind) if type(kind) is str and self._by_type else None
            name = None
        if candidates is None:
            # The common case on a busy source: dismissed before any other work.
            if type(name) is not str and not isinstance(name, str):
                name = None
            if kind != "track":
                reason = _not_track(kind) if type(kind) is str else f"type {kind!r} is not 'track'"
            elif name:
                reason = _no_mapping(name) if len(name) <= NAME_CACHE_MAX_LENGTH else ""
                reason = reason or f"{NO_MAPPING} {name!r}"
            else:
                reason = "no event name"
            return [Result(message_id, name, outcome=SKIPPED, reason=reason)]
        if not well_formed(event, message_id, kind):
            try:
                (SegmentEvent if kind == "track" else SegmentMessage).model_validate(event)
            except ValidationError as exc:
                errors = tuple(describe_validation_error(exc))
                return [
                    Result(message_id, name, m.name, m.action, Outcome.INVALID, errors=errors)
                    for m in candidates
                ]
        if not accept_dub_source and _from_dub(event):
            return [
                Result(message_id, name, m.name, m.action, SKIPPED, reason=DUB_SOURCE)
                for m in candidates
            ]
        if self.excludes:
            excluded = self._excluded(event, trace)
            if excluded is not None:
                return [
                    Result(message_id, name, m.name, m.action, SKIPPED, reason=excluded)
                    for m in candidates
                ]
        if self._grouped:
            return self._plan_grouped(candidates, event, message_id, name, trace)
        if trace is not None:
            return [
                interpret(m, event, message_id, name, trace.setdefault(m.name, {}))
                for m in candidates
            ]
        return [mapping.untraced(event, message_id, name) for mapping in candidates]

    def _excluded(self, event: Any, trace: dict[str, Steps] | None) -> str | None:
        """Why the set's `exclude` skips this event, or None."""
        for exclude in self.excludes:
            if exclude.condition.holds(event):
                why = exclude.condition.reason or exclude.condition.trace(event).summary()
                reason = f"excluded by {exclude.file}: {why}"
                if trace is not None:
                    trace[""] = {"excluded": reason}
                return reason
        return None

    def _plan_grouped(
        self,
        candidates: tuple[CompiledMapping, ...],
        event: Any,
        message_id: str | None,
        name: str,
        trace: dict[str, Steps] | None,
    ) -> list[Result]:
        """Each group's first mapping (in load order) whose conditions hold takes the event."""
        taken: dict[str, str] = {}
        results: dict[str, Result] = {}
        for mapping in sorted(candidates, key=lambda m: self._load_order.get(m.name, 0)):
            group = mapping.group
            if group is not None and group in taken:
                reason = f"group {group}: taken by {taken[group]}"
                results[mapping.name] = Result(
                    message_id, name, mapping.name, mapping.action, SKIPPED, reason=reason
                )
                continue
            steps = None if trace is None else trace.setdefault(mapping.name, {})
            results[mapping.name] = (
                mapping.untraced(event, message_id, name)
                if steps is None
                else interpret(mapping, event, message_id, name, steps)
            )
            if group is not None and all(c.holds(event) for c in mapping.conditions):
                taken[group] = mapping.name
        return [results[m.name] for m in candidates]

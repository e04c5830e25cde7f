"""The mapping file format, as pydantic models.

A file holds ``version: 1``, a list of ``mappings`` and optionally golden ``tests``.
Every construct added since the first release (more condition tests and combinators,
``event_matches``, ``template``, ``sum``, more transforms) is a key that version 1
used to refuse, so old files keep their meaning and no version bump is needed.
Shorthands are expanded before validation (a field given as one path or a list of
paths; a transform given as a name), so every error points at one key of one shape.
Path syntax, regular expressions, templates and transform names are checked here;
checks across keys (Dub field names, required fields, duplicates) live in the loader,
which sees every file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..dub.endpoints import ENDPOINTS
from .conditions import ConditionSpec
from .paths import check_path
from .sums import SumSpec
from .templates import parse as parse_template
from .transforms import NAMED
from .values import Pattern, check_json

_STRICT = ConfigDict(extra="forbid", frozen=True)
SOURCES = ("paths", "value", "template", "sum")


def _one_or_many(data: Any) -> Any:
    """`path: x` and `paths: [x, y]` are two spellings of the same list."""
    if isinstance(data, dict) and "path" in data and "paths" in data:
        raise ValueError("give `path` or `paths`, not both")
    return data


class TransformStep(BaseModel):
    """One transform: a named one, a value map with an optional fallback, or a query param."""

    model_config = _STRICT
    name: str | None = None
    map: dict[Any, Any] | None = None
    fallback: Any = None
    query_param: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and ("map" in data) == ("query_param" in data):
            raise ValueError(
                f"a transform is a name ({', '.join(sorted(NAMED))}), "
                "{map: ..., fallback: ...} or {query_param: NAME}"
            )
        if isinstance(data, dict) and "query_param" in data and len(data) > 1:
            raise ValueError("{query_param: NAME} takes no other key")
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is not None and name not in NAMED:
            raise ValueError(f"unknown transform {name!r} (known: {', '.join(sorted(NAMED))})")
        return name

    @property
    def has_fallback(self) -> bool:
        return "fallback" in self.model_fields_set


class FieldSpec(BaseModel):
    """Where a Dub field's value comes from, and what happens to it on the way."""

    model_config = _STRICT
    paths: tuple[str, ...] = ()
    value: Any = None
    template: str | None = None
    sum: SumSpec | None = None
    default: Any = None
    transform: tuple[TransformStep, ...] = ()
    required: bool = False

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"paths": [data]}
        if isinstance(data, list):
            return {"paths": data}
        if isinstance(data, dict):
            _one_or_many(data)
            data = dict(data)
            if "path" in data:
                data["paths"] = [data.pop("path")]
            if isinstance(data.get("transform"), (str, dict)):
                data["transform"] = [data["transform"]]
            return data
        raise ValueError(
            "a field is a JSONPath, a list of JSONPaths, or an object with path, paths, "
            "value, template or sum"
        )

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for text in paths:
            check_path(text)
        return paths

    @field_validator("template")
    @classmethod
    def _template(cls, text: str | None) -> str | None:
        if text is not None:
            parse_template(text)
        return text

    @field_validator("value", "default")
    @classmethod
    def _literal(cls, value: Any) -> Any:
        return check_json(value, allow_null=True)

    @model_validator(mode="after")
    def _source(self) -> FieldSpec:
        given = [key for key in SOURCES if key in self.model_fields_set]
        if len(given) != 1 or (given == ["paths"] and not self.paths):
            raise ValueError(
                "give exactly one of `path`, `paths` or `value` (or `template`, or `sum`)"
            )
        if self.has_value and (self.transform or "default" in self.model_fields_set):
            raise ValueError("a literal `value` takes no `transform` or `default`")
        return self

    @property
    def has_value(self) -> bool:
        return "value" in self.model_fields_set

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set


class Trigger(BaseModel):
    """Which events: ``track`` events by exact names (``event``) or a regular expression
    (``event_matches``); or every ``identify`` call, or every ``delete`` message (no name)."""

    model_config = _STRICT
    event: tuple[str, ...] | None = Field(None, min_length=1)
    event_matches: Pattern | None = None
    type: Literal["track", "identify", "delete"] = "track"
    conditions: tuple[ConditionSpec, ...] = ()
    # Checked once `conditions` hold: one that fails makes the event invalid (a dead letter
    # a person sees) instead of skipped, for guards that protect money.
    require: tuple[ConditionSpec, ...] = ()

    @field_validator("event", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list) and any(not isinstance(n, str) or not n for n in names):
            raise ValueError("event names are non-empty text, matched exactly")
        return names

    @model_validator(mode="after")
    def _one_way(self) -> Trigger:
        if self.type != "track":
            if self.event is not None or self.event_matches is not None:
                raise ValueError(f"a `type: {self.type}` trigger takes no event name")
        elif (self.event is None) == (self.event_matches is None):
            raise ValueError("give exactly one of `event` (names) or `event_matches` (a regex)")
        for condition in (*self.conditions, *self.require):
            if condition.without_path():
                raise ValueError(
                    f"a trigger's `{condition.without_path()[0]}` test needs a `path` (a test"
                    " without one belongs in a source's `when`, where it tests the value)"
                )
        return self


class Mapping(BaseModel):
    """One rule: which events, which Dub call, which fields."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    trigger: Trigger
    action: str
    fields: dict[str, FieldSpec]
    # Among the mappings of one group, the first (in load order) whose trigger and
    # conditions hold takes the event; the others skip it.
    group: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)

    @field_validator("action")
    @classmethod
    def _action(cls, action: str) -> str:
        if action not in ENDPOINTS:
            raise ValueError(f"the Dub action: one of {', '.join(ENDPOINTS)}")
        return action

    @model_validator(mode="after")
    def _deletes(self) -> Mapping:
        # A delete message asks for erasure: only customer_delete (which erases) may take it.
        if (self.trigger.type == "delete") != (self.action == "customer_delete"):
            raise ValueError(
                "`action: customer_delete` goes with `trigger: {type: delete}`, and only it"
            )
        return self


class MappingFile(BaseModel):
    """The top of a file; each mapping (and test) is validated on its own so one bad one
    hides no other."""

    model_config = _STRICT
    version: Literal[1] = 1
    mappings: list[Any] = Field(min_length=1)
    tests: list[Any] = []
    # Events for which one of these holds are skipped by every mapping of the set.
    exclude: tuple[ConditionSpec, ...] = ()

    @field_validator("exclude")
    @classmethod
    def _paths(cls, exclude: tuple[ConditionSpec, ...]) -> tuple[ConditionSpec, ...]:
        for condition in exclude:
            if condition.without_path():
                raise ValueError(f"an `exclude` test ({condition.without_path()[0]}) needs a path")
        return exclude

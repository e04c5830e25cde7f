"""The mapping file format, as pydantic models.

A file holds ``version: 1``, a list of ``mappings`` and optionally golden ``tests``.
Every construct added since the first release (more condition tests and combinators,
``event_matches``, ``template``, ``sum``, nested sources with ``first``, ``add``,
``object`` and ``when``, more transforms) is a key that version 1 used to refuse, so
old files keep their meaning and no version bump is needed.
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
from .transforms import AMOUNT_TRANSFORMS, NAMED
from .values import Pattern, check_json, check_replacement

_STRICT = ConfigDict(extra="forbid", frozen=True)
SOURCES = ("paths", "value", "template", "sum", "first", "add", "object")


def _one_or_many(data: Any) -> Any:
    """`path: x` and `paths: [x, y]` are two spellings of the same list."""
    if isinstance(data, dict) and "path" in data and "paths" in data:
        raise ValueError("give `path` or `paths`, not both")
    return data


class Replace(BaseModel):
    """``{replace: {pattern: REGEX, with: TEXT}}``: every match replaced, ``\\1`` a group."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)
    pattern: Pattern
    with_: str = Field(alias="with")

    @model_validator(mode="after")
    def _groups(self) -> Replace:
        check_replacement(self.pattern, self.with_)
        return self


class MinorUnits(BaseModel):
    """``{minor_units: {extra_decimals: refuse}}``: more decimals than the currency has make
    the event invalid instead of being rounded."""

    model_config = _STRICT
    extra_decimals: Literal["round", "refuse"] = "round"


# The transforms written as an object, by their one key (`fallback` goes with `map`).
TRANSFORM_KEYS = ("map", "query_param", "regex", "cookie", "replace", "minor_units")


class TransformStep(BaseModel):
    """One transform: a named one, or one written as an object (see ``TRANSFORM_KEYS``)."""

    model_config = _STRICT
    name: str | None = None
    map: dict[Any, Any] | None = None
    fallback: Any = None
    query_param: str | None = Field(None, min_length=1)
    regex: Pattern | None = None
    cookie: str | None = Field(None, min_length=1)
    replace: Replace | None = None
    minor_units: MinorUnits | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict):
            keys = [k for k in TRANSFORM_KEYS if k in data]
            if len(keys) != 1 or "name" in data:
                raise ValueError(
                    f"a transform is a name ({', '.join(sorted(NAMED))}), "
                    "{map: ..., fallback: ...}, {query_param: NAME}, {regex: PATTERN}, "
                    "{cookie: NAME}, {replace: {pattern: REGEX, with: TEXT}} or "
                    "{minor_units: {extra_decimals: refuse}}"
                )
            extra = set(data) - {keys[0], *(("fallback",) if keys[0] == "map" else ())}
            if extra:
                raise ValueError(f"{{{keys[0]}: ...}} takes no other key ({', '.join(extra)})")
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

    @property
    def converts_amount(self) -> bool:
        """Whether this step leaves an amount in minor units."""
        return self.name in AMOUNT_TRANSFORMS or self.minor_units is not None


class SourceSpec(BaseModel):
    """Where a value comes from, and what happens to it on the way; sources nest.

    One of ``paths``, ``value``, ``template``, ``sum``, ``first``, ``add`` (with an
    optional ``subtract``) or ``object``; each source, also a nested one, may carry its
    own ``default``, ``transform`` and ``when``."""

    model_config = _STRICT
    paths: tuple[str, ...] = ()
    value: Any = None
    template: str | None = None
    sum: SumSpec | None = None
    # Emptiness is checked in _source: a length bound here would also be reported when
    # the items themselves are wrong, as a second, misleading error.
    first: tuple[SourceSpec, ...] | None = None
    add: tuple[SourceSpec, ...] | None = None
    subtract: tuple[SourceSpec, ...] | None = None
    object: dict[str, SourceSpec] | None = None
    default: Any = None
    transform: tuple[TransformStep, ...] = ()
    when: tuple[ConditionSpec, ...] = ()

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
            if isinstance(data.get("when"), dict):
                data["when"] = [data["when"]]
            return data
        raise ValueError(
            "a source is a JSONPath, a list of JSONPaths, or an object with one of path, "
            "paths, value, template, sum, first, add or object"
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

    @field_validator("when")
    @classmethod
    def _when(cls, when: tuple[ConditionSpec, ...]) -> tuple[ConditionSpec, ...]:
        for condition in when:
            if condition.without_path() and _with_path(condition):
                raise ValueError(
                    "a `when` condition tests either the source's value (no `path`) or the "
                    "event (every test with a `path`), not both in one condition"
                )
        return when

    @model_validator(mode="after")
    def _source(self) -> SourceSpec:
        given = [key for key in SOURCES if key in self.model_fields_set]
        if len(given) != 1 or (given == ["paths"] and not self.paths):
            raise ValueError(
                "give exactly one of `path`, `paths` or `value` (or `template`, `sum`, "
                "`first`, `add` or `object`)"
            )
        for key in ("first", "add", "subtract", "object"):
            if getattr(self, key) is not None and not getattr(self, key):
                raise ValueError(f"`{key}` needs at least one source")
        if self.subtract is not None and self.add is None:
            raise ValueError("`subtract` goes with `add`: add: [...], subtract: [...]")
        if self.has_value and (self.transform or "default" in self.model_fields_set):
            raise ValueError("a literal `value` takes no `transform` or `default`")
        return self

    @property
    def kind(self) -> str:
        """Which source this is: paths, value, template, sum, first, add or object."""
        return next(key for key in SOURCES if key in self.model_fields_set)

    @property
    def has_value(self) -> bool:
        return "value" in self.model_fields_set

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set

    def converts_amount(self) -> bool:
        """Whether the value leaves this source in minor units: an amount transform of its
        own, a literal, or every alternative or term converting itself."""
        if self.has_value or any(t.converts_amount for t in self.transform):
            return True
        if self.first is not None:
            return all(s.converts_amount() for s in self.first)
        if self.add is not None:
            return all(s.converts_amount() for s in (*self.add, *(self.subtract or ())))
        return False

    def can_be_object(self) -> bool:
        """Whether this source can ever give an object (for ``metadata``)."""
        if self.template is not None or self.sum is not None or self.add is not None:
            return False
        if self.has_value:
            return isinstance(self.value, dict) and bool(self.value)
        if self.first is not None:
            return any(s.can_be_object() for s in self.first)
        return True


class FieldSpec(SourceSpec):
    """A Dub field's source, and whether the mapping makes the field required."""

    required: bool = False


def _with_path(condition: ConditionSpec) -> bool:
    """Whether some test of ``condition`` (or nested in it) reads a path of the event."""
    children = condition.any or condition.all or ((condition.not_,) if condition.not_ else ())
    return bool(condition.paths) or any(_with_path(c) for c in children)


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

"""The mapping file format, as pydantic models.

A file holds ``version: 1`` and a list of ``mappings``. Shorthands are expanded
before validation (a field given as one path or a list of paths; a transform given
as a name), so every error points at one key of one shape. Path syntax and
transform names are checked here; checks across keys (Dub field names, required
fields, duplicates) live in the loader, which sees every file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..dub.endpoints import ENDPOINTS
from .paths import CompiledPath, PathSyntaxError, compile_path
from .transforms import NAMED

_STRICT = ConfigDict(extra="forbid", frozen=True)


@lru_cache(maxsize=4096)
def cached_path(text: str) -> CompiledPath:
    """Compile each distinct path text once, however many mappings use it."""
    return compile_path(text)


def _check_path(text: str) -> str:
    if not isinstance(text, str):
        raise ValueError("a JSONPath must be text")
    try:
        cached_path(text)
    except PathSyntaxError as exc:
        hint = " (hint: a literal goes under `value:`)" if not text.startswith("$") else ""
        raise ValueError(f"bad JSONPath {text!r}: {exc}{hint}") from exc
    return text


def _one_or_many(data: Any) -> Any:
    """`path: x` and `paths: [x, y]` are two spellings of the same list."""
    if isinstance(data, dict) and "path" in data and "paths" in data:
        raise ValueError("give `path` or `paths`, not both")
    return data


class TransformStep(BaseModel):
    """One transform: a named one, or a value map with an optional fallback."""

    model_config = _STRICT
    name: str | None = None
    map: dict[Any, Any] | None = None
    fallback: Any = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "map" not in data:
            raise ValueError(
                f"a transform is a name ({', '.join(sorted(NAMED))}) or {{map: ..., fallback: ...}}"
            )
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
        raise ValueError("a field is a JSONPath, a list of JSONPaths, or an object with path/value")

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for text in paths:
            _check_path(text)
        return paths

    @model_validator(mode="after")
    def _source(self) -> FieldSpec:
        has_value = "value" in self.model_fields_set
        if has_value == bool(self.paths):
            raise ValueError("give exactly one of `path`, `paths` or `value`")
        if has_value and (self.transform or "default" in self.model_fields_set):
            raise ValueError("a literal `value` takes no `transform` or `default`")
        return self

    @property
    def has_value(self) -> bool:
        return "value" in self.model_fields_set

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set


class Condition(BaseModel):
    """A test on the event: a path exists, equals a value, or holds a non-empty value."""

    model_config = _STRICT
    paths: tuple[str, ...]
    exists: bool | None = None
    equals: Any = None
    not_empty: bool | None = None
    reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _one_or_many(data)
            if "path" in data:
                data = dict(data)
                data["paths"] = [data.pop("path")]
        return data

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        if not paths:
            raise ValueError("a condition needs at least one path")
        for text in paths:
            _check_path(text)
        return paths

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = {"exists", "equals", "not_empty"} & self.model_fields_set
        if len(tests) != 1:
            raise ValueError("a condition has exactly one test: exists, equals or not_empty")
        return self


class Trigger(BaseModel):
    model_config = _STRICT
    event: tuple[str, ...] = Field(min_length=1)
    type: Literal["track"] = "track"
    conditions: tuple[Condition, ...] = ()

    @field_validator("event", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list) and any(not isinstance(n, str) or not n for n in names):
            raise ValueError("event names are non-empty text, matched exactly")
        return names


class Mapping(BaseModel):
    """One rule: which events, which Dub call, which fields."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    trigger: Trigger
    action: str
    fields: dict[str, FieldSpec]

    @field_validator("action")
    @classmethod
    def _action(cls, action: str) -> str:
        if action not in ENDPOINTS:
            raise ValueError(f"the Dub action: one of {', '.join(ENDPOINTS)}")
        return action


class MappingFile(BaseModel):
    """The top of a file; each mapping is validated on its own so one bad one hides no other."""

    model_config = _STRICT
    version: Literal[1] = 1
    mappings: list[Any] = Field(min_length=1)

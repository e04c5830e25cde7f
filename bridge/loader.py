"""Read the mapping files, report every problem at once, and compile what is good.

Errors read ``file:line: mapping.key: message (hint)``. YAML is read with the line
of every key and list item kept beside it, so pydantic's error locations can be
turned back into lines. Each mapping is validated on its own: one broken mapping
does not hide the problems of the next.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .dub_models import DUB_FIELDS, REQUIRED, RULES, FieldRejected
from .engine import MISSING, CompiledCondition, CompiledField, CompiledMapping, Engine
from .errors import MappingFileError, MappingIssue
from .mapping_models import (
    Condition,
    FieldSpec,
    Mapping,
    MappingFile,
    TransformStep,
    Trigger,
    cached_path,
)
from .transforms import NAMED, Transform, value_map


class _LineDict(dict[Any, Any]):
    lines: dict[Any, int]
    line: int


class _LineList(list[Any]):
    lines: list[int]
    line: int


class _Loader(yaml.SafeLoader):
    """A safe YAML loader that remembers lines and refuses duplicate keys."""

    duplicates: list[tuple[int, Any]]


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    result = _LineDict()
    result.lines, result.line = {}, node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in result:
                loader.duplicates.append((key_node.start_mark.line + 1, key))
            result[key] = loader.construct_object(value_node, deep=True)
        except TypeError:  # a list or map used as a key
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be plain text", key_node.start_mark
            ) from None
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    result = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.lines, result.line = (
        [c.start_mark.line + 1 for c in node.value],
        node.start_mark.line + 1,
    )
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _locate(data: Any, loc: tuple[Any, ...]) -> tuple[int | None, tuple[Any, ...]]:
    """The line of the deepest part of ``loc`` present in the YAML, and the parts present.

    Shorthands are expanded before validation (``path`` becomes ``paths``, a
    transform name becomes ``{name: ...}``); parts the author never wrote are
    left out of the location shown.
    """
    line = getattr(data, "line", None)
    node = data
    shown: list[Any] = []
    for part in loc:
        key = "path" if part == "paths" and isinstance(node, _LineDict) and "path" in node else part
        found, child_line, child = _child(node, key)
        if found:
            line, node = child_line, child
            shown.append(key)
        elif isinstance(node, (_LineDict, _LineList)):
            shown.append(part)  # a missing key: worth naming
            break
    return line, tuple(shown)


def _child(node: Any, key: Any) -> tuple[bool, int | None, Any]:
    if isinstance(node, _LineDict) and key in node:
        return True, node.lines[key], node[key]
    if isinstance(node, _LineList) and isinstance(key, int) and 0 <= key < len(node):
        return True, node.lines[key], node[key]
    return False, None, None


def _line_of(data: Any, loc: tuple[Any, ...]) -> int | None:
    return _locate(data, loc)[0]


@dataclass
class LoadResult:
    engine: Engine
    issues: list[MappingIssue] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[MappingIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[MappingIssue]:
        return [i for i in self.issues if i.severity == "warning"]


def mapping_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_mappings(directory: Path | str, *, strict: bool = True) -> LoadResult:
    """Load, check and compile every mapping file in ``directory``.

    With ``strict`` any error raises ``MappingFileError`` listing all of them;
    otherwise the result carries the issues and an engine of the good mappings.
    """
    directory = Path(directory)
    issues: list[MappingIssue] = []
    compiled: list[CompiledMapping] = []
    digest = hashlib.sha256()
    if not directory.is_dir():
        issues.append(MappingIssue(str(directory), None, "", "is not a directory of mapping files"))
        files: list[Path] = []
    else:
        files = mapping_files(directory)
        if not files:
            issues.append(MappingIssue(str(directory), None, "", "holds no .yaml or .yml file"))
    seen: dict[str, str] = {}
    for path in files:
        text = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + text + b"\0")
        for mapping, data, issue_list in _read_file(path, text):
            issues += issue_list
            if mapping is None:
                continue
            where = f"{path}:{data.line}"
            if mapping.name in seen:
                issues.append(
                    MappingIssue(
                        str(path),
                        data.lines.get("name"),
                        mapping.name,
                        f"name already used at {seen[mapping.name]}",
                    )
                )
                continue
            seen[mapping.name] = where
            compiled.append(_compile(mapping, str(path)))
    issues += _overlap_warnings(compiled)
    result = LoadResult(Engine(compiled, digest.hexdigest()[:12]), issues, [str(p) for p in files])
    if strict and result.errors:
        raise MappingFileError(result.errors)
    return result


def _read_file(path: Path, text: bytes) -> Iterator[tuple[Mapping | None, Any, list[MappingIssue]]]:
    name = str(path)
    loader = _Loader(text)
    loader.duplicates = []
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        yield None, None, [MappingIssue(name, line, "", f"YAML: {exc.problem or exc}")]
        return
    except yaml.YAMLError as exc:
        yield None, None, [MappingIssue(name, None, "", f"YAML: {exc}")]
        return
    finally:
        loader.dispose()
    dupes = [
        MappingIssue(name, line, str(key), "key given twice") for line, key in loader.duplicates
    ]
    try:
        top = MappingFile.model_validate(data)
    except ValidationError as exc:
        yield None, None, dupes + list(_issues(name, data, exc, prefix=()))
        return
    if dupes:
        yield None, None, dupes
    for index, raw in enumerate(top.mappings):
        label = (
            raw.get("name")
            if isinstance(raw, dict) and isinstance(raw.get("name"), str)
            else f"mappings[{index}]"
        )
        # Field names are checked from the raw mapping, so they are reported even when
        # another key of the same mapping is broken.
        problems = list(_field_names(name, data, index, raw, str(label)))
        try:
            mapping = Mapping.model_validate(raw)
        except ValidationError as exc:
            issues = _issues(name, data, exc, prefix=("mappings", index), label=str(label))
            yield None, raw, problems + list(issues)
            continue
        problems += _semantic(name, data, index, mapping)
        yield (None if any(p.severity == "error" for p in problems) else mapping), raw, problems


def _issues(
    file: str, data: Any, exc: ValidationError, prefix: tuple[Any, ...], label: str = ""
) -> Iterator[MappingIssue]:
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        line, shown = _locate(data, prefix + loc)
        parts = [str(p) for p in shown[len(prefix) :]]
        where = ".".join([label, *parts]) if label else ".".join(parts)
        message = error["msg"].removeprefix("Value error, ")
        hint = ""
        if error["type"] == "extra_forbidden":
            message, hint = "unknown key", _near(str(loc[-1]), _keys_at(loc))
        yield MappingIssue(file, line, where, message, hint)


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    parents: dict[str, type[BaseModel]] = {
        "trigger": Trigger,
        "conditions": Condition,
        "transform": TransformStep,
    }
    for part in reversed(loc[:-1]):
        if part in parents:
            return list(parents[part].model_fields)
        if part == "fields":
            return ["path", "paths", "value", "default", "transform", "required"]
    return list(Mapping.model_fields) + list(MappingFile.model_fields)


def _near(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(choices)}"


def _field_names(file: str, data: Any, index: int, raw: Any, label: str) -> Iterator[MappingIssue]:
    """Unknown Dub fields, and fields Dub needs that the mapping lacks."""
    if not isinstance(raw, dict) or raw.get("action") not in DUB_FIELDS:
        return
    fields = raw.get("fields")
    if not isinstance(fields, dict):
        return
    action = raw["action"]
    known = DUB_FIELDS[action]
    for key in fields:
        if key not in known:
            yield MappingIssue(
                file,
                _line_of(data, ("mappings", index, "fields", key)),
                f"{label}.fields.{key}",
                f"not a field of Dub's {action} request",
                _near(str(key), sorted(known)),
            )
    for key in sorted(REQUIRED[action] - set(fields)):
        yield MappingIssue(
            file,
            _line_of(data, ("mappings", index, "fields")),
            f"{label}.fields",
            f"Dub's {action} request needs {key!r}",
            "add a path for it",
        )


def _semantic(file: str, data: Any, index: int, mapping: Mapping) -> Iterator[MappingIssue]:
    def at(*loc: Any) -> int | None:
        return _line_of(data, ("mappings", index, *loc))

    known = DUB_FIELDS[mapping.action]
    for key, spec in mapping.fields.items():
        if key not in known:
            continue
        for word in ("value", "default"):
            literal = getattr(spec, word)
            if spec.has_value if word == "value" else spec.has_default:
                try:
                    RULES[mapping.action][key].check(literal)
                except FieldRejected as exc:
                    yield MappingIssue(
                        file,
                        at("fields", key, word),
                        f"{mapping.name}.fields.{key}.{word}",
                        f"{literal!r} {exc}",
                    )
    amount = mapping.fields.get("amount")
    if (
        amount is not None
        and not any(t.name == "minor_units" for t in amount.transform)
        and not amount.has_value
    ):
        yield MappingIssue(
            file,
            at("fields", "amount"),
            f"{mapping.name}.fields.amount",
            "no minor_units transform: the event must already carry integer minor units",
            "add `transform: minor_units` for amounts like 19.99",
            "warning",
        )


def _overlap_warnings(mappings: list[CompiledMapping]) -> Iterator[MappingIssue]:
    seen: dict[tuple[str, str], CompiledMapping] = {}
    for mapping in mappings:
        for event in sorted(mapping.event_names):
            first = seen.setdefault((event, mapping.action), mapping)
            if first is not mapping:
                yield MappingIssue(
                    mapping.source,
                    None,
                    mapping.name,
                    f"event {event!r} also makes a {mapping.action} through {first.name!r} "
                    f"({first.source}): one event would send two {mapping.action}s",
                    "narrow one trigger with a condition",
                    "warning",
                )


def _compile(mapping: Mapping, source: str) -> CompiledMapping:
    fields = [_compile_field(name, spec) for name, spec in mapping.fields.items()]
    # minor_units reads the resolved currency, so currency is resolved first.
    fields.sort(key=lambda f: f.name != "currency")
    conditions = tuple(
        CompiledCondition(
            paths=tuple(cached_path(p) for p in c.paths),
            test=next(t for t in ("exists", "equals", "not_empty") if t in c.model_fields_set),
            expected=c.exists
            if c.exists is not None
            else c.not_empty
            if c.not_empty is not None
            else c.equals,
            reason=c.reason or f"condition not met on {', '.join(c.paths)}",
        )
        for c in mapping.trigger.conditions
    )
    return CompiledMapping(
        mapping.name,
        mapping.action,
        frozenset(mapping.trigger.event),
        conditions,
        tuple(fields),
        source,
    )


def _compile_field(name: str, spec: FieldSpec) -> CompiledField:
    steps: list[Transform] = []
    for step in spec.transform:
        if step.name is not None:
            steps.append(NAMED[step.name])
        else:
            steps.append(value_map(step.map or {}, step.fallback, step.has_fallback))
    return CompiledField(
        name=name,
        paths=tuple(cached_path(p) for p in spec.paths),
        literal=spec.value,
        default=spec.default if spec.has_default else MISSING,
        transforms=tuple(steps),
        required=spec.required,
    )

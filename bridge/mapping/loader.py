"""Check mapping files, report every problem at once, and compile what is good.

Pure: the caller reads the files (or a stored mapping set) and hands over their
names and bytes. Errors read ``file:line: mapping.key: message (hint)``; each
mapping is validated on its own, so one broken mapping does not hide the
problems of the next.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ..core.errors import MappingFileError, MappingIssue
from ..dub.endpoints import DUB_FIELDS, ENDPOINTS
from ..dub.fields import FieldRejected
from . import conditions
from .compiler import compile_mapping
from .engine import CompiledMapping, Engine, Exclude
from .goldens import GoldenCase, read_tests
from .models import (
    FieldSpec,
    Mapping,
    MappingFile,
    MinorUnits,
    Replace,
    SourceSpec,
    TransformStep,
    Trigger,
)
from .sums import SumSpec
from .yamlread import YAMLProblem, line_of, locate, read_yaml

# `sum` makes a number: only these fields take one.
SUM_FIELDS = frozenset({"amount", "eventQuantity"})


@dataclass(frozen=True, slots=True)
class MappingText:
    """One mapping file's text; ``name`` is what errors show (a path, usually)."""

    name: str
    text: bytes

    @property
    def basename(self) -> str:
        return self.name.replace("\\", "/").rsplit("/", 1)[-1]


@dataclass
class LoadResult:
    engine: Engine
    issues: list[MappingIssue] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    tests: list[GoldenCase] = field(default_factory=list)

    @property
    def errors(self) -> list[MappingIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[MappingIssue]:
        return [i for i in self.issues if i.severity == "warning"]


def version_of(texts: Sequence[MappingText]) -> str:
    """The mapping set's version: a hash of its file names and contents."""
    digest = hashlib.sha256()
    for one in texts:
        digest.update(one.basename.encode() + b"\0" + one.text + b"\0")
    return digest.hexdigest()[:12]


def load_texts(
    texts: Sequence[MappingText], *, strict: bool = True, where: str = "mappings"
) -> LoadResult:
    """Check and compile every mapping of ``texts`` (``where`` names them when empty).

    With ``strict`` any error raises ``MappingFileError`` listing all of them;
    otherwise the result carries the issues and an engine of the good mappings.
    """
    issues: list[MappingIssue] = []
    compiled: list[CompiledMapping] = []
    tests: list[GoldenCase] = []
    excludes: list[Exclude] = []
    if not texts:
        issues.append(MappingIssue(where, None, "", "holds no .yaml or .yml file"))
    seen: dict[str, str] = {}
    declared: set[str] = set()  # broken mappings too: a test naming one is not an extra error
    for file in texts:
        for mapping, data, issue_list in _read_file(file.name, file.text, tests, excludes):
            issues += issue_list
            if isinstance(data, dict) and isinstance(data.get("name"), str):
                declared.add(data["name"])
            if mapping is None:
                continue
            if mapping.name in seen:
                issues.append(
                    MappingIssue(
                        file.name,
                        data.lines.get("name"),
                        mapping.name,
                        f"name already used at {seen[mapping.name]}",
                    )
                )
                continue
            seen[mapping.name] = f"{file.name}:{data.line}"
            compiled.append(compile_mapping(mapping, file.name))
    issues += _overlap_warnings(compiled, tests)
    issues += _test_issues(tests, declared)
    engine = Engine(compiled, version_of(texts), excludes)
    result = LoadResult(engine, issues, [s.name for s in texts], tests)
    if strict and result.errors:
        raise MappingFileError(result.errors)
    return result


def _read_file(
    name: str, text: bytes, tests: list[GoldenCase], excludes: list[Exclude]
) -> Iterator[tuple[Mapping | None, Any, list[MappingIssue]]]:
    try:
        data, duplicates = read_yaml(text)
    except YAMLProblem as exc:
        yield None, None, [MappingIssue(name, exc.line, "", str(exc), _yaml_hint(str(exc)))]
        return
    dupes = [MappingIssue(name, line, str(key), "key given twice") for line, key in duplicates]
    try:
        top = MappingFile.model_validate(data)
    except ValidationError as exc:
        yield None, None, dupes + list(_issues(name, data, exc, prefix=()))
        return
    if dupes:
        yield None, None, dupes
    excludes += [Exclude(name, conditions.compile_condition(c)) for c in top.exclude]
    test_issues: list[MappingIssue] = []
    for index, case in enumerate(top.tests):
        found = read_tests(name, data, index, case)
        if isinstance(found, GoldenCase):
            tests.append(found)
        else:
            test_issues += _issues(
                name, data, found, prefix=("tests", index), label=_label(case, index, "tests")
            )
    if test_issues:
        yield None, None, test_issues
    for index, raw in enumerate(top.mappings):
        label = _label(raw, index, "mappings")
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


def _yaml_hint(message: str) -> str:
    """What to do about a YAML error an ops person meets often."""
    if "unknown escape character" in message:
        # A regex such as "^\d+$" in double quotes: YAML reads the backslash first.
        return (
            "inside double quotes a backslash starts an escape: use single quotes"
            " ('^\\d+$') or double the backslash (\"^\\\\d+$\")"
        )
    return ""


def _label(raw: Any, index: int, kind: str) -> str:
    """A mapping or test is named by its `name` when it has one, else by its place."""
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        return str(raw["name"])
    return f"{kind}[{index}]"


def _issues(
    file: str, data: Any, exc: ValidationError, prefix: tuple[Any, ...], label: str = ""
) -> Iterator[MappingIssue]:
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        line, shown = locate(data, prefix + loc)
        parts = [str(p) for p in shown[len(prefix) :]]
        where = ".".join([label, *parts]) if label else ".".join(parts)
        message = error["msg"].removeprefix("Value error, ")
        hint = ""
        if error["type"] == "extra_forbidden":
            message, hint = "unknown key", _near(str(loc[-1]), _keys_at(prefix + loc))
        yield MappingIssue(file, line, where, message, hint)


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    parents: dict[str, type[BaseModel]] = {
        "trigger": Trigger,
        "transform": TransformStep,
        "sum": SumSpec,
        "replace": Replace,
        "minor_units": MinorUnits,
    }
    for part in reversed(loc[:-1]):
        if part in ("conditions", "any", "all", "not", "when", "require", "exclude"):
            return conditions.keys()
        if part in parents:
            return list(parents[part].model_fields)
        if part in ("fields", "first", "add", "subtract", "object"):
            return ["path", *FieldSpec.model_fields]
        if part == "expect":
            return ["mapping", "body"]
        if part in ("invalid", "skipped"):
            return ["mapping", "reason"]
        if part == "tests":
            return ["name", "event", "event_file", "expect", "invalid", "skipped"]
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
    needed = ENDPOINTS[action].needed
    for key in fields:
        if key not in known:
            yield MappingIssue(
                file,
                line_of(data, ("mappings", index, "fields", key)),
                f"{label}.fields.{key}",
                f"not a field of Dub's {action} request",
                _near(str(key), sorted(known)),
            )
    for key in sorted(needed - set(fields)):
        yield MappingIssue(
            file,
            line_of(data, ("mappings", index, "fields")),
            f"{label}.fields",
            f"Dub's {action} request needs {key!r}",
            "add a path for it",
        )


def _semantic(file: str, data: Any, index: int, mapping: Mapping) -> Iterator[MappingIssue]:
    def at(*loc: Any) -> int | None:
        return line_of(data, ("mappings", index, *loc))

    known = DUB_FIELDS[mapping.action]
    for key, spec in mapping.fields.items():
        if key not in known:
            continue
        for word in ("value", "default"):
            literal = getattr(spec, word)
            if spec.has_value if word == "value" else spec.has_default:
                try:
                    ENDPOINTS[mapping.action].fields[key].rule.check(literal)
                except FieldRejected as exc:
                    yield MappingIssue(
                        file,
                        at("fields", key, word),
                        f"{mapping.name}.fields.{key}.{word}",
                        f"{literal!r} {exc}",
                    )
    for key, spec in mapping.fields.items():
        if key in SUM_FIELDS:
            continue
        for loc, word in _arithmetic(spec, ()):
            yield MappingIssue(
                file,
                at("fields", key, *loc),
                ".".join([mapping.name, "fields", key, *map(str, loc)]),
                f"`{word}` makes a number: only amount and eventQuantity take one",
            )
    metadata = mapping.fields.get("metadata")
    if metadata is not None and not metadata.can_be_object():
        yield MappingIssue(
            file,
            at("fields", "metadata"),
            f"{mapping.name}.fields.metadata",
            f"a `{metadata.kind}` source never gives an object, and metadata is one",
            "use a path to an object, or `object: {KEY: source}` to build one",
        )
    amount = mapping.fields.get("amount")
    if amount is not None and not amount.converts_amount():
        yield MappingIssue(
            file,
            at("fields", "amount"),
            f"{mapping.name}.fields.amount",
            "no minor_units transform: the event must already carry integer minor units",
            "add `transform: minor_units` for amounts like 19.99, "
            "or `already_minor_units` for amounts kept in cents",
            "warning",
        )


def _arithmetic(spec: SourceSpec, loc: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Where ``spec`` (or a source nested in it) adds numbers: ``sum`` or ``add``."""
    if spec.sum is not None:
        yield (*loc, "sum"), "sum"
    if spec.add is not None:
        yield (*loc, "add"), "add"
    for index, part in enumerate(spec.first or ()):
        yield from _arithmetic(part, (*loc, "first", index))
    for key, part in (spec.object or {}).items():
        yield from _arithmetic(part, (*loc, "object", key))


def _overlap_warnings(
    mappings: list[CompiledMapping], tests: list[GoldenCase]
) -> Iterator[MappingIssue]:
    """Two mappings of one action that one event name would both trigger, outside a group.

    The names tried are every exact trigger name and every golden test's event name, so
    two regex triggers that overlap on a name the set knows are found too."""
    names = {name for m in mappings for name in m.event_names}
    names |= {
        c.event["event"]
        for c in tests
        if isinstance(c.event, dict) and isinstance(c.event.get("event"), str)
    }
    warned: set[tuple[str, str]] = set()
    for event in sorted(names):
        taking = [
            m
            for m in mappings
            if event in m.event_names
            or (m.event_pattern is not None and m.event_pattern.search(event))
        ]
        for index, mapping in enumerate(taking):
            for first in taking[:index]:
                same_group = mapping.group is not None and mapping.group == first.group
                if first.action != mapping.action or same_group:
                    continue
                if (first.name, mapping.name) in warned:
                    continue
                warned.add((first.name, mapping.name))
                yield MappingIssue(
                    mapping.file,
                    None,
                    mapping.name,
                    f"event {event!r} also makes a {mapping.action} through {first.name!r} "
                    f"({first.file}): one event would send two {mapping.action}s",
                    "narrow one trigger with a condition, or put both in one `group` (the first"
                    " whose conditions hold takes the event)",
                    "warning",
                )


def _test_issues(tests: list[GoldenCase], names: set[str]) -> Iterator[MappingIssue]:
    """Tests that name no mapping of the set, and test names given twice."""
    first: dict[str, GoldenCase] = {}
    for case in tests:
        earlier = first.setdefault(case.name, case)
        if earlier is not case:
            yield MappingIssue(
                case.file, case.line, case.name, f"test name already used at {earlier.where}"
            )
        for where, name in case.named_mappings():
            if name not in names:
                yield MappingIssue(
                    case.file,
                    case.lines.get(where, case.line),
                    f"{case.name}.{where}",
                    f"no mapping named {name!r}",
                    _near(name, sorted(names)),
                )

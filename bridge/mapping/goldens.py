"""Golden tests kept inside mapping files: an event, and exactly the Dub requests it makes.

```yaml
tests:
  - name: a USD order
    event: {type: track, event: Order Completed, messageId: m1, ...}   # or event_file: x.json
    expect:
      - mapping: order-sale
        body: {customerExternalId: u1, amount: 1999, ...}
    invalid: [other-mapping]        # optional: these mappings must find the event invalid
    skipped: [{mapping: m, reason: not ok}]  # optional: these must skip it, for that reason
```

A test passes when the engine (plan only, nothing sent) makes exactly the expected
requests, with exactly the expected bodies, finds the event invalid for exactly the
mappings under ``invalid`` and skips it for each mapping under ``skipped``. An entry of
``invalid`` or ``skipped`` is a mapping name or ``{mapping, reason}``: the reason (or the
errors) must contain that text. A ``skipped`` mapping must have been triggered: one whose
trigger never took the event fails the test, so a mistyped trigger cannot pass a "should
be skipped" test. A failure is told field by field. Pure: the caller reads
``event_file`` (relative to the mapping file) and hands the events over.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.jsoncodec import JSONEncodeFailure, dumps_str
from ..core.outcomes import Outcome
from ..core.results import Result
from .values import MISSING, check_json, json_equal
from .yamlread import line_of

_STRICT = ConfigDict(extra="forbid", frozen=True)
_SHOWN = 120


class ExpectedRequest(BaseModel):
    model_config = _STRICT
    mapping: str = Field(min_length=1)
    body: dict[str, Any]

    @field_validator("body")
    @classmethod
    def _json(cls, body: dict[str, Any]) -> dict[str, Any]:
        return dict(check_json(body, where="body"))


class ExpectedOutcome(BaseModel):
    """A mapping that must skip (or find invalid) the event, and text its reason holds."""

    model_config = _STRICT
    mapping: str = Field(min_length=1)
    reason: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _name(cls, data: Any) -> Any:
        return {"mapping": data} if isinstance(data, str) else data


class GoldenSpec(BaseModel):
    """One test as written."""

    model_config = _STRICT
    name: str = Field(min_length=1)
    event: Any = None
    event_file: str | None = Field(None, min_length=1)
    expect: tuple[ExpectedRequest, ...]
    invalid: tuple[ExpectedOutcome, ...] = ()
    skipped: tuple[ExpectedOutcome, ...] = ()

    @field_validator("event")
    @classmethod
    def _json(cls, event: Any) -> Any:
        return check_json(event, where="event")

    @field_validator("event_file")
    @classmethod
    def _relative(cls, path: str | None) -> str | None:
        if path is not None and (path.startswith(("/", "\\")) or ":" in path[:3]):
            raise ValueError("a path relative to the mapping file")
        return path

    @model_validator(mode="after")
    def _one_event(self) -> GoldenSpec:
        if ("event" in self.model_fields_set) == (self.event_file is not None):
            raise ValueError("give exactly one of `event` or `event_file`")
        return self


@dataclass(frozen=True)
class GoldenCase:
    """A checked test, located in its file."""

    name: str
    file: str
    line: int | None
    event: Any  # MISSING when the test reads event_file
    event_file: str | None
    expect: tuple[ExpectedRequest, ...]
    invalid: tuple[ExpectedOutcome, ...]
    skipped: tuple[ExpectedOutcome, ...] = ()
    lines: dict[str, int | None] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def named_mappings(self) -> Iterator[tuple[str, str]]:
        """(key, mapping name) of every mapping the test names."""
        for index, request in enumerate(self.expect):
            yield f"expect[{index}].mapping", request.mapping
        for key in ("invalid", "skipped"):
            for index, entry in enumerate(getattr(self, key)):
                yield f"{key}[{index}]", entry.mapping


def read_tests(file: str, data: Any, index: int, raw: Any) -> GoldenCase | ValidationError:
    """The test at ``tests[index]`` of a file, or pydantic's errors about it."""
    try:
        spec = GoldenSpec.model_validate(raw)
    except ValidationError as exc:
        return exc
    lines = {
        f"expect[{i}].mapping": line_of(data, ("tests", index, "expect", i, "mapping"))
        for i in range(len(spec.expect))
    }
    for key in ("invalid", "skipped"):
        lines |= {
            f"{key}[{i}]": line_of(data, ("tests", index, key, i))
            for i in range(len(getattr(spec, key)))
        }
    return GoldenCase(
        spec.name,
        file,
        line_of(data, ("tests", index)),
        spec.event if "event" in spec.model_fields_set else MISSING,
        spec.event_file,
        spec.expect,
        spec.invalid,
        spec.skipped,
        lines,
    )


# --- running ------------------------------------------------------------------------------


def check(case: GoldenCase, results: Iterable[Result]) -> list[str]:
    """What differs between the test and the engine's results: [] when it passes."""
    sent: dict[str, list[Result]] = {}
    invalid: list[Result] = []
    other: dict[str, Result] = {}
    by_mapping: dict[str, list[Result]] = {}
    for result in results:
        by_mapping.setdefault(result.mapping or "", []).append(result)
        if result.outcome is Outcome.READY and result.body is not None:
            sent.setdefault(result.mapping or "", []).append(result)
        elif result.outcome is Outcome.INVALID:
            invalid.append(result)
        if result.mapping:
            other.setdefault(result.mapping, result)
    wanted: dict[str, list[dict[str, Any]]] = {}
    for request in case.expect:
        wanted.setdefault(request.mapping, []).append(request.body)
    problems: list[str] = []
    for mapping in [*wanted, *(m for m in sent if m not in wanted)]:
        bodies = wanted.get(mapping, [])
        got = sent.get(mapping, [])
        for body, result in zip(bodies, got, strict=False):
            problems += _body_diff(mapping, body, result.body or {})
        for _body in bodies[len(got) :]:
            problems.append(
                f"{mapping}: expected a request, none was sent{_why(other.get(mapping))}"
            )
        for result in got[len(bodies) :]:
            problems.append(
                f"{mapping}: sent a request the test does not expect: {_json(result.body)}"
            )
    problems += _invalid_diff(case.invalid, invalid)
    problems += _skipped_diff(case.skipped, by_mapping)
    return problems


def _why(result: Result | None) -> str:
    if result is None:
        return " (no mapping was triggered)"
    if result.outcome is Outcome.INVALID:
        return f" (invalid: {'; '.join(result.errors)})"
    return f" ({result.outcome}: {result.reason})" if result.reason else f" ({result.outcome})"


def _body_diff(mapping: str, expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    lines = []
    for key in [*expected, *(k for k in got if k not in expected)]:
        want, have = expected.get(key, MISSING), got.get(key, MISSING)
        if want is MISSING or have is MISSING or not json_equal(want, have):
            lines.append(f"{mapping}.{key}: expected {_json(want)}, got {_json(have)}")
    return lines


def _invalid_diff(expected: tuple[ExpectedOutcome, ...], invalid: list[Result]) -> list[str]:
    lines = []
    found = {r.mapping or "(event)": r for r in invalid}
    for entry in expected:
        result = found.get(entry.mapping)
        if result is None:
            lines.append(f"{entry.mapping}: expected invalid, it was not")
        elif entry.reason is not None and entry.reason not in "; ".join(result.errors):
            lines.append(
                f"{entry.mapping}: expected invalid with {entry.reason!r}, "
                f"the errors are: {'; '.join(result.errors)}"
            )
    names = {entry.mapping for entry in expected}
    for name, result in found.items():
        if name not in names:
            errors = "; ".join(result.errors)
            lines.append(f"{name}: invalid, the test does not expect it: {errors}")
    return lines


def _skipped_diff(
    expected: tuple[ExpectedOutcome, ...], by_mapping: dict[str, list[Result]]
) -> list[str]:
    """Each ``skipped`` entry: the mapping was triggered and skipped, for that reason."""
    lines = []
    for entry in expected:
        results = by_mapping.get(entry.mapping, [])
        if not results:
            lines.append(
                f"{entry.mapping}: expected skipped, but its trigger never took the event"
                " (a skip only counts once the trigger matched)"
            )
            continue
        skips = [r for r in results if r.outcome is Outcome.SKIPPED]
        if not skips:
            first = results[0]
            what = "sent" if first.outcome is Outcome.READY else str(first.outcome)
            detail = "; ".join(first.errors)
            lines.append(
                f"{entry.mapping}: expected skipped, it was {what}"
                + (f" ({detail})" if detail else "")
            )
        elif entry.reason is not None and not any(entry.reason in (r.reason or "") for r in skips):
            lines.append(
                f"{entry.mapping}: expected skipped with {entry.reason!r}, "
                f"the reason is {skips[0].reason!r}"
            )
    return lines


def _json(value: Any) -> str:
    if value is MISSING:
        return "(absent)"
    try:
        text = dumps_str(value)
    except JSONEncodeFailure:
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."

"""``bridge explain``: how the engine decided, step by step, for one event.

The outcome, body, errors and warnings are the engine's own (``Engine.plan``), so an
explanation can never disagree with what the service would do. The steps beside them
come from a second, instrumented walk over the same compiled objects: every condition
with its path, the value seen and the test; every field with the path that gave its
value, the raw value, each transform and its result. The engine itself carries no
tracing, so explaining costs the hot path nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from ..masking import mask_value
from ..results import Result
from .engine import CompiledMapping, Engine
from .events import SegmentEvent
from .fields import CompiledField
from .paths import PathEvalError
from .sums import Sum, SumError
from .templates import Template
from .transforms import TransformError, is_empty
from .values import MISSING


def explain(engine: Engine, event: Any) -> dict[str, Any]:
    """One event: its candidate mappings, each with its steps and the engine's result."""
    results = engine.plan(event)
    name = event.get("event") if isinstance(event, dict) else None
    out: dict[str, Any] = {
        "messageId": results[0].message_id,
        "event": results[0].event,
        "mappings": [],
    }
    by_name = {r.mapping: r for r in results if r.mapping}
    candidates = engine.candidates(name) if isinstance(name, str) else None
    if not by_name:
        out["outcome"] = str(results[0].outcome)
        out["reason"] = results[0].reason or "; ".join(results[0].errors)
        return out
    try:
        SegmentEvent.model_validate(event)
        well_formed = True
    except ValidationError:
        well_formed = False  # the engine stopped before any mapping: so do its steps
    for mapping in candidates or ():
        result = by_name[mapping.name]
        out["mappings"].append(_mapping(mapping, event, result, well_formed))
    return out


def _mapping(
    mapping: CompiledMapping, event: Any, result: Result, well_formed: bool
) -> dict[str, Any]:
    pattern = mapping.event_pattern
    trigger = (
        f"event_matches {pattern.pattern!r}"
        if pattern is not None
        else f"event in {sorted(mapping.event_names)}"
    )
    step: dict[str, Any] = {
        "mapping": mapping.name,
        "action": mapping.action,
        "file": mapping.source,
        "trigger": trigger,
        "conditions": [],
        "fields": [],
    }
    if well_formed:
        try:
            held = True
            for condition in mapping.conditions:
                trace = condition.trace(event)
                step["conditions"].append(trace.to_json())
                held = held and trace.held
            if held:
                resolved: dict[str, Any] = {}
                step["fields"] = [_field(f, event, resolved) for f in mapping.fields]
        except PathEvalError as exc:
            step["error"] = str(exc)
    step["outcome"] = str(result.outcome)
    step["reason"] = result.reason
    step["errors"] = list(result.errors)
    step["warnings"] = list(result.warnings)
    step["body"] = result.body
    step["path"] = result.request_path
    return step


def _field(field: CompiledField, event: Any, resolved: dict[str, Any]) -> dict[str, Any]:
    """The steps of one field, as CompiledField.resolve takes them."""
    out: dict[str, Any] = {"field": field.name}
    tried: list[dict[str, Any]] = []
    value: Any = MISSING
    if isinstance(field.computed, Template):
        out["from"] = field.source
        out["placeholders"] = [
            {"path": path, "value": None if v is MISSING else v}
            for path, v in field.computed.steps(event)
        ]
        value = _transformed(field, field.computed.render(event), resolved, out)
    elif isinstance(field.computed, Sum):
        out["from"] = field.source
        try:
            value = _transformed(field, field.computed.total(event), resolved, out)
        except SumError as exc:
            out["error"] = f"{exc} (at {exc.where})"
    elif not field.paths:
        out["from"] = "value"
        value = field.literal
    else:
        for path in field.paths:
            found = path.find(event)
            raw = MISSING if not found else found[0] if len(found) == 1 else found
            tried.append({"path": path.text, "value": None if raw is MISSING else raw})
            if raw is MISSING or is_empty(raw):
                continue
            out["from"] = path.text
            value = _transformed(field, raw, resolved, out)
            if value is not MISSING or "error" in out:
                break
        out["tried"] = tried
    if value is MISSING and "error" not in out and field.default is not MISSING:
        out["from"], value = "default", field.default
    if value is not MISSING:
        resolved[field.name] = value
    out["value"] = None if value is MISSING else _plain(value)
    out["absent"] = value is MISSING
    return out


def _transformed(
    field: CompiledField, raw: Any, resolved: dict[str, Any], out: dict[str, Any]
) -> Any:
    out["raw"] = None if raw is MISSING else _plain(raw)
    if raw is MISSING:
        return MISSING
    steps: list[dict[str, Any]] = []
    out["steps"] = steps
    value = raw
    for name, transform in zip(field.steps, field.transforms, strict=True):
        try:
            value = transform(value, resolved)
        except TransformError as exc:
            steps.append({"transform": name, "error": str(exc)})
            out["error"] = str(exc)
            return MISSING
        steps.append({"transform": name, "value": None if value is MISSING else _plain(value)})
        if value is MISSING:
            return MISSING
    return value


def _plain(value: Any) -> Any:
    """A value as JSON can show it: an exact decimal total as its text."""
    return str(value) if isinstance(value, Decimal) else value


def explain_text(report: dict[str, Any]) -> list[str]:
    """The readable form of one event's explanation."""

    def show(where: str, value: Any, absent: bool = False) -> str:
        return "absent" if absent else mask_value(where, value)

    lines = [f"event {report['event']!r} (messageId {report['messageId']})"]
    if not report["mappings"]:
        lines.append(f"  {report['outcome']}: {report['reason']}")
    for step in report["mappings"]:
        lines.append(
            f"  mapping {step['mapping']} ({step['action']}, {step['file']}, {step['trigger']})"
        )
        for cond in step["conditions"]:
            lines += _condition_lines(cond, "    ", show)
        for field in step["fields"]:
            lines += _field_lines(field, show)
        if "error" in step:
            lines.append(f"    error: {step['error']}")
        outcome = step["outcome"]
        if step["path"] is not None:
            outcome += f" (POST {step['path']})"
        lines.append(f"    -> {outcome}" + (f": {step['reason']}" if step["reason"] else ""))
        lines += [f"       error: {e}" for e in step["errors"]]
        lines += [f"       warning: {w}" for w in step["warnings"]]
    return lines


def _condition_lines(cond: dict[str, Any], indent: str, show: Any) -> list[str]:
    mark = "held" if cond["held"] else "FAILED"
    reason = f" ({cond['reason']})" if cond.get("reason") and not cond["held"] else ""
    if "path" in cond:
        value = show(cond["path"], cond["value"], cond["absent"])
        lines = [f"{indent}condition {cond['path']} {cond['test']}: value {value}: {mark}{reason}"]
    else:
        lines = [f"{indent}condition {cond['test']}: {mark}{reason}"]
    for child in cond.get("conditions", ()):
        lines += _condition_lines(child, indent + "  ", show)
    return lines


def _field_lines(field: dict[str, Any], show: Any) -> list[str]:
    name = field["field"]
    if "from" in field:
        parts = [f"    field {name}: from {field['from']}"]
    else:
        tried = ", ".join(t["path"] for t in field.get("tried", ()))
        parts = [f"    field {name}: nothing at {tried}"]
    if "raw" in field and field.get("from") not in ("value", "default"):
        parts.append(f"raw {show(name, field['raw'])}")
    for step in field.get("steps", ()):
        if "error" in step:
            parts.append(f"{step['transform']} -> error: {step['error']}")
        else:
            parts.append(f"{step['transform']} -> {show(name, step['value'])}")
    parts.append(f"value {show(name, field['value'], field['absent'])}")
    return ["; ".join(parts)]

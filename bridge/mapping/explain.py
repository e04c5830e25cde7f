"""``bridge explain``: how the engine decided, step by step, for one event.

The outcome, body, errors and warnings are the engine's own (``Engine.plan``), and the
steps beside them are recorded by the same walk (``mapping/interpret.py`` with a trace):
every condition with its path, the value seen and the test; every field with the paths
tried, the one that gave its value, the raw value, each transform and its result. An
explanation can never disagree with what the service would do.
"""

from __future__ import annotations

from typing import Any

from ..core.masking import mask_value
from ..core.results import Result
from .engine import CompiledMapping, Engine
from .interpret import Steps


def explain(engine: Engine, event: Any) -> dict[str, Any]:
    """One event: its candidate mappings, each with its steps and the engine's result."""
    trace: dict[str, Steps] = {}
    results = engine.plan(event, trace)
    name = event.get("event") if isinstance(event, dict) else None
    out: dict[str, Any] = {
        "messageId": results[0].message_id,
        "event": results[0].event,
        "mappings": [],
    }
    by_name = {r.mapping: r for r in results if r.mapping}
    if isinstance(name, str) and event.get("type") == "track":
        candidates = engine.candidates(name)
    else:  # identify and delete triggers: every mapping of the type, as the engine planned
        known = {m.name: m for m in engine.mappings}
        candidates = tuple(known[n] for n in by_name if n in known)
    if not by_name:
        out["outcome"] = str(results[0].outcome)
        out["reason"] = results[0].reason or "; ".join(results[0].errors)
        return out
    for mapping in candidates or ():
        steps = trace.get(mapping.name, {})
        out["mappings"].append(_mapping(mapping, by_name[mapping.name], steps))
    return out


def _mapping(mapping: CompiledMapping, result: Result, steps: Steps) -> dict[str, Any]:
    pattern = mapping.event_pattern
    if mapping.event_type != "track":
        trigger = f"type {mapping.event_type}"
    elif pattern is not None:
        trigger = f"event_matches {pattern.pattern!r}"
    else:
        trigger = f"event in {sorted(mapping.event_names)}"
    step: dict[str, Any] = {
        "mapping": mapping.name,
        "action": mapping.action,
        "file": mapping.file,
        "trigger": trigger,
        "conditions": steps.get("conditions", []),
        "require": steps.get("require", []),
        "fields": steps.get("fields", []),
    }
    if "error" in steps:
        step["error"] = steps["error"]
    step["outcome"] = str(result.outcome)
    step["reason"] = result.reason
    step["errors"] = list(result.errors)
    step["warnings"] = list(result.warnings)
    step["body"] = result.body
    step["path"] = result.request_path
    step["method"] = mapping.endpoint.method
    return step


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
        for cond in step.get("require", ()):
            lines += _condition_lines(cond, "    ", show, "require")
        for field in step["fields"]:
            lines += _field_lines(field, show)
        if "error" in step:
            lines.append(f"    error: {step['error']}")
        outcome = step["outcome"]
        if step["path"] is not None:
            outcome += f" ({step.get('method', 'POST')} {step['path']})"
        lines.append(f"    -> {outcome}" + (f": {step['reason']}" if step["reason"] else ""))
        lines += [f"       error: {e}" for e in step["errors"]]
        lines += [f"       warning: {w}" for w in step["warnings"]]
    return lines


def _condition_lines(
    cond: dict[str, Any], indent: str, show: Any, word: str = "condition", where: str = ""
) -> list[str]:
    mark = "held" if cond["held"] else "FAILED"
    reason = f" ({cond['reason']})" if cond.get("reason") and not cond["held"] else ""
    if "path" in cond and cond["path"] is None:  # a `when` test of the source's own value
        value = show(where, cond["value"], cond["absent"])
        lines = [f"{indent}{word} {cond['test']}: value {value}: {mark}{reason}"]
    elif "path" in cond:
        value = show(cond["path"], cond["value"], cond["absent"])
        lines = [f"{indent}{word} {cond['path']} {cond['test']}: value {value}: {mark}{reason}"]
    else:
        lines = [f"{indent}{word} {cond['test']}: {mark}{reason}"]
    for child in cond.get("conditions", ()):
        lines += _condition_lines(child, indent + "  ", show, "condition", where)
    return lines


def _field_lines(field: dict[str, Any], show: Any) -> list[str]:
    return _source_lines(f"field {field['field']}", field["field"], field, show, "    ")


def _source_lines(
    label: str, name: str, trace: dict[str, Any], show: Any, indent: str
) -> list[str]:
    """One source's line (from where, raw value, each transform, the value), then its
    `when` tests and its nested sources, each on its own lines below it."""
    if "from" in trace:
        parts = [f"{indent}{label}: from {trace['from']}"]
    elif "tried" in trace:
        tried = ", ".join(t["path"] for t in trace["tried"])
        parts = [f"{indent}{label}: nothing at {tried}"]
    else:
        parts = [f"{indent}{label}: nothing"]
    if "raw" in trace and trace.get("from") not in ("value", "default"):
        parts.append(f"raw {show(name, trace['raw'])}")
    for step in trace.get("steps", ()):
        if "error" in step:
            parts.append(f"{step['transform']} -> error: {step['error']}")
        else:
            shows = show(name, step["value"], step.get("absent", False))
            parts.append(f"{step['transform']} -> {shows}")
    if "error" in trace and not any("error" in step for step in trace.get("steps", ())):
        parts.append(f"error: {trace['error']}")
    parts.append(f"value {show(name, trace.get('value'), trace.get('absent', True))}")
    lines = ["; ".join(parts)]
    for cond in trace.get("when", ()):
        lines += _condition_lines(cond, indent + "  ", show, "when", name)
    for part in trace.get("parts", ()):
        lines += _source_lines(part["part"], name, part, show, indent + "  ")
    return lines

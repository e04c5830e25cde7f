"""What a mapping means, written once: one event in, this mapping's result out.

Every consumer runs this one function: the webhook and ``bridge replay`` through
``Engine.plan``, ``bridge explain`` with a trace that records each step as it is taken,
so an explanation is the walk that made the result, never a second one beside it. The
rules it applies are the compiled objects' own: each condition's ``holds``, each field's
``CompiledField.resolve``, and Dub's field rules through ``Endpoint.clean``.

Whatever an event holds, the mapping gives a result: an error while evaluating it makes
this (event, mapping) invalid and costs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.outcomes import Outcome
from ..core.results import Result
from .fields import FieldProblem
from .paths import PathEvalError
from .values import MISSING

ZERO_SALE = "amount is 0: Dub records nothing for a zero sale"

# What ``bridge explain`` is given per mapping: {"conditions": [...], "fields": [...]},
# filled as the interpreter goes (see ``Condition.trace`` and ``CompiledField.resolve``).
Steps = dict[str, Any]


def interpret(
    mapping: Any,  # CompiledMapping: engine.py imports this module
    event: Mapping[str, Any],
    message_id: str | None,
    name: str | None,
    steps: Steps | None = None,
) -> Result:
    """This mapping's result for a well-formed event; ``steps`` receives the trace."""
    # Each way out builds its one Result: a frozen dataclass is built once, not copied.
    mapping_name, action = mapping.name, mapping.endpoint.action
    try:
        return _apply(mapping, event, message_id, name, steps)
    except PathEvalError as exc:
        if steps is not None:
            steps["error"] = str(exc)
        errors: tuple[str, ...] = (str(exc),)
    except Exception as exc:  # a bug must cost this (event, mapping), not the batch
        text = f"mapping {mapping.name!r} failed on this event: {type(exc).__name__}: {exc}"
        errors = (text[:300],)
    return Result(message_id, name, mapping_name, action, Outcome.INVALID, errors=errors)


def _apply(
    mapping: Any,
    event: Mapping[str, Any],
    message_id: str | None,
    name: str | None,
    steps: Steps | None,
) -> Result:
    head = (message_id, name, mapping.name, mapping.endpoint.action)
    failed = _first_failure(mapping.conditions, event, steps, "conditions")
    if failed is not None:
        return Result(*head, Outcome.SKIPPED, reason=failed)
    refused = _first_failure(mapping.require, event, steps, "require")
    if refused is not None:
        return Result(*head, Outcome.INVALID, errors=(f"required: {refused}",))
    body: dict[str, Any] = {}
    origins: dict[str, str | None] = {}
    errors: list[str] = []
    warnings: list[str] = []
    traced = None if steps is None else steps.setdefault("fields", [])
    for field, required in mapping.planned:
        trace = None if traced is None else {"field": field.name}
        if traced is not None and trace is not None:
            traced.append(trace)
        try:
            value, origins[field.name] = field.resolve(event, body, trace)
        except FieldProblem as exc:
            (errors if required else warnings).append(str(exc) if required else f"dropped {exc}")
            continue
        if value is MISSING:
            if required:
                errors.append(f"{field.name}: no value (paths tried: {field.tried})")
            continue
        body[field.name] = value
    clean, rule_errors, rule_warnings = mapping.endpoint.clean(body, mapping.required, origins)
    noted = (*warnings, *rule_warnings)
    if errors or rule_errors:
        return Result(*head, Outcome.INVALID, errors=(*errors, *rule_errors), warnings=noted)
    if zero_sale(mapping.endpoint.action, clean):
        return Result(*head, Outcome.SKIPPED, warnings=noted, reason=ZERO_SALE)
    method, path, _ = mapping.endpoint.request(clean)
    return Result(
        *head, Outcome.READY, request_path=path, body=clean, warnings=noted, request_method=method
    )


def zero_sale(action: str, clean: Mapping[str, Any]) -> bool:
    """A sale of amount 0: Dub records nothing, so nothing is sent."""
    return action == "sale" and clean.get("amount") == 0


def _first_failure(
    conditions: Any, event: Mapping[str, Any], steps: Steps | None, kind: str
) -> str | None:
    """Why the first of ``conditions`` that fails does not hold, or None when all hold."""
    if steps is None:
        for condition in conditions:
            if not condition.holds(event):
                return str(condition.why_not(event))
        return None
    # Explained: every condition is shown, the first that failed decides.
    traced = steps.setdefault(kind, [])
    failed: str | None = None
    for condition in conditions:
        trace = condition.trace(event)
        traced.append(trace.to_json())
        if not trace.held and failed is None:
            failed = condition.reason or trace.failure()
    return failed

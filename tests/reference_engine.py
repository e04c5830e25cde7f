"""The generic interpreter of a compiled mapping: what each generated function must equal.

It walks the mapping as the engine did before mappings were compiled to code: each
field through ``CompiledField.resolve``, the body through ``Endpoint.clean``, and the
clean body through the pydantic request model (which must accept it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.mapping.engine import CompiledMapping
from bridge.mapping.fields import FieldProblem
from bridge.mapping.paths import PathEvalError
from bridge.mapping.values import MISSING
from bridge.outcomes import Outcome
from bridge.results import Result


def reference_apply(
    mapping: CompiledMapping, event: Mapping[str, Any], message_id: str | None, name: str
) -> Result:
    result = Result(message_id, name, mapping.name, mapping.action)
    try:
        return _apply(mapping, event, result)
    except PathEvalError as exc:
        return result.finish(Outcome.INVALID, errors=(str(exc),))
    except Exception as exc:
        text = f"mapping {mapping.name!r} failed on this event: {type(exc).__name__}: {exc}"
        return result.finish(Outcome.INVALID, errors=(text[:300],))


def _apply(mapping: CompiledMapping, event: Mapping[str, Any], result: Result) -> Result:
    for condition in mapping.conditions:
        if not condition.holds(event):
            return result.finish(Outcome.SKIPPED, reason=condition.why_not(event))
    body: dict[str, Any] = {}
    sources: dict[str, str | None] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for field in mapping.fields:
        required = field.name in mapping.required
        try:
            value, sources[field.name] = field.resolve(event, body)
        except FieldProblem as exc:
            (errors if required else warnings).append(str(exc) if required else f"dropped {exc}")
            continue
        if value is MISSING:
            if required:
                errors.append(f"{field.name}: no value (paths tried: {field.tried})")
            continue
        body[field.name] = value
    clean, rule_errors, rule_warnings = mapping.endpoint.clean(body, mapping.required, sources)
    result = result._replace(warnings=(*warnings, *rule_warnings))
    if errors or rule_errors:
        return result.finish(Outcome.INVALID, errors=(*errors, *rule_errors))
    if mapping.action == "sale" and clean.get("amount") == 0:
        return result.finish(
            Outcome.SKIPPED, reason="amount is 0: Dub records nothing for a zero sale"
        )
    mapping.endpoint.model.model_validate(clean)  # a clean body is always a valid request
    return result._replace(request_path=mapping.endpoint.path, body=clean)

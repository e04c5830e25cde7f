"""How one event's results differ between two mapping sets: ``bridge diff`` and the
console's mapping page show the same lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..masking import mask_value
from ..outcomes import Outcome
from ..results import Result
from .values import MISSING, json_equal


def _shown(result: Result | None) -> str:
    if result is None:
        return "(no result)"
    outcome = "dry_run" if result.outcome is Outcome.READY else str(result.outcome)
    detail = result.reason or "; ".join(result.errors)
    return f"{outcome} ({detail})" if detail and result.outcome is not Outcome.READY else outcome


def changes(base: list[Result], head: list[Result]) -> Iterator[str]:
    """The lines that tell how ``head`` differs from ``base`` for one event."""
    before = {r.mapping: r for r in base}
    after = {r.mapping: r for r in head}
    for name in [*before, *(m for m in after if m not in before)]:
        old, new = before.get(name), after.get(name)
        label = name or "(no mapping)"
        same_outcome = old is not None and new is not None and old.outcome is new.outcome
        if not same_outcome:
            yield f"  {label}: {_shown(old)} -> {_shown(new)}"
        old_body = old.body if old is not None and old.body is not None else {}
        new_body = new.body if new is not None and new.body is not None else {}
        for key in [*old_body, *(k for k in new_body if k not in old_body)]:
            a, b = old_body.get(key, MISSING), new_body.get(key, MISSING)
            if a is MISSING or b is MISSING or not json_equal(a, b):
                yield f"    {label}.{key}: {_value(key, a)} -> {_value(key, b)}"


def _value(key: str, value: Any) -> str:
    return "(absent)" if value is MISSING else mask_value(key, value)

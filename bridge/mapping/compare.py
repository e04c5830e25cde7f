"""How one event's results differ between two mapping sets: ``bridge diff`` (its lines, its
``--summary`` and ``--json``) and the console's mapping page show the same changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.masking import mask_json, mask_value
from ..core.outcomes import Outcome
from ..core.results import Result
from .values import MISSING, json_equal


def _outcome(result: Result | None) -> str:
    """An outcome as the diff names it: a planned request is a ``dry_run``."""
    if result is None:
        return "(no result)"
    return "dry_run" if result.outcome is Outcome.READY else str(result.outcome)


def _detail(result: Result | None) -> str:
    """Why a result sends nothing: its skip reason or its errors."""
    if result is None or result.outcome is Outcome.READY:
        return ""
    return result.reason or "; ".join(result.errors)


def _shown(result: Result | None) -> str:
    detail = _detail(result)
    return f"{_outcome(result)} ({detail})" if detail else _outcome(result)


@dataclass(frozen=True)
class MappingChange:
    """How one mapping's result for one event differs between base and head."""

    mapping: str
    before: Result | None
    after: Result | None
    fields: tuple[tuple[str, Any, Any], ...]  # (key, before, after); MISSING when absent

    @property
    def outcome_changed(self) -> bool:
        """The mapping's outcome differs (or it has a result on one side only)."""
        old, new = self.before, self.after
        return old is None or new is None or old.outcome is not new.outcome

    @property
    def reason_only(self) -> bool:
        """Skipped before and after, for another reason: the same (no) request."""
        return (
            not self.outcome_changed
            and not self.fields
            and self.before is not None
            and self.before.outcome is Outcome.SKIPPED
            and _detail(self.before) != _detail(self.after)
        )

    @property
    def label(self) -> str:
        return self.mapping or "(no mapping)"

    def lines(self) -> Iterator[str]:
        """The outcome line (when it changed) and one line per changed field."""
        if self.outcome_changed or self.reason_only:
            yield f"  {self.label}: {_shown(self.before)} -> {_shown(self.after)}"
        for key, a, b in self.fields:
            yield f"    {self.label}.{key}: {_value(key, a)} -> {_value(key, b)}"

    def to_json(self) -> dict[str, Any]:
        """Before and after, and the changed fields (masked), for ``--json``."""
        return {
            "before": _side(self.before),
            "after": _side(self.after),
            "fields": {key: {"before": _masked(key, a), "after": _masked(key, b)}
                       for key, a, b in self.fields},
        }  # fmt: skip


def _side(result: Result | None) -> dict[str, Any] | None:
    """One side of a change: outcome, reason and errors."""
    if result is None:
        return None
    return {"outcome": _outcome(result), "reason": result.reason, "errors": list(result.errors)}


def _masked(key: str, value: Any) -> Any:
    return None if value is MISSING else mask_json(key, value)


def mapping_changes(base: list[Result], head: list[Result]) -> list[MappingChange]:
    """Every mapping whose result differs for one event: outcome, fields or reason."""
    before = {r.mapping: r for r in base}
    after = {r.mapping: r for r in head}
    found = []
    for name in [*before, *(m for m in after if m not in before)]:
        old, new = before.get(name), after.get(name)
        old_body = old.body if old is not None and old.body is not None else {}
        new_body = new.body if new is not None and new.body is not None else {}
        fields = tuple(
            (key, a, b)
            for key in [*old_body, *(k for k in new_body if k not in old_body)]
            for a, b in [(old_body.get(key, MISSING), new_body.get(key, MISSING))]
            if a is MISSING or b is MISSING or not json_equal(a, b)
        )
        change = MappingChange(name or "", old, new, fields)
        if change.outcome_changed or fields or change.reason_only:
            found.append(change)
    return found


def _value(key: str, value: Any) -> str:
    return "(absent)" if value is MISSING else mask_value(key, value)


@dataclass
class Summary:
    """The diff of a whole file as counts: what ``--summary`` and ``--json`` end with."""

    events: int = 0
    changed: int = 0
    reason_only: int = 0
    transitions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    amounts: dict[str, list[int]] = field(default_factory=dict)  # currency -> [before, after]
    new_invalid: list[tuple[str, str, str]] = field(default_factory=list)

    def add_amounts(self, results: list[Result], side: int) -> None:
        """Add the planned sales' amounts, per currency (Dub's default: usd)."""
        for result in results:
            body = result.body
            if result.outcome is Outcome.READY and body is not None and "amount" in body:
                amount = body["amount"]
                if isinstance(amount, int) and not isinstance(amount, bool):
                    currency = str(body.get("currency") or "usd").lower()
                    self.amounts.setdefault(currency, [0, 0])[side] += amount

    def add(self, message_id: str, found: list[MappingChange]) -> None:
        """Count one event's changes."""
        real = [c for c in found if not c.reason_only]
        if real:
            self.changed += 1
        elif found:
            self.reason_only += 1
        for change in real:
            before, after = _outcome(change.before), _outcome(change.after)
            if change.outcome_changed:
                self.transitions[(change.label, before, after)] += 1
            else:
                self.transitions[(change.label, before, f"{after}, request changed")] += 1
            if after == "invalid" and before != "invalid" and change.after is not None:
                errors = "; ".join(change.after.errors)
                self.new_invalid.append((message_id, change.label, errors))

    def lines(self) -> Iterator[str]:
        """The readable summary ``--summary`` prints."""
        yield "outcome transitions per mapping:"
        if not self.transitions:
            yield "  (none)"
        for (label, before, after), count in sorted(self.transitions.items()):
            yield f"  {label}: {before} -> {after}: {count}"
        yield "amount sent per currency (minor units), before -> after:"
        if not self.amounts:
            yield "  (no sale amount)"
        for currency, (sent_before, sent_after) in sorted(self.amounts.items()):
            delta = f" ({sent_after - sent_before:+d})" if sent_after != sent_before else ""
            yield f"  {currency}: {sent_before} -> {sent_after}{delta}"
        yield f"new invalid: {len(self.new_invalid)}"
        for message_id, label, errors in self.new_invalid:
            yield f"  {message_id} {label}: {errors}"
        yield f"skipped events whose reason alone changed: {self.reason_only}"

    def to_json(self) -> dict[str, Any]:
        """The last object ``--json`` prints."""
        return {
            "summary": {
                "events": self.events,
                "changed": self.changed,
                "reasonOnly": self.reason_only,
                "transitions": [
                    {"mapping": label, "before": before, "after": after, "count": count}
                    for (label, before, after), count in sorted(self.transitions.items())
                ],
                "amounts": {
                    currency: {"before": before, "after": after}
                    for currency, (before, after) in sorted(self.amounts.items())
                },
                "newInvalid": [
                    {"messageId": message_id, "mapping": label, "errors": errors}
                    for message_id, label, errors in self.new_invalid
                ],
            }
        }


def changes(base: list[Result], head: list[Result]) -> Iterator[str]:
    """The lines that tell how ``head`` differs from ``base`` for one event."""
    for change in mapping_changes(base, head):
        yield from change.lines()

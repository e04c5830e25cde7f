"""One result per event and mapping: what the replay prints, the webhook counts and the log says.

Results are immutable: each step that learns something (the engine, the
deliverer) makes a new one with ``replace`` or ``finish``, so a result already
logged or answered can never change underneath. ``Planned`` holds what the engine
decides; ``Result`` adds what delivery learns from Dub. Both are built by keyword.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .outcomes import Outcome

# The keys of a replay line, in order.
LINE_KEYS = (
    "messageId",
    "event",
    "mapping",
    "outcome",
    "request",
    "status",
    "errors",
    "warnings",
    "reason",
)


@dataclass(frozen=True, slots=True)
class Planned:
    """What the engine decides for one event and mapping."""

    message_id: str | None = None
    event: str | None = None
    mapping: str | None = None
    action: str | None = None
    outcome: Outcome = Outcome.READY
    request_path: str | None = None
    body: dict[str, Any] | None = None
    request_method: str = "POST"  # Dub's verb for the call (PATCH, DELETE for the lifecycle)
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Result(Planned):
    """A planned result and what delivery added: Dub's answer, the calls made, the time."""

    status: int | None = None
    dub_error: dict[str, Any] | None = None
    elapsed_ms: float | None = None
    attempts: int = 0
    retry_after: float | None = None  # seconds, when Dub said how long to wait

    def replace(self, **changes: Any) -> Result:
        """A copy with these fields changed (``dataclasses.replace``'s meaning, without its
        per-call field introspection: delivery copies results on every call it makes)."""
        unknown = changes.keys() - _NAMES
        if unknown:
            raise TypeError(f"Result has no field {sorted(unknown)[0]!r}")
        new = object.__new__(Result)
        for name in _NAMES_IN_ORDER:
            _set(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    def finish(
        self, outcome: Outcome, *, reason: str | None = None, errors: tuple[str, ...] = ()
    ) -> Result:
        """A copy with this outcome (and reason, and more errors)."""
        return self.replace(
            outcome=outcome,
            reason=self.reason if reason is None else reason,
            errors=self.errors + errors,
        )

    def with_warnings(self, warnings: tuple[str, ...]) -> Result:
        return self.replace(warnings=warnings + self.warnings) if warnings else self

    @property
    def customer(self) -> str | None:
        return None if self.body is None else self.body.get("customerExternalId")

    @property
    def key(self) -> tuple[str, str]:
        """The ledger's key: (messageId, mapping)."""
        return (self.message_id or "", self.mapping or "")

    def to_line(self) -> dict[str, Any]:
        """The stable JSON shape of a replay line."""
        request = None
        if self.body is not None and self.request_path is not None:
            request = {"method": self.request_method, "path": self.request_path, "body": self.body}
        line: dict[str, Any] = {
            "messageId": self.message_id,
            "event": self.event,
            "mapping": self.mapping,
            "outcome": self.outcome,
            "request": request,
            "status": self.status,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "reason": self.reason,
        }
        if self.dub_error is not None:
            line["dubError"] = self.dub_error
        return line


_NAMES_IN_ORDER = tuple(f.name for f in dataclasses.fields(Result))
_NAMES = frozenset(_NAMES_IN_ORDER)
_set = object.__setattr__  # a frozen dataclass sets its fields this way in __init__ too


__all__ = ["LINE_KEYS", "Planned", "Result"]

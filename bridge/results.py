"""One result per event and mapping: what the replay prints and the webhook answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Outcomes that need a person (replay exits 1). "ready" is internal: planned, not yet sent.
FAILED = frozenset({"invalid", "rejected", "failed", "uncertain", "gave_up"})
# Segment must retry the request when any event ends in one of these.
RETRY = frozenset({"failed", "pending"})


@dataclass(slots=True)
class Result:
    message_id: str | None = None
    event: str | None = None
    mapping: str | None = None
    action: str | None = None
    outcome: str = "ready"
    request_path: str | None = None
    body: dict[str, Any] | None = None
    status: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None
    dub_error: dict[str, Any] | None = None
    elapsed_ms: float | None = None
    attempts: int = 0
    retry_after: float | None = None  # seconds, when Dub said how long to wait

    def finish(
        self, outcome: str, *, reason: str | None = None, errors: list[str] | None = None
    ) -> Result:
        self.outcome = outcome
        if reason is not None:
            self.reason = reason
        if errors:
            self.errors = [*self.errors, *errors]
        return self

    @property
    def customer(self) -> str | None:
        return None if self.body is None else self.body.get("customerExternalId")

    def to_line(self) -> dict[str, Any]:
        """The stable JSON shape of a replay line and of a webhook result."""
        request = None
        if self.body is not None and self.request_path is not None:
            request = {"method": "POST", "path": self.request_path, "body": self.body}
        line: dict[str, Any] = {
            "messageId": self.message_id,
            "event": self.event,
            "mapping": self.mapping,
            "outcome": self.outcome,
            "request": request,
            "status": self.status,
            "errors": self.errors,
            "warnings": self.warnings,
            "reason": self.reason,
        }
        if self.dub_error is not None:
            line["dubError"] = self.dub_error
        return line


class Unreadable:
    """Stands in for an event that could not be read; the engine reports it invalid."""

    __slots__ = ("message", "where")

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

"""One result per event and mapping: what the replay prints, the webhook counts and the log says.

Results are immutable: each step that learns something (the engine, the
deliverer) makes a new one with ``_replace`` or ``finish``, so a result already
logged or answered can never change underneath. A result is a named tuple rather
than a frozen dataclass because the engine makes one per event and mapping: a tuple
is built in a quarter of the time, which is most of what a dismissed event costs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .dub.endpoints import ENDPOINTS
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


class Result(NamedTuple):
    message_id: str | None = None
    event: str | None = None
    mapping: str | None = None
    action: str | None = None
    outcome: Outcome = Outcome.READY
    request_path: str | None = None
    body: dict[str, Any] | None = None
    status: int | None = None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    reason: str | None = None
    dub_error: dict[str, Any] | None = None
    elapsed_ms: float | None = None
    attempts: int = 0
    retry_after: float | None = None  # seconds, when Dub said how long to wait

    def finish(
        self, outcome: Outcome, *, reason: str | None = None, errors: tuple[str, ...] = ()
    ) -> Result:
        """A copy with this outcome (and reason, and more errors)."""
        return self._replace(
            outcome=outcome,
            reason=self.reason if reason is None else reason,
            errors=self.errors + errors,
        )

    def with_warnings(self, warnings: tuple[str, ...]) -> Result:
        return self._replace(warnings=warnings + self.warnings) if warnings else self

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
            endpoint = ENDPOINTS.get(self.action or "")
            method = endpoint.method if endpoint is not None else "POST"
            request = {"method": method, "path": self.request_path, "body": self.body}
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


_new = tuple.__new__


def planned(
    message_id: str | None,
    event: str | None,
    mapping: str | None,
    action: str | None,
    outcome: Outcome,
    request_path: str | None = None,
    body: dict[str, Any] | None = None,
    errors: tuple[str, ...] = (),
    warnings: tuple[str, ...] = (),
    reason: str | None = None,
) -> Result:
    """A result as the engine makes one, without ``Result``'s keyword handling.

    The engine makes a result for every event it sees, most of them dismissed at once;
    building the tuple directly is half the cost of ``Result(...)``.
    """
    return _new(
        Result,
        (message_id, event, mapping, action, outcome, request_path, body, None, errors,
         warnings, reason, None, None, 0, None),
    )  # fmt: skip


__all__ = ["LINE_KEYS", "Result", "planned"]

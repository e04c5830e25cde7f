"""The bridge's one exception tree.

Every error carries a stable machine ``code`` and the HTTP ``status`` it maps to,
so the webhook, the command line and the logs all speak the same words. Library
exceptions (requests, YAML, jsonpath) are translated where they are caught and
chained with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    code = "bridge_error"
    status = 500
    retry_after: int | None = None  # seconds, sent as Retry-After with a 503

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, Any]:
        """The one JSON error shape the service answers with."""
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one JSON shape of every error the service answers, whoever answers it."""
    return {"error": {"code": code, "message": message}}


# --- configuration (start-up) ------------------------------------------------------------


class ConfigError(BridgeError):
    code = "config_error"


class SettingsError(ConfigError):
    """An environment variable holds a value the bridge cannot use."""

    code = "invalid_setting"


@dataclass(frozen=True)
class MappingIssue:
    """One problem found in a mapping file, located as precisely as we can."""

    file: str
    line: int | None
    where: str  # "mapping.key" style location, or "" for the whole file
    message: str
    hint: str = ""
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{loc}: {self.where}: {self.message}" if self.where else f"{loc}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        if self.severity == "warning":
            text = "warning: " + text
        return text


class MappingFileError(ConfigError):
    """One or more mapping files are invalid; every problem found is listed."""

    code = "invalid_mapping"

    def __init__(self, issues: list[MappingIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues) or "invalid mapping files")


# --- requests to the webhook --------------------------------------------------------------


class RequestError(BridgeError):
    code = "bad_request"
    status = 400


class InvalidJSON(RequestError):
    code = "invalid_json"


class NoEvents(RequestError):
    code = "no_events"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"
    status = 413


class InvalidSignature(RequestError):
    code = "unauthorized"
    status = 401


class UnsupportedEncoding(RequestError):
    code = "unsupported_encoding"
    status = 415


# --- the ledger ---------------------------------------------------------------------------


class LedgerError(BridgeError):
    """The ledger cannot be used now (locked too long, unreachable); Segment should retry.

    No Dub call is made without a claim, so the whole request waits for the ledger."""

    code = "ledger_unavailable"
    status = 503
    retry_after = 10


class LedgerConfigError(ConfigError):
    """The ledger's setting points at something that is not a usable ledger."""

    code = "invalid_ledger"


class ServiceUnavailable(BridgeError):
    """Dub could not take every event now; Segment should retry the request."""

    code = "dub_unavailable"
    status = 503

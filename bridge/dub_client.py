"""Dub's HTTP API: one pooled ``requests.Session``, and every answer read into a ``DubAnswer``.

This is the one place requests' exceptions are caught; callers see only answers.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError

from . import __version__
from .jsoncodec import dumps, loads

MAX_RETRY_AFTER = 300.0  # seconds; a longer wait is treated as this
# Dub answers these when a retry may succeed; every other 4xx is final.
TRANSIENT_STATUSES = frozenset({408, 429})
# Failures after the request went out: Dub may have processed it.
REACHED_CODES = frozenset({"timeout", "connection_lost", "request_error"})


@dataclass(slots=True)
class DubAnswer:
    """What one call to Dub came to."""

    outcome: str  # delivered | deduplicated | not_recorded | rejected | failed
    status: int | None = None  # None: no HTTP answer (unreachable, timed out)
    error: dict[str, Any] | None = None  # Dub's {"code", "message"} or ours
    retry_after: float | None = None  # seconds from now, when the server said
    body: Any = None

    @property
    def transient(self) -> bool:
        return self.outcome == "failed"

    @property
    def may_have_reached(self) -> bool:
        """Whether Dub may have acted on a call that failed (5xx, timeout, lost connection)."""
        code = (self.error or {}).get("code")
        return (self.status or 0) >= 500 or code in REACHED_CODES


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header in any form a server sends.

    Delta seconds ("120"), an HTTP date, or Dub's absolute Unix time in
    milliseconds ("1732400000000"); an absolute time in seconds is read too.
    Clamped to 0..MAX_RETRY_AFTER; None when the header is absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    now = time.time() if now is None else now
    try:
        number = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        wait = when.timestamp() - now
    else:
        if number != number or number in (float("inf"), float("-inf")):
            return None
        if number >= 1e11:  # milliseconds since the epoch (Dub)
            wait = number / 1000.0 - now
        elif number >= 1e9:  # seconds since the epoch
            wait = number - now
        else:
            wait = number
    return min(max(wait, 0.0), MAX_RETRY_AFTER)


class DubClient:
    """Sends track calls to Dub; thread-safe for the bounded pool that uses it."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        pool_size: int = 8,
        connect_timeout: float = 1.0,
        read_timeout: float = 2.5,
    ):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.session = requests.Session()
        # No retries here: the delivery loop owns retries, with the budget in view.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"segment-dub-bridge/{__version__}",
            }
        )

    def __repr__(self) -> str:  # never show the key
        return f"DubClient({self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    def send(self, action: str, path: str, body: dict[str, Any]) -> DubAnswer:
        """POST the body; never raises for network trouble or an odd answer.

        The call is never cut short at the webhook's deadline: a call cut off client-side
        may still be acted on by Dub, and Segment's retry would then send it again.
        """
        timeout = (self.connect_timeout, self.read_timeout)
        try:
            response = self.session.post(self.base_url + path, data=dumps(body), timeout=timeout)
        except requests.RequestException as exc:
            return network_failure(exc)
        return classify(
            action, response.status_code, response.content, response.headers.get("Retry-After")
        )


def network_failure(exc: requests.RequestException) -> DubAnswer:
    """A call that got no HTTP answer, named by whether it may have reached Dub."""
    if isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError) and _never_sent(exc)
    ):
        code, what = "unreachable", "unreachable"  # nothing was sent
    elif isinstance(exc, requests.Timeout):
        code, what = "timeout", "timed out"
    elif isinstance(exc, requests.ConnectionError):
        # Reset or closed after the request went out: Dub may have acted on it.
        code, what = "connection_lost", "connection lost"
    else:
        code, what = "request_error", "request failed"
    return DubAnswer("failed", error={"code": code, "message": _reason(exc, what)})


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when the connection was never made (refused, name unknown, connect timeout)."""
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    # urllib3's NewConnectionError (and NameResolutionError) derive from ConnectTimeoutError.
    return isinstance(reason, ConnectTimeoutError)


def _reason(exc: Exception, fallback: str) -> str:
    # requests' messages can be long chains; the last part says what happened.
    text = str(exc).split(": ")[-1].strip(" ')\"") or fallback
    return f"{fallback}: {text}"[:200]


def classify(action: str, status: int, content: bytes, retry_after: str | None = None) -> DubAnswer:
    """Turn Dub's status and body into an outcome."""
    try:
        body = loads(content) if content else None
    except ValueError:
        body = None
    if 200 <= status < 300:
        if not isinstance(body, dict):
            return DubAnswer(
                "delivered",
                status,
                {"code": "unreadable_answer", "message": "2xx without a JSON object"},
            )
        if action == "lead" and body.get("link", "") is None:
            return DubAnswer("deduplicated", status, body=body)
        if action == "sale" and body.get("sale", "") is None:
            return DubAnswer("not_recorded", status, body=body)
        return DubAnswer("delivered", status, body=body)
    error = _error_envelope(body, content, status)
    wait = parse_retry_after(retry_after)
    if status in TRANSIENT_STATUSES or status >= 500:
        return DubAnswer("failed", status, error, wait)
    return DubAnswer("rejected", status, error, wait)


def _error_envelope(body: Any, content: bytes, status: int) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        inner = body["error"]
        return {
            "code": str(inner.get("code", "unknown")),
            "message": str(inner.get("message", ""))[:500],
        }
    text = content[:200].decode("utf-8", "replace").strip()
    return {"code": f"http_{status}", "message": text or f"HTTP {status}"}

"""Who may use the console: one token, a signed session cookie, a CSRF token per session.

The session cookie is Flask's (signed with a key derived from the token, so every worker
and instance reads it, and changing the token ends every session): ``HttpOnly``,
``SameSite=Strict``, and ``Secure`` whenever the request came over https (behind a proxy,
as ``X-Forwarded-Proto`` says). Every POST carries the session's CSRF token or gets 403
and changes nothing. A wrong token is logged and answered late, later after each failure
from the same address (the injected clock waits, so tests do not).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from typing import Any

from flask import Flask, Request, abort, request, session
from flask.sessions import SecureCookieSessionInterface

from ...core.clock import Clock

log = logging.getLogger("bridge.console")

SESSION_HOURS = 12.0  # a login lasts a working day, then the token is asked again
SLOWDOWN_STEP = 0.5  # seconds added per recent failure from one address
SLOWDOWN_MAX = 5.0
FAILURE_MEMORY = 900.0  # failures older than this are forgotten


class _SecureWhenHttps(SecureCookieSessionInterface):
    """``Secure`` follows the request's scheme: set over https, absent on plain http (a
    local trial), where a browser would refuse to send it back."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def session_key(token: str) -> bytes:
    """The session signing key: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"bridge console session", hashlib.sha256).digest()


def install(app: Flask, token: str) -> None:
    app.secret_key = session_key(token)
    app.config.update(
        SESSION_COOKIE_NAME="bridge_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/console",
    )
    app.session_interface = _SecureWhenHttps()


def right_token(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def csrf_token() -> str:
    """The session's CSRF token, made on first use."""
    value = session.get("csrf")
    if not isinstance(value, str):
        value = secrets.token_urlsafe(32)
        session["csrf"] = value
    return value


def csrf_ok(req: Request) -> bool:
    expected = session.get("csrf")
    given = req.form.get("csrf", "")
    return isinstance(expected, str) and hmac.compare_digest(given.encode(), expected.encode())


def logged_in(clock: Clock) -> bool:
    since = session.get("since")
    return isinstance(since, int | float) and 0 <= clock.time() - since < SESSION_HOURS * 3600


def start_session(clock: Clock) -> None:
    session.clear()  # a new session after a login: no fixation of one made before
    session["since"] = clock.time()
    session["csrf"] = secrets.token_urlsafe(32)


class Failures:
    """Recent wrong tokens per address, for the slowdown (one worker's memory)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._seen: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def failed(self, address: str) -> float:
        """Note a failure; the seconds to wait before answering it."""
        now = self.clock.time()
        with self._lock:
            if len(self._seen) > 10_000:  # a flood of addresses cannot grow this for ever
                self._seen.clear()
            recent = [t for t in self._seen.get(address, []) if now - t < FAILURE_MEMORY]
            recent.append(now)
            self._seen[address] = recent
            return min(SLOWDOWN_MAX, SLOWDOWN_STEP * len(recent))

    def forget(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)


def refuse_without_csrf() -> None:
    if request.method == "POST" and not csrf_ok(request):
        log.warning(
            "console request refused",
            extra={"action": request.endpoint, "result": "no valid CSRF token"},
        )
        abort(403, "this form has expired or did not come from the console: reload the page")


def action(what: str, result: str, **ids: Any) -> None:
    """One JSON line per console action: what, on which ids, and what came of it."""
    log.info("console action", extra={"action": what, "result": result, **ids})

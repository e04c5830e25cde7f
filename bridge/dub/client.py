"""Dub's HTTP API: one pooled ``requests.Session``, every answer read into a plain ``DubAnswer``.

This is the one place requests' exceptions are caught; callers see only answers.
What an answer *means* (delivered, transient, final) is decided in
``delivery.decide``, not here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError

from .. import __version__
from ..core.jsoncodec import dumps, loads
from ..core.metrics import labelled, metrics
from .endpoints import Endpoint


class Failure(StrEnum):
    """Why a call got no HTTP answer."""

    UNREACHABLE = "unreachable"  # never sent: refused, name unknown, connect timeout
    TIMEOUT = "timeout"  # sent, no answer in time: Dub may have acted on it
    CONNECTION_LOST = "connection_lost"  # reset or closed after sending: likewise
    REQUEST_ERROR = "request_error"  # anything else after sending: likewise


@dataclass(frozen=True, slots=True)
class DubAnswer:
    """What one call to Dub got back, as facts."""

    status: int | None = None  # None: no HTTP answer
    body: Any = None  # the parsed JSON, when the answer was JSON
    error: dict[str, Any] | None = None  # Dub's {"code", "message"}, or ours
    retry_after: str | None = None  # the raw Retry-After header
    failure: Failure | None = None  # when there was no HTTP answer


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
        # Proxies from the environment (HTTPS_PROXY, NO_PROXY) are read once, here: requests
        # would otherwise scan the whole environment again on every call.
        self.session.proxies = requests.utils.get_environ_proxies(self.base_url)
        self.session.trust_env = False
        # No cookie is kept: a call is prepared from the fixed headers alone, so one set by
        # Dub (or a proxy in front of it) would never be sent back anyway.
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
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
        # Every call's headers, the session's included, fixed here: a call is prepared from
        # them alone (requests' documented prepared-request way), not merged again with the
        # session's headers, cookies, hooks and settings on every call.
        self._headers = dict(self.session.headers)

    def __repr__(self) -> str:  # never show the key
        return f"DubClient({self.base_url!r})"

    @property
    def longest_call(self) -> float:
        return self.connect_timeout + self.read_timeout

    def close(self) -> None:
        self.session.close()

    def send(self, endpoint: Endpoint, body: dict[str, Any]) -> DubAnswer:
        """Make the endpoint's call for the body; never raises for network trouble or an
        odd answer.

        The call is never cut short at the webhook's deadline: a call cut off client-side
        may still be acted on by Dub, and Segment's retry would then send it again.
        """
        method, path, data = endpoint.request(body)
        return self.call(endpoint.action, method, path, data)

    def call(
        self,
        action: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> DubAnswer:
        """One call to Dub (``action`` labels its metrics); never raises, as ``send``."""
        timeout = (self.connect_timeout, self.read_timeout)
        started = time.monotonic()
        try:
            prepared = requests.Request(
                method,
                self.base_url + path,
                headers=self._headers,
                data=None if body is None else dumps(body),
                params=params,
            ).prepare()
            # Dub's API does not redirect: a redirect (a wrong DUB_API_URL) is an answer of
            # its own, kept with the row, never a second request elsewhere.
            response = self.session.send(
                prepared, timeout=timeout, allow_redirects=False, proxies=self.session.proxies
            )
        except requests.RequestException as exc:
            answer = network_failure(exc)
        else:
            answer = read_answer(
                response.status_code,
                response.content,
                response.headers.get("Retry-After"),
                location=response.headers.get("Location"),
            )
        # Real seconds, whatever clock the caller injects: this is Dub's latency.
        seen = metrics()
        labelled(seen.dub_seconds, action).observe(time.monotonic() - started)
        labelled(seen.dub_requests, action, str(answer.status or answer.failure)).inc()
        return answer


def read_answer(
    status: int, content: bytes, retry_after: str | None = None, *, location: str | None = None
) -> DubAnswer:
    try:
        body = loads(content) if content else None
    except ValueError:
        body = None
    if 300 <= status < 400:
        # Not followed (see DubClient.call): say where it pointed, for whoever fixes the URL.
        where = (location or "no Location")[:200]
        redirected: dict[str, Any] = {
            "code": f"http_{status}",
            "message": f"Dub's API answered a redirect to {where}, which is not followed:"
            " check DUB_API_URL",
        }
        return DubAnswer(status, body, redirected, retry_after)
    error = None if 200 <= status < 300 else _error_envelope(body, content, status)
    return DubAnswer(status, body, error, retry_after)


def network_failure(exc: requests.RequestException) -> DubAnswer:
    """A call that got no HTTP answer, named by whether it may have reached Dub."""
    if isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError) and _never_sent(exc)
    ):
        code, what = Failure.UNREACHABLE, "unreachable"
    elif isinstance(exc, requests.Timeout):
        code, what = Failure.TIMEOUT, "timed out"
    elif isinstance(exc, requests.ConnectionError):
        code, what = Failure.CONNECTION_LOST, "connection lost"
    else:
        code, what = Failure.REQUEST_ERROR, "request failed"
    return DubAnswer(error={"code": code, "message": _reason(exc, what)}, failure=code)


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


def _error_envelope(body: Any, content: bytes, status: int) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        inner = body["error"]
        return {
            "code": str(inner.get("code", "unknown")),
            "message": str(inner.get("message", ""))[:500],
        }
    text = content[:200].decode("utf-8", "replace").strip()
    return {"code": f"http_{status}", "message": text or f"HTTP {status}"}

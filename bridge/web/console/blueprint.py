"""The console's blueprint, its login and logout, and what every page shares (the header,
the service, the clock, the action log)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from ...core.clock import Clock
from ...core.masking import mask_emails
from ...core.outcomes import DEAD, State
from ...service.wiring import Service
from ..health import ledger_problem
from . import auth

console = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
)
log = logging.getLogger("bridge.console")
OPEN = frozenset({"console.login", "console.static"})
COUNT_CAP = 10_000


def service() -> Service:
    found: Service = current_app.extensions["bridge"]
    return found


def clock() -> Clock:
    found: Clock = current_app.extensions["bridge.console"]["clock"]
    return found


def token() -> str:
    found: str = current_app.extensions["bridge.console"]["token"]
    return found


def counts() -> dict[State, int]:
    """Rows by state, each counted up to ``COUNT_CAP`` (a million delivered rows would cost
    more to count than the rest of the page), once per request."""
    ledger = service().ledger
    if ledger is None:
        return {}
    if "console_counts" not in g:
        g.console_counts = ledger.counts(cap=COUNT_CAP)
    found: dict[State, int] = g.console_counts
    return found


def figure(count: int) -> str:
    """A count as shown: ``10000+`` where the count stopped at the cap."""
    return f"{count}+" if count >= COUNT_CAP else str(count)


def failures() -> auth.Failures:
    found: auth.Failures = current_app.extensions["bridge.console"]["failures"]
    return found


@console.before_request
def _guard() -> WerkzeugResponse | None:
    auth.refuse_without_csrf()
    if request.endpoint in OPEN or auth.logged_in(clock()):
        return None
    if request.method == "GET":
        return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
    return redirect(url_for("console.login"))


@console.after_request
def _no_store(response: Response) -> Response:
    # Pages show payloads and tokens: no cache keeps them, no other site frames them.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@console.errorhandler(HTTPException)
def _error(exc: HTTPException) -> tuple[str, int]:
    code = exc.code or 500
    return render_template("console/error.html", code=code, message=exc.description), code


@console.app_template_filter("when")
def _when(value: float | None) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@console.app_template_filter("masked")
def _masked(value: Any) -> str:
    """Emails masked wherever they appear (lists, errors)."""
    if value is None:
        return ""
    return mask_emails(value if isinstance(value, str) else json.dumps(value, default=str))


@console.app_template_filter("figure")
def _figure(count: int) -> str:
    return figure(count)


@console.app_template_filter("pretty")
def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@console.app_context_processor
def _header() -> dict[str, Any]:
    if request.blueprint != "console":
        return {}
    svc = service()
    header: dict[str, Any] = {
        "csrf": auth.csrf_token(),
        "status": "degraded" if svc.store.degraded or ledger_problem() else "ok",
        "version": svc.store.engine.version,
        "ledger_kind": svc.ledger.kind if svc.ledger is not None else "off",
        "dead_count": None,
    }
    if svc.ledger is not None and request.endpoint not in OPEN:
        dead = [n for state, n in counts().items() if state in DEAD]
        # Any kind that stopped at the cap makes the sum a lower bound.
        capped = max(dead, default=0) >= COUNT_CAP
        header["dead_count"] = f"{sum(dead)}+" if capped else str(sum(dead))
    return header


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never a redirect elsewhere."""
    if (
        target
        and target.startswith("/console")
        and not urlsplit(target).netloc
        and "\\" not in target
    ):
        return target
    return url_for("console.events")


@console.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("console/login.html", next=request.args.get("next", ""))
    address = request.remote_addr or "unknown"
    given = request.form.get("token", "")
    if auth.right_token(given, token()):
        failures().forget(address)
        auth.start_session(clock())
        auth.action("login", "ok", address=address)
        return redirect(_safe_next(request.form.get("next")))
    wait = failures().failed(address)
    log.warning(
        "console login refused",
        extra={"action": "login", "result": "wrong token", "address": address, "delay": wait},
    )
    clock().sleep(wait)
    page = render_template(
        "console/login.html",
        next=request.form.get("next", ""),
        message="That token is not right. Check BRIDGE_CONSOLE_TOKEN and try again.",
    )
    return page, 401


@console.post("/logout")
def logout() -> Any:
    auth.action("logout", "ok")
    session.clear()
    return redirect(url_for("console.login"))


@console.get("/")
def home() -> Any:
    return redirect(url_for("console.events"))

"""The ops console: the events the ledger holds, one event's three panes, redrive (one or
many, after a dry-run plan), try a mapping, and the mapping sets. Served at ``/console``
only when ``BRIDGE_CONSOLE_TOKEN`` is set; server-rendered, every flow a plain form."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from ...core.clock import Clock
from ...core.settings import Settings
from . import auth, events, tools
from .blueprint import console

__all__ = ["events", "install", "tools"]


def install(app: Flask, settings: Settings, clock: Clock) -> None:
    """Serve the console when its token is set; otherwise ``/console`` stays a 404."""
    if settings.console_token is None:
        return
    token = settings.console_token.get_secret_value()
    auth.install(app, token)
    # Behind the platform's proxy, https is told by X-Forwarded-Proto: it decides whether
    # the session cookie is Secure. X-Forwarded-For is not trusted: a client could name any
    # address and escape the slowdown of failed logins (behind a proxy, they share one).
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=0, x_proto=1)  # type: ignore[method-assign]
    app.extensions["bridge.console"] = {
        "clock": clock,
        "token": token,
        "failures": auth.Failures(clock),
    }
    app.register_blueprint(console)

"""The architecture's floor: Flask under the same gunicorn flags, no mapping, no ledger.

``POST /segment`` parses the body with the bridge's codec, picks the events the default
mappings would convert (a track ``Sign Up``/``Signed Up`` with a click id, an ``Order
Completed`` with a user id and a non-zero amount) and POSTs a body of the same size (the
event's properties ride along as metadata, as in the real body) to Dub with a pooled
``requests.Session`` configured and called like ``bridge.dub.client``'s (the proxy settings
read once, each call prepared from headers fixed at start and sent with ``Session.send``,
no redirects): inline for one call, over an 8-thread pool for several, as the bridge's
default concurrency. Called requests' everyday way (``Session.post``, which reads the
environment's proxy settings and merges the session's settings again on every call) it
cost about 40 us more per event in process, which the ratios would have credited to the
bridge. No validation, no
logging per event, no ledger. Run by gunicorn as ``bench.bare_app:create_app()``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

from bridge.core.jsoncodec import dumps, loads

LEAD_EVENTS = frozenset({"Sign Up", "Signed Up"})
CONCURRENCY = 8  # the bridge's default BRIDGE_CONCURRENCY


def _dub_call(event: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(path, body) when the default mappings would call Dub for this event."""
    if event.get("type") != "track":
        return None
    name = event.get("event")
    props = event.get("properties") or {}
    body = {"eventName": name, "customerExternalId": str(event.get("userId")), "metadata": props}
    if name in LEAD_EVENTS:
        traits = (event.get("context") or {}).get("traits") or {}
        dub = (event.get("integrations") or {}).get("Dub (Actions)") or {}
        click_id = traits.get("clickId") or dub.get("dub_id")
        return ("/track/lead", {"clickId": click_id, **body}) if click_id else None
    if name == "Order Completed" and event.get("userId") is not None:
        amount = props.get("revenue", props.get("total"))
        if amount and float(amount) != 0:
            return "/track/sale", {"amount": amount, **body}
    return None


def create_app() -> Flask:
    base = os.environ["DUB_API_URL"].rstrip("/")
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=CONCURRENCY, max_retries=0)
    session.mount("http://", adapter)
    session.headers.update(
        {
            "Authorization": f"Bearer {os.environ['DUB_API_KEY']}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
    )
    session.proxies = requests.utils.get_environ_proxies(base)
    session.trust_env = False
    headers = dict(session.headers)
    pool = ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="dub")

    def send(call: tuple[str, dict[str, Any]]) -> int:
        path, body = call
        request = requests.Request("POST", base + path, headers=headers, data=dumps(body))
        prepared = request.prepare()
        answer = session.send(
            prepared, timeout=(1.5, 3.0), allow_redirects=False, proxies=session.proxies
        )
        loads(answer.content)  # read the answer as the bridge does
        return answer.status_code

    app = Flask("bare")

    @app.post("/segment")
    def segment() -> Response:
        data = loads(request.get_data(cache=False))
        events = data if isinstance(data, list) else data.get("batch", [data])
        calls = [c for c in map(_dub_call, events) if c is not None]
        statuses = [send(calls[0])] if len(calls) == 1 else list(pool.map(send, calls))
        ok = all(200 <= s < 300 for s in statuses)
        out = {"events": len(events), "calls": len(calls), "ok": ok}
        return Response(dumps(out), status=200 if ok else 503, mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    return app

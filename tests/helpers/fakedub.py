"""A fake Dub API for fault tests: a real HTTP/1.1 server on 127.0.0.1, scriptable per request.

It answers ``POST /track/lead`` and ``POST /track/sale`` the way Dub does (see
``shared/dub/README.md``), and the lifecycle calls (``GET /commissions?invoiceId=``,
``PATCH /commissions/{id}``, ``PATCH`` and ``DELETE /customers/{id}`` with ``ext_`` ids):

* a sale with an ``invoiceId`` already seen gets 200 with the first answer's body and is
  not recorded again; like Dub, the check is not atomic (two concurrent requests with one
  ``invoiceId`` inside the ``latency`` window are both recorded, so a test can see a
  double send);
* a lead is de-duplicated per (customerExternalId, eventName lower-cased): a repeat gets
  200 with ``link: null`` and is not recorded; the marker is set before anything else;
* a sale for an unknown customer without ``clickId``, or with ``amount`` 0, gets 200 with
  ``sale: null`` and is not recorded;
* commissions (``add_commission``) keep ``amount`` in USD cents, a ``status`` (``paid`` ones
  refuse changes with Dub's 400 message) and an ``invoiceId``; a PATCH's ``saleAmount`` in
  another currency is converted at ``rates`` and clamped at 0, like Dub's;
* customers are the ones a lead or sale recorded (or ``add_customer``), reached as
  ``ext_<externalId>``; an unknown one gets 404;
* errors use Dub's envelope ``{"error": {"code", "message", "doc_url"}}``; a 429 carries
  ``Retry-After`` and ``X-RateLimit-Reset`` as an absolute Unix time in milliseconds.

Every request is kept as a ``Received`` (path, parsed body, headers, time, what the fake
did); every accepted conversion as a ``Recorded``. A test scripts faults with actions:
``Status`` (answer an error), ``Sleep`` (answer late), ``Reset`` (write part of the
answer, then reset the connection with SO_LINGER 0); ``stop()`` makes Dub "down" (the
port closed, open connections cut) and ``start()`` brings it back on the same port.
Actions come, in this order, from a per-conversion queue (``script``), a queue for the
next requests whatever they are (``script_next``), the ``plan`` hook, else normal.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# ("sale", invoiceId), ("lead", customerExternalId, eventName.lower()), ("commissions",
# invoiceId) for a GET, ("commission", id) for a PATCH, ("customer", externalId).
Key = tuple[str, ...]

PAYMENT_PROCESSORS = {
    "stripe",
    "shopify",
    "polar",
    "paddle",
    "apple",
    "revenuecat",
    "dub",
    "custom",
}
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    422: "unprocessable_entity",
    429: "rate_limit_exceeded",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
}


# --- actions a plan can return ---------------------------------------------------------------


@dataclass(frozen=True)
class Normal:
    """Answer as Dub would."""


@dataclass(frozen=True)
class Status:
    """Answer ``status`` with Dub's error envelope and record nothing.

    ``retry_after_in``: seconds from the moment of answering, sent as Dub does (absolute
    Unix time in milliseconds) in ``Retry-After`` and ``X-RateLimit-Reset``;
    ``retry_after`` sends a header value verbatim instead. ``marks_lead``: Dub's lead trap,
    the de-duplication marker is written before the failure, so a retry gets ``link: null``.
    """

    status: int
    retry_after_in: float | None = None
    retry_after: str | None = None
    marks_lead: bool = False
    message: str = "scripted failure"


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` before handling the request, then do ``then``."""

    seconds: float
    then: Action = field(default_factory=Normal)


@dataclass(frozen=True)
class Hold:
    """Hold the request until the test opens ``gate`` (at most 60 s), then do ``then``: Dub
    slower than anything, without the test guessing how long "slow" must be."""

    gate: threading.Event
    then: Action = field(default_factory=Normal)


@dataclass(frozen=True)
class Reset:
    """Write the start of an answer, then reset the connection (RST, SO_LINGER 0).

    ``after_processing``: Dub did the work (the conversion is recorded) and the answer was
    lost on the way; otherwise nothing was done. ``marks_lead``: the lead trap, as in Status.
    """

    after_processing: bool = True
    marks_lead: bool = False
    partial: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: applic"


Action = Normal | Status | Sleep | Hold | Reset


@dataclass(frozen=True)
class Call:
    """What a plan sees about a request before the fake answers it."""

    index: int  # 0-based order of arrival over the fake's life
    path: str
    body: Any
    key: Key | None


@dataclass
class Received:
    index: int
    path: str
    body: Any
    headers: dict[str, str]
    at: float  # time.time() on arrival
    key: Key | None
    method: str = "POST"
    query: dict[str, str] = field(default_factory=dict)
    action: str = ""  # what the fake did: recorded, deduplicated, not_recorded, status:500, reset
    answered_at: float | None = None


@dataclass(frozen=True)
class Recorded:
    key: Key
    body: Any
    at: float


def sale_key(invoice_id: str) -> Key:
    return ("sale", invoice_id)


def lead_key(customer: str, event_name: str) -> Key:
    return ("lead", customer, event_name.lower())


def _customer_id(body: dict[str, Any]) -> Any:
    for name in ("customerExternalId", "externalId", "customerId"):
        if body.get(name) not in (None, ""):
            return body[name]
    return None


def key_of(path: str, body: Any, query: dict[str, str] | None = None) -> Key | None:
    """The conversion a request is about, as Dub de-duplicates it."""
    if path == "/commissions" and query and "invoiceId" in query:
        return ("commissions", query["invoiceId"])
    if path.startswith("/commissions/"):
        return ("commission", unquote(path.removeprefix("/commissions/")))
    if path.startswith("/customers/ext_"):
        return ("customer", unquote(path.removeprefix("/customers/ext_")))
    if not isinstance(body, dict):
        return None
    if path == "/track/sale" and isinstance(body.get("invoiceId"), str):
        return sale_key(body["invoiceId"])
    if path == "/track/lead":
        customer, event = _customer_id(body), body.get("eventName")
        if isinstance(customer, str) and isinstance(event, str):
            return lead_key(customer, event)
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeDub):
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A reset or a stopped server leaves broken sockets; that is the point, not an error.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the bridge uses a pooled session
    server: _Server
    timeout = 30  # an idle keep-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def do_PATCH(self) -> None:
        self.server.fake._handle(self)

    def do_DELETE(self) -> None:
        self.server.fake._handle(self)

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def reset(self, partial: bytes) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(partial)
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        self.close_connection = True


def _error(status: int, message: str) -> dict[str, Any]:
    code = ERROR_CODES.get(status, f"http_{status}")
    return {"error": {"code": code, "message": message, "doc_url": f"https://dub.co/docs/{code}"}}


class FakeDub:
    """The fake; ``start()`` it, point the bridge at ``url``, ``stop()`` it when done."""

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        latency: float | Callable[[], float] = 0.0,
        port: int = 0,
    ):
        self.api_key = api_key
        # Time between the de-duplication check and the recording, like a real server's work.
        self.latency = latency
        self.port = port
        self.plan: Callable[[Call], Action | None] | None = None
        self.requests: list[Received] = []
        self.records: list[Recorded] = []
        self._lock = threading.Lock()
        self._queues: dict[Key, deque[Action]] = {}
        self._next: deque[Action] = deque()
        self._sales: dict[str, dict[str, Any]] = {}
        self._lead_markers: set[tuple[str, str]] = set()
        self._customers: dict[str, dict[str, Any]] = {}
        self.commissions: dict[str, dict[str, Any]] = {}
        # USD per unit of a currency, for a PATCH's saleAmount in it (Dub's FX at "today").
        self.rates: dict[str, float] = {"usd": 1.0, "eur": 1.1, "gbp": 1.25}
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0

    # --- life ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeDub:
        """Listen (again) on 127.0.0.1, on the same port when it had one."""
        assert self._server is None, "already running"
        server = _Server(("127.0.0.1", self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Dub goes down: nothing listens on the port, open connections are cut."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            self._generation += 1
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeDub:
        return self.start() if not self.running else self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # --- scripting -----------------------------------------------------------------------

    def script(self, key: Key, *actions: Action) -> None:
        """The next requests about this conversion get these actions, in order."""
        with self._lock:
            self._queues.setdefault(key, deque()).extend(actions)

    def script_next(self, *actions: Action) -> None:
        """The next requests, whatever they are about, get these actions, in order."""
        with self._lock:
            self._next.extend(actions)

    def _action_for(self, call: Call) -> Action:
        with self._lock:
            queue = self._queues.get(call.key) if call.key is not None else None
            if queue:
                return queue.popleft()
            if self._next:
                return self._next.popleft()
        planned = self.plan(call) if self.plan is not None else None
        return planned if planned is not None else Normal()

    # --- lifecycle state ---------------------------------------------------------------

    def add_commission(
        self, invoice: str, amount: int, *, status: str = "pending", type: str = "sale"
    ) -> str:
        """A partner's commission for a sale of ``amount`` USD cents; its id."""
        with self._lock:
            cid = f"cm_{len(self.commissions) + 1}"
            self.commissions[cid] = {
                "id": cid, "type": type, "amount": amount, "earnings": amount // 10,
                "currency": "usd", "status": status, "invoiceId": invoice, "quantity": 1,
            }  # fmt: skip
            return cid

    def commission(self, invoice: str) -> dict[str, Any] | None:
        with self._lock:
            found = [c for c in self.commissions.values() if c["invoiceId"] == invoice]
            return dict(found[0]) if found else None

    def add_customer(self, external_id: str, **fields: Any) -> None:
        with self._lock:
            self._customers[external_id] = {"externalId": external_id, **fields}

    def customer(self, external_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._customers.get(external_id)
            return dict(found) if found is not None else None

    def calls(self, method: str, prefix: str = "") -> list[Received]:
        """Every request with this method whose path starts with ``prefix``."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    # --- counting ------------------------------------------------------------------------

    def received_count(self, key: Key | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if key is None or r.key == key)

    def received_by_key(self) -> Counter[Key | None]:
        with self._lock:
            return Counter(r.key for r in self.requests)

    def recorded_by_key(self) -> Counter[Key]:
        with self._lock:
            return Counter(r.key for r in self.records)

    def recorded_count(self, key: Key | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.records if key is None or r.key == key)

    def recorded_sales(self) -> Counter[str]:
        return Counter({k[1]: n for k, n in self.recorded_by_key().items() if k[0] == "sale"})

    def recorded_leads(self) -> Counter[tuple[str, str]]:
        return Counter(
            {(k[1], k[2]): n for k, n in self.recorded_by_key().items() if k[0] == "lead"}
        )

    def duplicates(self) -> dict[Key, int]:
        """Conversions recorded more than once (what must never happen)."""
        return {k: n for k, n in self.recorded_by_key().items() if n > 1}

    def requests_for(self, key: Key) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.key == key]

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01
    ) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(step)
        return predicate()

    # --- serving -------------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        at = time.time()
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        split = urlsplit(handler.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        key = key_of(path, body, query)
        with self._lock:
            generation = self._generation
            received = Received(
                len(self.requests), path, body, dict(handler.headers), at, key,
                handler.command, query,
            )  # fmt: skip
            self.requests.append(received)
        action = self._action_for(Call(received.index, path, body, key))
        while isinstance(action, (Sleep, Hold)):
            if isinstance(action, Hold):
                action.gate.wait(60)
            else:
                time.sleep(action.seconds)
            action = action.then
        if self._generation != generation:  # stopped while sleeping: Dub died first
            received.action = "lost"
            handler.reset(b"")
            return
        if isinstance(action, Reset):
            if action.marks_lead:
                self._mark_lead(body)
            if action.after_processing:
                self._process(path, body, received)
            received.action = "reset"
            received.answered_at = time.time()
            handler.reset(action.partial)
            return
        if isinstance(action, Status):
            if action.marks_lead:
                self._mark_lead(body)
            headers: dict[str, str] = {}
            if action.retry_after_in is not None:
                when = str(int((time.time() + action.retry_after_in) * 1000))
                headers = {
                    "Retry-After": when,
                    "X-RateLimit-Reset": when,
                    "X-RateLimit-Limit": "1200",
                    "X-RateLimit-Remaining": "0",
                }
            elif action.retry_after is not None:
                headers = {"Retry-After": action.retry_after}
            received.action = f"status:{action.status}"
            self._send(handler, action.status, _error(action.status, action.message), headers)
            received.answered_at = time.time()
            return
        status, answer = self._process(path, body, received)
        self._send(handler, status, answer)
        received.answered_at = time.time()

    def _send(
        self,
        handler: _Handler,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        with contextlib.suppress(OSError):
            handler.send_json(status, body, headers)

    def _auth_ok(self, headers: dict[str, str]) -> bool:
        return self.api_key is None or headers.get("Authorization") == f"Bearer {self.api_key}"

    def _mark_lead(self, body: Any) -> None:
        key = key_of("/track/lead", body)
        if key is not None:
            with self._lock:
                self._lead_markers.add((key[1], key[2]))

    def _wait(self) -> None:
        seconds = self.latency() if callable(self.latency) else self.latency
        if seconds > 0:
            time.sleep(seconds)

    def _process(self, path: str, body: Any, received: Received) -> tuple[int, Any]:
        """Dub's handler: validate, de-duplicate, record; (status, answer body)."""
        if not self._auth_ok(received.headers):
            received.action = "status:401"
            return 401, _error(401, "Unauthorized: invalid API key")
        if received.method != "POST" or path.startswith(("/commissions", "/customers/")):
            return self._lifecycle(received)
        if path not in ("/track/lead", "/track/sale"):
            received.action = "status:404"
            return 404, _error(404, "no such route")
        if not isinstance(body, dict):
            received.action = "status:400"
            return 400, _error(400, "the body is not a JSON object")
        problem = _validate(path, body)
        if problem:
            received.action = "status:422"
            return 422, _error(422, problem)
        if path == "/track/lead":
            return self._lead(body, received)
        return self._sale(body, received)

    def _lead(self, body: dict[str, Any], received: Received) -> tuple[int, Any]:
        customer_id = _customer_id(body)
        marker = (customer_id, body["eventName"].lower())
        customer = {
            "name": body.get("customerName"),
            "email": body.get("customerEmail"),
            "avatar": body.get("customerAvatar"),
            "externalId": customer_id,
        }
        click = {"id": body.get("clickId") or ""}
        with self._lock:
            duplicate = marker in self._lead_markers
            self._lead_markers.add(marker)
        if duplicate:
            received.action = "deduplicated"
            return 200, {"click": click, "link": None, "customer": customer}
        self._wait()
        with self._lock:
            self._customers[customer_id] = customer
            self.records.append(Recorded(("lead", *marker), body, time.time()))
        received.action = "recorded"
        link = {
            "id": "link_fake",
            "domain": "dub.sh",
            "key": "fake",
            "url": "https://example.com",
            "shortLink": "https://dub.sh/fake",
            "programId": None,
        }
        return 200, {"click": click, "link": link, "customer": customer}

    def _sale(self, body: dict[str, Any], received: Received) -> tuple[int, Any]:
        invoice = body.get("invoiceId")
        with self._lock:
            first = self._sales.get(invoice) if invoice is not None else None
        if first is not None:
            received.action = "deduplicated"
            return 200, first
        customer_id = _customer_id(body)
        event_name = body.get("eventName", "Purchase")
        self._wait()  # not atomic, like Dub: the window where two sends are both recorded
        with self._lock:
            known = self._customers.get(customer_id)
            if body["amount"] == 0 or (known is None and not body.get("clickId")):
                received.action = "not_recorded"
                return 200, {"eventName": event_name, "customer": None, "sale": None}
            customer = known or {
                "name": body.get("customerName"),
                "email": body.get("customerEmail"),
                "avatar": body.get("customerAvatar"),
                "externalId": customer_id,
            }
            self._customers[customer_id] = customer
            answer = {
                "eventName": event_name,
                "customer": {"id": f"cus_{customer_id}", **customer},
                "sale": {
                    "amount": body["amount"],
                    "currency": body.get("currency", "usd").lower(),
                    "paymentProcessor": body.get("paymentProcessor", "custom"),
                    "invoiceId": invoice,
                    "metadata": body.get("metadata"),
                },
            }
            if invoice is not None:
                self._sales.setdefault(invoice, answer)
            key = sale_key(invoice) if invoice is not None else ("sale", f"#{received.index}")
            self.records.append(Recorded(key, body, time.time()))
        received.action = "recorded"
        return 200, answer

    def _lifecycle(self, received: Received) -> tuple[int, Any]:
        """Dub's commission and customer routes (shared/dub/README.md, lifecycle section)."""
        method, path, body, key = received.method, received.path, received.body, received.key
        route = (method, key[0] if key else path)
        status, answer = 404, _error(404, "no such route")
        with self._lock:
            if route == ("GET", "commissions"):
                assert key is not None
                found = [c for c in self.commissions.values() if c["invoiceId"] == key[1]]
                status, answer = 200, [dict(c) for c in found]
            elif route == ("PATCH", "commission"):
                assert key is not None
                status, answer = self._patch_commission(key[1], body)
            elif route in (("PATCH", "customer"), ("DELETE", "customer")):
                assert key is not None
                customer = self._customers.get(key[1])
                if customer is None:
                    status, answer = 404, _error(404, "Customer not found.")
                elif method == "DELETE":
                    del self._customers[key[1]]
                    status, answer = 200, {"id": f"cus_{key[1]}"}
                elif not isinstance(body, dict) or set(body) - _CUSTOMER_FIELDS:
                    status, answer = 422, _error(422, f"unknown fields: {body!r}")
                else:
                    customer.update(body)
                    status, answer = 200, {"id": f"cus_{key[1]}", **customer}
        received.action = "changed" if status == 200 and method != "GET" else f"status:{status}"
        if method == "GET":
            received.action = "listed"
        return status, answer

    def _patch_commission(self, cid: str, body: Any) -> tuple[int, Any]:
        commission = self.commissions.get(cid)
        if commission is None:
            return 404, _error(404, f"Commission {cid} not found.")
        if not isinstance(body, dict) or set(body) - _COMMISSION_FIELDS:
            return 422, _error(422, f"unknown fields: {body!r}")
        if commission["status"] == "paid":
            return 400, _error(
                400, f"Cannot update commission: Commission {cid} has already been paid."
            )
        status = body.get("status")
        if status is not None and status == commission["status"]:
            return 400, _error(400, f"This commission is already in the {status} status.")
        amount = body.get("saleAmount", body.get("amount"))
        modify = body.get("modifySaleAmount", body.get("modifyAmount"))
        if amount is not None or modify is not None:
            if commission["type"] != "sale":
                return 400, _error(
                    400, f"Cannot update sale amount: Commission {cid} is not a sale commission."
                )
            rate = self.rates.get(str(body.get("currency", "usd")).lower(), 1.0)
            if modify is not None:
                new = commission["amount"] + round(modify * rate)
            else:
                new = round(amount * rate)
            new = max(new, 0)
            if new == 0:
                commission["status"] = "refunded"
            else:
                commission["amount"] = new
                commission["earnings"] = new // 10
        if status is not None:
            commission["status"] = status
        self.records.append(Recorded(("commission", cid), body, time.time()))
        return 200, dict(commission)


_COMMISSION_FIELDS = frozenset(
    {"earnings", "saleAmount", "modifySaleAmount", "currency", "status", "amount", "modifyAmount"}
)
_CUSTOMER_FIELDS = frozenset(
    {"email", "name", "avatar", "externalId", "stripeCustomerId", "country"}
)


def _validate(path: str, body: dict[str, Any]) -> str | None:
    """The subset of Dub's schema a bridge bug would break; a message names the field."""
    if _customer_id(body) is None:
        return "customerExternalId: Required"
    if not isinstance(_customer_id(body), str):
        return "customerExternalId: Expected string"
    name = body.get("eventName")
    if path == "/track/lead":
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            return "eventName: Expected a string of 1 to 255 characters"
        if body.get("clickId") is not None and not isinstance(body["clickId"], str):
            return "clickId: Expected string"
        quantity = body.get("eventQuantity")
        if quantity is not None and (type(quantity) is not int or not 1 <= quantity <= 100):
            return "eventQuantity: Expected an integer from 1 to 100"
        return None
    amount = body.get("amount")
    if type(amount) is not int or not 0 <= amount <= 9007199254740991:
        return "amount: Expected an integer"
    for text in ("currency", "eventName", "paymentProcessor", "invoiceId", "clickId"):
        if text in body and not isinstance(body[text], str):
            return f"{text}: Expected string, received {type(body[text]).__name__}"
    if "paymentProcessor" in body and body["paymentProcessor"] not in PAYMENT_PROCESSORS:
        return "paymentProcessor: Invalid enum value"
    if name is not None and not 1 <= len(name) <= 255:
        return "eventName: Expected a string of 1 to 255 characters"
    return None


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[FakeDub]:
    """``with running() as dub:`` a started fake, stopped on the way out."""
    fake = FakeDub(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()

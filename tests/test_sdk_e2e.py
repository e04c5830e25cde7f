"""End to end: the real server SDKs -> the Procfile process (/v1/batch) -> a fake Dub.

analytics-python (``segment-analytics-python``, in this process, with and without
``gzip=True``), ``@segment/analytics-node`` and ``@rudderstack/rudder-sdk-node`` (through
``tests/sdk_e2e/driver.js``; packages pinned by ``tests/sdk_e2e/package-lock.json`` and
installed as ``tests/npmkit.py`` says) post track calls that become leads and sales, and an
identify. Dub fails for a while, and the first answer the SDK waits for is lost on the way
(a front that forwards the request and answers 503 instead), so the SDK sends the same batch
again: the fake Dub must still record each conversion exactly once. A wrong write key must
reach the SDK's own error callback as a 401, and nothing reach Dub.

When Node, npm or the install is missing the Node cases skip and say why; with
``BRIDGE_TEST_SDK_E2E`` set (``.ci/run`` sets it) they fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from segment.analytics import Client

from tests.helpers import npmkit
from tests.helpers.fakedub import FakeDub, Key, Status, lead_key, sale_key
from tests.helpers.procs import ProcfileWeb, clean_env, json_lines

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = REPO / "mappings"
NODE_DIR = Path(__file__).resolve().parent / "sdk_e2e"
DRIVER = NODE_DIR / "driver.js"
REQUIRED_BY = "BRIDGE_TEST_SDK_E2E"
API_KEY = "dub_sdk_e2e_key"
WRITE_KEY = "wk_sdk_e2e_0123456789"
SDKS = ("python", "python-gzip", "node", "rudderstack")
# The outbox looks for work every 30 s (bridge.service.wiring.OUTBOX_POLL_SECONDS).
OUTBOX_WAIT = 75.0


@pytest.fixture(scope="module")
def node_prefix() -> Path:
    return npmkit.node_prefix(NODE_DIR, REQUIRED_BY, "the SDK end-to-end test")


@dataclass
class Front:
    """Forwards each request to the bridge; the first ``lose`` answers are replaced by a 503
    (the bridge did the work, the answer was lost), so the SDK sends the batch again."""

    target: str
    lose: int = 0
    received: int = 0
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Front:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length")
                }
                answer = requests.post(
                    front.target + self.path, data=body, headers=headers, timeout=30
                )
                with front.lock:
                    front.received += 1
                    lost = front.lose > 0
                    front.lose -= 1 if lost else 0
                status, payload = (503, b"{}") if lost else (answer.status_code, answer.content)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Stack:
    dub: FakeDub
    web: ProcfileWeb


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The fake Dub and the Procfile's web process, with one write key and nothing else: no
    SEGMENT_SHARED_SECRET, no BRIDGE_ALLOW_UNSIGNED (a shop that sends from its backend)."""
    tmp = tmp_path_factory.mktemp("sdk-e2e")
    dub = FakeDub(api_key=API_KEY).start()
    env = clean_env(
        DUB_API_KEY=API_KEY,
        DUB_API_URL=dub.url,
        BRIDGE_DB=str(tmp / "ledger.sqlite3"),
        BRIDGE_MAPPINGS_DIR=str(MAPPINGS),
        BRIDGE_RELOAD_SECONDS="0",
        BRIDGE_WRITE_KEYS=f"shop:{WRITE_KEY}",
        BRIDGE_ALLOW_UNSIGNED="0",
    )
    web = ProcfileWeb(env, tmp)
    try:
        web.start()
        yield Stack(dub, web)
    finally:
        web.stop()
        dub.stop()


# --- the calls -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str  # track or identify
    params: dict[str, Any]  # in analytics-node's and RudderStack's spelling


def conversions(tag: str, count: int = 2) -> tuple[list[Call], list[Key]]:
    """``count`` customers, each a sign-up with a click id (a lead) and an order (a sale),
    and an identify that no mapping takes."""
    calls: list[Call] = []
    keys: list[Key] = []
    for n in range(count):
        user = f"user-{tag}-{n}"
        traits = {"email": f"{tag}-{n}@example.com", "clickId": f"cl_{tag}_{n}"}
        calls.append(
            Call(
                "track",
                {
                    "userId": user,
                    "event": "Sign Up",
                    "properties": {"plan": "pro"},
                    "context": {"traits": traits},
                },
            )
        )
        order = f"ORD-{tag}-{n}"
        calls.append(Call("track", {"userId": user, "event": "Order Completed",
                                    "properties": {"order_id": order, "revenue": 19.99, "currency": "USD"},
                                    "context": {"traits": traits}}))  # fmt: skip
        keys += [lead_key(user, "Sign Up"), sale_key(order)]
    calls.append(Call("identify", {"userId": f"user-{tag}-0", "traits": {"plan": "pro"}}))
    return calls, keys


@dataclass
class Sent:
    errors: list[str]


def send(
    sdk: str, url: str, calls: list[Call], node_prefix: Path | None, key: str = WRITE_KEY
) -> Sent:
    """Send ``calls`` through the real SDK to ``url``, flushed; what its error callbacks said."""
    if sdk.startswith("python"):
        return _send_python(url, calls, key, gzip=sdk == "python-gzip")
    assert node_prefix is not None
    job = {"sdk": "segment" if sdk == "node" else sdk, "url": url, "writeKey": key,
           "calls": [{"method": c.method, "params": c.params} for c in calls]}  # fmt: skip
    proc = subprocess.run(
        ["node", str(DRIVER)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env={**os.environ, "SDK_E2E_PREFIX": str(node_prefix)},
        timeout=120,
    )
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return Sent(json.loads(proc.stdout.splitlines()[-1])["errors"])


def _send_python(url: str, calls: list[Call], key: str, *, gzip: bool) -> Sent:
    errors: list[str] = []

    def on_error(error: Exception, batch: Any) -> None:
        errors.append(f"status {getattr(error, 'status', None)}: {error}")

    client = Client(key, host=url, gzip=gzip, on_error=on_error, max_retries=3,
                    upload_size=len(calls), upload_interval=0.2)  # fmt: skip
    for call in calls:
        p = call.params
        if call.method == "track":
            client.track(user_id=p["userId"], event=p["event"], properties=p["properties"],
                         context=p["context"])  # fmt: skip
        else:
            client.identify(user_id=p["userId"], traits=p["traits"])
    client.shutdown()
    return Sent(errors)


@pytest.fixture
def node_for(request: pytest.FixtureRequest) -> Any:
    def get(sdk: str) -> Path | None:
        return None if sdk.startswith("python") else request.getfixturevalue("node_prefix")

    return get


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("sdk", SDKS)
def test_each_conversion_reaches_dub_once_through_failures_and_sdk_retries(
    sdk: str, stack: Stack, node_for: Any
) -> None:
    """Dub failing for a while and a lost answer (the SDK sends the batch again) still make
    each lead and sale exactly one conversion at Dub; the SDK reports no error."""
    calls, keys = conversions(sdk)
    front = Front(stack.web.url, lose=1).start()
    stack.dub.script_next(Status(503), Status(503), Status(500))
    try:
        sent = send(sdk, front.url, calls, node_for(sdk))
    finally:
        front.stop()
    assert sent.errors == []
    assert front.received >= 2, "the SDK did not send the batch again"
    assert stack.dub.wait_until(lambda: all(stack.dub.recorded_count(k) == 1 for k in keys))
    assert {k: stack.dub.recorded_count(k) for k in keys} == dict.fromkeys(keys, 1)
    assert stack.dub.duplicates() == {}


@pytest.mark.parametrize("sdk", SDKS)
def test_a_wrong_write_key_is_a_401_in_the_sdks_error_callback(
    sdk: str, stack: Stack, node_for: Any
) -> None:
    """A write key the bridge does not know reaches the SDK's error callback as 401, and
    nothing is sent to Dub."""
    calls, keys = conversions(f"wrong-{sdk}", count=1)
    sent = send(sdk, stack.web.url, calls, node_for(sdk), key="not-the-key")
    assert sent.errors and all("401" in error for error in sent.errors), sent.errors
    assert all(stack.dub.received_count(k) == 0 for k in keys)


def test_dub_down_past_the_budget_is_queued_and_the_outbox_sends_it(stack: Stack) -> None:
    """Dub answering 503 with a Retry-After past the time budget: analytics-python gets its
    200 at once (nothing for it to retry), and the bridge's outbox sends the sale later,
    exactly once."""
    calls, keys = conversions("outbox", count=1)
    lead, sale = keys
    stack.dub.script(sale, Status(503, retry_after_in=60))
    sent = send("python", stack.web.url, calls, None)
    assert sent.errors == []
    assert stack.dub.recorded_count(lead) == 1
    assert stack.dub.wait_until(lambda: stack.dub.recorded_count(sale) == 1, timeout=OUTBOX_WAIT)
    assert stack.dub.received_count(sale) == 2 and stack.dub.duplicates() == {}
    lines = [line for line in json_lines(stack.web) if line.get("mapping") == "order-sale"]
    outcomes = [line["outcome"] for line in lines if line.get("event") == "Order Completed"
                and line.get("source") == "shop"]  # fmt: skip
    assert "queued" in outcomes


def test_with_only_write_keys_the_webhook_is_off(stack: Stack) -> None:
    """The SDK-only deployment started (the master's start-up check passed) and POST
    /segment is off: an unsigned event is 404, never sent."""
    event = {"type": "track", "event": "Order Completed", "messageId": "hook-1",
             "userId": "u-hook", "properties": {"order_id": "ORD-hook", "revenue": 5}}  # fmt: skip
    assert requests.post(stack.web.url + "/segment", json=event, timeout=10).status_code == 404
    assert stack.dub.received_count(sale_key("ORD-hook")) == 0

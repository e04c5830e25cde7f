"""POST /segment through Flask's test client, with real signatures and Dub mocked at HTTP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import responses

from bridge.core.clock import SYSTEM
from bridge.core.outcomes import Outcome
from bridge.core.results import Result
from bridge.core.settings import Settings
from bridge.web.answers import MAX_ANSWER_BYTES, summarize
from bridge.web.app import create_app
from bridge.web.arrival import handling
from bridge.web.signing import first_element_texts, sign, verify
from bridge.web.webhook import request_started
from tests.conftest import (
    DUB,
    SECRET,
    body_of,
    lead_ok,
    make_settings,
    order,
    sale_ok,
    signed_headers,
    signup,
)
from tests.helpers.fakes import ManualClock


@pytest.fixture
def secured(tmp_path: Path) -> Any:
    app = create_app(make_settings(tmp_path, segment_shared_secret=SECRET))
    yield app.test_client()
    app.extensions["bridge"].close()


def post(client: Any, data: Any, **kwargs: Any) -> Any:
    raw = data if isinstance(data, bytes) else body_of(data)
    return client.post(
        "/segment",
        data=raw,
        headers=kwargs.pop("headers", None) or {"Content-Type": "application/json"},
        **kwargs,
    )


# --- forms of body ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["object", "array", "batch"])
def test_single_array_and_batch_bodies(
    client: Any, dub: responses.RequestsMock, shape: str
) -> None:
    """A single event, a JSON array and {"batch": [...]} are all accepted."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    events = [signup(), order()]
    data: Any = {"object": events[1], "array": events, "batch": {"batch": events}}[shape]
    response = post(client, data)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["counts"] == {"delivered": 1 if shape == "object" else 2}
    assert answer["results"] == [] and answer["omitted"] == 0


def test_answer_lists_only_results_needing_attention(
    client: Any, dub: responses.RequestsMock
) -> None:
    """The answer counts every result and lists only those needing a person, in short form."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    answer = post(client, [order("ok"), order("bad", revenue=-1)]).get_json()
    assert answer["counts"] == {"delivered": 1, "invalid": 1}
    (entry,) = answer["results"]
    assert set(entry) == {"messageId", "mapping", "outcome", "reason"}
    assert entry["messageId"] == "bad" and entry["mapping"] == "order-sale"
    assert entry["outcome"] == "invalid" and "negative" in entry["reason"]
    assert answer["omitted"] == 0


def test_answer_of_a_big_batch_stays_under_8_kib(client: Any, dub: responses.RequestsMock) -> None:
    """A batch of 1,000 results needing attention still gets an answer under 8 KiB."""
    events = [order(f"neg-{i}", revenue=-1, email=f"buyer{i}@example.com") for i in range(1000)]
    response = post(client, events)
    assert response.status_code == 200
    assert len(response.data) < 8 * 1024
    answer = response.get_json()
    assert answer["counts"] == {"invalid": 1000}
    assert len(answer["results"]) + answer["omitted"] == 1000
    assert answer["results"][0]["messageId"] == "neg-0"  # in input order
    assert len(dub.calls) == 0


def test_lone_surrogate_costs_only_its_own_event_a_warning(
    client: Any, dub: responses.RequestsMock
) -> None:
    """JavaScript's lone-surrogate escape is replaced by U+FFFD; the batch is not refused."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    raw = (
        b"["
        + body_of(signup("l-1"))
        + b","
        + body_of(order("s-1", coupon="COUPON")).replace(b"COUPON", b"ab\\ud800cd")
        + b","
        + body_of(order("s-2"))
        + b"]"
    )
    response = post(client, raw)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["counts"] == {"delivered": 3}
    sent = [json.loads(call.request.body) for call in dub.calls]
    assert sent[1]["metadata"]["coupon"] == "ab\ufffdcd"
    assert "coupon" not in json.dumps(sent[0]) and "\ufffd" not in json.dumps(sent[2])


def test_invalid_utf8_byte_costs_only_its_own_event(
    client: Any, dub: responses.RequestsMock
) -> None:
    """A byte that is not UTF-8 is replaced by U+FFFD in its own text; the batch goes through."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    raw = body_of([order("a", coupon="X"), order("b")]).replace(b'"X"', b'"\xff"')
    response = post(client, raw)
    assert response.status_code == 200
    assert response.get_json()["counts"] == {"delivered": 2}


def test_organic_and_unmatched_events_cost_nothing(
    client: Any, dub: responses.RequestsMock
) -> None:
    """Skipped events answer 200 and make no Dub call."""
    events = [
        signup(click=None),
        {"type": "page", "messageId": "p"},
        {"type": "track", "event": "Other", "messageId": "o"},
    ]
    response = post(client, events)
    assert response.status_code == 200
    assert response.get_json() == {"counts": {"skipped": 3}, "results": [], "omitted": 0}
    assert len(dub.calls) == 0


def test_invalid_event_costs_no_other_event(client: Any, dub: responses.RequestsMock) -> None:
    """One invalid event is reported; the good ones in the batch are still delivered."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    events = [order("a", revenue=-1), "junk", order("b")]
    response = post(client, events)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["counts"] == {"invalid": 2, "delivered": 1}
    assert [r["outcome"] for r in answer["results"]] == ["invalid", "invalid"]
    assert len(dub.calls) == 1


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "no_events"),
        (b"{not json", "invalid_json"),
        (b"[]", "no_events"),
        (b'{"batch": {}}', "no_events"),
        (b"42", "no_events"),
        (b'"x"', "no_events"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_bodies_without_events_are_400(client: Any, raw: bytes, code: str) -> None:
    """Non-JSON, empty and event-less bodies get a 400 with a JSON error."""
    response = post(client, raw)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_oversized_body_is_413(tmp_path: Path) -> None:
    """A body past BRIDGE_MAX_BODY_BYTES is refused with 413 and a JSON error."""
    app = create_app(make_settings(tmp_path, max_body_bytes=2048))
    response = post(app.test_client(), [order(str(i)) for i in range(50)])
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    app.extensions["bridge"].close()


# --- Dub's answers and our status codes ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome", "http"),
    [
        (200, "delivered", 200),
        (400, "rejected", 200),
        (401, "rejected", 200),
        (403, "rejected", 200),
        (422, "rejected", 200),
        (408, "failed", 503),
        (429, "queued", 200),  # Dub's limit: the outbox sends it at Dub's rate
        (500, "failed", 503),
        (503, "failed", 503),
    ],
)
def test_status_code_for_each_dub_answer(
    client: Any, dub: responses.RequestsMock, status: int, outcome: str, http: int
) -> None:
    """Delivered or finally rejected: 200. Dub unavailable (408/5xx): 503 so Segment retries.
    Dub's rate limit (429): queued for the outbox, 200."""
    dub.post(
        f"{DUB}/track/sale",
        status=status,
        json=sale_ok() if status == 200 else {"error": {"code": "x", "message": "m"}},
    )
    response = post(client, order())
    assert response.status_code == http
    answer = response.get_json()
    assert answer["counts"] == {outcome: 1}
    if outcome != "delivered":
        (result,) = answer["results"]
        why = "Dub's rate limit" if outcome == "queued" else f"Dub answered {status}"
        assert result["outcome"] == outcome and why in result["reason"]
    if http == 503:
        assert int(response.headers["Retry-After"]) >= 1
        assert response.get_json()["error"]["code"] == "dub_unavailable"


def test_unreachable_dub_is_503(client: Any, dub: responses.RequestsMock) -> None:
    """Dub unreachable: 503 with Retry-After."""
    dub.post(f"{DUB}/track/sale", body=requests.ConnectionError("refused"))
    response = post(client, order())
    assert response.status_code == 503 and "Retry-After" in response.headers


@pytest.mark.slow  # a real clock: the deadline itself is under test
def test_answers_within_budget_when_dub_hangs(tmp_path: Path, dub: responses.RequestsMock) -> None:
    """When Dub hangs, the webhook answers 503 at its deadline while the call is still hanging."""
    release = threading.Event()
    hanging = threading.Event()

    def hang(_: Any) -> tuple[int, dict[str, str], str]:
        hanging.set()
        assert release.wait(60)
        return 200, {}, json.dumps(sale_ok())

    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=hang)
    # A real clock and a short budget: the deadline itself is what this test is about.
    app = create_app(make_settings(tmp_path, deadline_seconds=0.5))
    response = post(app.test_client(), order())
    release.set()  # Dub answers only now, after the webhook answered
    assert hanging.wait(30)  # the call was made (in flight, in the background)
    app.extensions["bridge"].close()
    assert response.status_code == 503
    assert response.get_json()["results"][0]["outcome"] == "pending"
    assert response.get_json()["counts"] == {"pending": 1}


# --- signatures ---------------------------------------------------------------------------


def test_signed_single_event(secured: Any, dub: responses.RequestsMock) -> None:
    """A body signed with the shared secret is accepted."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    raw = body_of(order())
    assert post(secured, raw, headers=signed_headers(raw)).status_code == 200


def test_batch_signed_on_first_element(secured: Any, dub: responses.RequestsMock) -> None:
    """An array signed as Segment's Actions batching does (first element only) is accepted."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    events = [order("a"), order("b")]
    raw = json.dumps(events, separators=(",", ":")).encode()
    first = json.dumps(events[0], separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Signature": sign(first, SECRET)}
    assert post(secured, raw, headers=headers).status_code == 200


def test_batch_signed_on_whole_body(secured: Any, dub: responses.RequestsMock) -> None:
    """An array signed over the whole body is accepted too."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    raw = body_of([order("a"), order("b")])
    assert post(secured, raw, headers=signed_headers(raw)).status_code == 200


@pytest.mark.parametrize(
    "signature", [None, "", "deadbeef", sign(b"other body", SECRET), sign(b"x", "wrong-secret")]
)
def test_bad_signatures_are_401(
    secured: Any, dub: responses.RequestsMock, signature: str | None
) -> None:
    """Missing or wrong signatures get a generic 401 and nothing is sent."""
    raw = body_of(order())
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Signature"] = signature
    response = post(secured, raw, headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"error": {"code": "unauthorized", "message": "unauthorized"}}
    assert len(dub.calls) == 0


def test_batch_signature_of_another_first_element_fails(secured: Any) -> None:
    """Signing the first element of a different batch does not authorise this one."""
    raw = body_of([order("a"), order("b")])
    headers = {"Content-Type": "application/json", "X-Signature": sign(body_of(order("z")), SECRET)}
    assert post(secured, raw, headers=headers).status_code == 401


def test_signature_checked_before_parsing(secured: Any) -> None:
    """An unsigned body that is not JSON is 401, not 400: nothing is parsed before the check."""
    assert post(secured, b"{not json").status_code == 401


def test_first_element_texts() -> None:
    """The first element is found as sent, and as compact JSON when the sender spaced it."""
    assert first_element_texts(b'[{"a":1},{"b":2}]') == [b'{"a":1}']
    assert first_element_texts(b' [ {"a": 1} , 2]') == [b'{"a": 1}', b'{"a":1}']
    assert first_element_texts(b'{"a":1}') == []
    assert first_element_texts(b"[{broken") == []
    assert verify(b"[1]", sign(b"1", "k"), "k").ok and not verify(b"[1]", None, "k").ok


# --- health -------------------------------------------------------------------------------


def test_healthz(client: Any) -> None:
    """GET /healthz says the service is up, how many mappings and which version."""
    data = client.get("/healthz").get_json()
    assert data["status"] == "ok" and data["mappings"] == 2
    assert len(data["version"]) == 12 and data["lastError"] is None


def test_unknown_route_and_method_are_json(client: Any) -> None:
    """Every HTTP error, even a 404 or 405, has the one JSON error shape."""
    assert client.get("/nope").get_json()["error"]["code"] == "not_found"
    response = client.get("/segment")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_answers_are_plain_json_for_the_fast_writer() -> None:
    """An answer holds only types orjson writes directly (text keys, no enum keys), so no
    answer takes the standard library's slow path."""
    results = [
        Result("m1", outcome=Outcome.SKIPPED),
        Result("m2", "E", "s", "sale", Outcome.FAILED),
    ]
    body = summarize(results, {"error": {"code": "x", "message": "y"}})
    assert orjson.loads(orjson.dumps(body))["counts"] == {"skipped": 1, "failed": 1}


def test_head_facts_read_what_the_worker_buffered() -> None:
    """A request refused before it was read whole still yields its method, path (no query)
    and X-Request-Id, also from a head cut short or not HTTP at all."""
    from bridge.web.worker import head_facts

    head = b"POST /segment?x=1 HTTP/1.1\r\nHost: b\r\nx-request-ID:  rid-7 \r\n\r\n{"
    assert head_facts(head) == ("POST", "/segment", "rid-7")
    assert head_facts(b"POST /segment HTTP/1.1\r\nX-Request-Id: r") == ("POST", "/segment", "r")
    twice = b"POST /segment HTTP/1.1\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n"
    assert head_facts(twice)[2] == "a,b"  # as gunicorn joins them: no longer a token
    assert head_facts(b"\xff\x00garbage") == (None, None, "")
    assert head_facts(b"") == (None, None, "")


def test_a_request_id_is_a_plain_token_or_a_new_one() -> None:
    """A client's X-Request-Id is kept only when it is a plain token (no trailing newline, no
    list of two); anything else gets a new id."""
    from bridge.web.requests import make_request_id

    assert make_request_id("req-42.a:b_c") == "req-42.a:b_c"
    for odd in ("req-42\n", "a,b", "a b", "", "x" * 129, "é"):
        made = make_request_id(odd)
        assert made != odd and len(made) == 32 and int(made, 16) >= 0


def test_a_mixed_size_batch_answer_lists_a_prefix() -> None:
    """Entries of mixed sizes: the answer lists results in input order until one does not
    fit, then omits that one and every later one, small ones included, and stays small."""
    sizes = [20, 900, 15, 1800, 10, 3000, 12, 2500, 8, 40, 5, 7]
    results = [
        Result(f"m{i}-" + "x" * size, "E", "map", "lead", Outcome.INVALID, reason="bad")
        for i, size in enumerate(sizes)
    ]
    answer = summarize(results)
    listed = [entry["messageId"] for entry in answer["results"]]
    assert listed == [r.message_id for r in results[: len(listed)]]
    assert 0 < len(listed) < len(sizes)
    assert answer["omitted"] == len(sizes) - len(listed)
    assert len(orjson.dumps(answer)) <= MAX_ANSWER_BYTES
    # The first left out is one that would not fit; a smaller one after it is left out too.
    first_out = results[len(listed)]
    assert len(first_out.message_id or "") > 100
    assert any(len(r.message_id or "") < 50 for r in results[len(listed) :])


# --- the time budget ---------------------------------------------------------------------


def test_the_budget_counts_the_wait_for_a_thread(
    settings: Settings, dub: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that began to arrive longer ago than its budget (it waited for a free
    thread while a burst kept them busy) makes no call: its events are queued and it is
    answered at once, within Segment's timeout, instead of spending a budget of its own."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    app = create_app(settings)  # the system's clock, as the worker's arrival is
    client = app.test_client()
    try:
        monkeypatch.setattr(handling, "arrived", time.monotonic() - 10.0, raising=False)
        answer = post(client, [order("waited")])
        assert answer.status_code == 200
        assert answer.get_json()["counts"] == {"queued": 1}
        assert len(dub.calls) == 0
        monkeypatch.setattr(handling, "arrived", None)
        assert post(client, [order("now")]).get_json()["counts"] == {"delivered": 1}
    finally:
        app.extensions["bridge"].close()


def test_the_budget_starts_at_arrival_on_the_system_clock_only() -> None:
    """The arrival the worker saw starts the budget; a service on another clock (tests)
    and a request outside the worker start it now."""
    clock = ManualClock()
    handling.arrived = 5.0
    try:
        assert request_started(SYSTEM) == 5.0
        assert request_started(clock) == clock.monotonic()
        handling.arrived = time.monotonic() + 60  # never later than now
        assert request_started(SYSTEM) <= time.monotonic()
    finally:
        handling.arrived = None
    assert abs(request_started(SYSTEM) - time.monotonic()) < 60

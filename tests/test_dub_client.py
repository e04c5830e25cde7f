"""The Dub client and decide(): what goes on the wire, and what every kind of answer means."""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import pytest
import requests
import responses
import urllib3
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery.decide import classify, may_have_reached
from bridge.delivery.retry import MAX_RETRY_AFTER, parse_retry_after
from bridge.dub.client import DubAnswer, DubClient
from bridge.dub.endpoints import LEAD as LEAD_ENDPOINT
from bridge.dub.endpoints import SALE as SALE_ENDPOINT
from tests.conftest import DUB, lead_ok, sale_ok

LEAD = {"clickId": "c", "eventName": "Sign Up", "customerExternalId": "u", "mode": "wait"}
SALE = {"customerExternalId": "u", "amount": 1999, "currency": "usd"}


@pytest.fixture
def dub_client() -> DubClient:
    return DubClient(DUB, "dub_secret_key", read_timeout=2.0)


def test_request_on_the_wire(dub: responses.RequestsMock, dub_client: DubClient) -> None:
    """Bearer key, JSON body as built, customerExternalId (never externalId), no nulls."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    answer = dub_client.send(SALE_ENDPOINT, SALE)
    assert classify(SALE_ENDPOINT, answer) == "delivered" and answer.status == 200
    sent = dub.calls[0].request
    assert sent.headers["Authorization"] == "Bearer dub_secret_key"
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.body) == SALE
    assert "externalId" not in json.loads(sent.body)


def test_connection_reuse(dub_client: DubClient) -> None:
    """One pooled session serves every call; no retries hide inside the adapter."""
    adapter = dub_client.session.get_adapter(DUB)
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    assert adapter.max_retries.total == 0


def test_key_not_in_repr(dub_client: DubClient) -> None:
    """The client never shows the API key when printed."""
    assert "dub_secret_key" not in repr(dub_client)


def test_lead_link_null_is_deduplicated(dub: responses.RequestsMock, dub_client: DubClient) -> None:
    """A 200 lead with link: null is 'deduplicated', not success."""
    dub.post(f"{DUB}/track/lead", json=lead_ok() | {"link": None})
    assert classify(LEAD_ENDPOINT, dub_client.send(LEAD_ENDPOINT, LEAD)) == "deduplicated"


def test_sale_null_is_not_recorded(dub: responses.RequestsMock, dub_client: DubClient) -> None:
    """A 200 sale with sale: null is 'not_recorded', not success."""
    dub.post(f"{DUB}/track/sale", json={"eventName": "x", "customer": None, "sale": None})
    assert classify(SALE_ENDPOINT, dub_client.send(SALE_ENDPOINT, SALE)) == "not_recorded"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, "rejected"),
        (401, "rejected"),
        (403, "rejected"),
        (404, "rejected"),
        (422, "rejected"),
        (409, "rejected"),
        (408, "failed"),
        (429, "failed"),
        (500, "failed"),
        (502, "failed"),
        (503, "failed"),
    ],
)
def test_status_classes(
    dub: responses.RequestsMock, dub_client: DubClient, status: int, outcome: str
) -> None:
    """4xx is final (rejected) except 408/429; 5xx is transient (failed); the envelope is kept."""
    dub.post(
        f"{DUB}/track/sale",
        status=status,
        json={
            "error": {
                "code": "some_code",
                "message": "amount: Expected integer",
                "doc_url": "https://dub.co/docs",
            }
        },
    )
    answer = dub_client.send(SALE_ENDPOINT, SALE)
    assert (classify(SALE_ENDPOINT, answer), answer.status) == (outcome, status)
    assert answer.error == {"code": "some_code", "message": "amount: Expected integer"}


def test_non_json_error_body(dub: responses.RequestsMock, dub_client: DubClient) -> None:
    """A plain-text platform error is reported, not a crash."""
    dub.post(f"{DUB}/track/sale", status=502, body="<html>Bad gateway</html>")
    answer = dub_client.send(SALE_ENDPOINT, SALE)
    assert classify(SALE_ENDPOINT, answer) == "failed"
    assert answer.error == {"code": "http_502", "message": "<html>Bad gateway</html>"}


def test_non_json_success_body(dub: responses.RequestsMock, dub_client: DubClient) -> None:
    """A 200 without JSON counts as delivered: Dub took it, whatever it wrote back."""
    dub.post(f"{DUB}/track/sale", status=200, body="OK")
    answer = dub_client.send(SALE_ENDPOINT, SALE)
    assert classify(SALE_ENDPOINT, answer) == "delivered" and answer.body is None


REFUSED = requests.ConnectionError(
    urllib3.exceptions.MaxRetryError(
        None,
        "/track/lead",
        urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
    )
)
RESET = requests.ConnectionError(
    urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
)


@pytest.mark.parametrize(
    ("exc", "code", "reached"),
    [
        (requests.ConnectTimeout("slow"), "unreachable", False),
        (requests.ReadTimeout("slow"), "timeout", True),
        (REFUSED, "unreachable", False),
        (RESET, "connection_lost", True),
        (requests.exceptions.ChunkedEncodingError("cut"), "request_error", True),
    ],
)
def test_network_trouble_is_transient(
    dub: responses.RequestsMock, dub_client: DubClient, exc: Exception, code: str, reached: bool
) -> None:
    """Unreachable, timed out or cut off: 'failed', and whether Dub may have acted on it."""
    dub.post(f"{DUB}/track/lead", body=exc)
    answer = dub_client.send(LEAD_ENDPOINT, LEAD)
    assert (classify(LEAD_ENDPOINT, answer), answer.status, answer.failure) == (
        "failed",
        None,
        code,
    )
    assert answer.error is not None and answer.error["code"] == code
    assert may_have_reached(answer) is reached


def test_retry_after_on_429(dub: responses.RequestsMock, dub_client: DubClient) -> None:
    """Dub's millisecond Retry-After on a 429 is kept and read as seconds to wait."""
    at_ms = int((time.time() + 7) * 1000)
    dub.post(
        f"{DUB}/track/sale",
        status=429,
        headers={"Retry-After": str(at_ms)},
        json={"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
    )
    answer = dub_client.send(SALE_ENDPOINT, SALE)
    assert classify(SALE_ENDPOINT, answer) == "failed" and answer.retry_after == str(at_ms)
    wait = parse_retry_after(answer.retry_after, at_ms / 1000 - 7)
    assert wait == pytest.approx(7.0)


def test_retry_after_forms() -> None:
    """Delta seconds, HTTP dates, ms and s epoch times are all read; junk is None."""
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(str(int((now + 30) * 1000)), now) == pytest.approx(30)
    assert parse_retry_after(str(int(now + 45)), now) == pytest.approx(45)
    assert parse_retry_after(formatdate(now + 60, usegmt=True), now) == pytest.approx(60)
    assert parse_retry_after(str(int((now - 5) * 1000)), now) == 0  # already past
    assert parse_retry_after("99999", now) == MAX_RETRY_AFTER  # clamped
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None


@given(st.floats(min_value=0, max_value=86_400 * 30))
def test_retry_after_ms_is_never_read_as_seconds(ahead: float) -> None:
    """However far ahead Dub's millisecond time is, the wait is that far, clamped."""
    now = 1_800_000_000.0
    wait = parse_retry_after(str(int((now + ahead) * 1000)), now)
    assert wait is not None and 0 <= wait <= MAX_RETRY_AFTER
    assert wait == pytest.approx(min(ahead, MAX_RETRY_AFTER), abs=0.002)


def test_5xx_may_have_reached_dub_but_4xx_did_not() -> None:
    """A 5xx may have been acted on (Dub's lead trap); a final 4xx or 429 was not."""
    assert may_have_reached(DubAnswer(status=500)) and may_have_reached(DubAnswer(status=503))
    assert not may_have_reached(DubAnswer(status=429)) and not may_have_reached(
        DubAnswer(status=422)
    )


def test_proxies_come_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTPS_PROXY set when the client is made is used; the environment is not read per call."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    client = DubClient("https://api.dub.co", "k")
    assert client.session.proxies == {"https": "http://proxy.internal:3128"}
    assert client.session.trust_env is False
    monkeypatch.setenv("NO_PROXY", "api.dub.co")
    assert DubClient("https://api.dub.co", "k").session.proxies == {}


def test_the_environments_proxy_carries_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call goes out through the proxy read when the client was made."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    client = DubClient("https://api.dub.co", "k")
    seen: list[object] = []

    def send(self: object, request: object, **kwargs: object) -> object:
        seen.append(kwargs["proxies"])
        raise requests.ConnectionError("no network in tests")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    answer = client.send(SALE_ENDPOINT, SALE)
    assert answer.status is None and seen == [{"https": "http://proxy.internal:3128"}]


def test_a_redirect_is_an_answer_not_a_second_call(
    dub: responses.RequestsMock, dub_client: DubClient
) -> None:
    """Dub's API does not redirect: a 307 (a wrong DUB_API_URL) is kept as Dub's answer,
    rejected, and the call is not repeated elsewhere with the key."""
    dub.post(f"{DUB}/track/sale", status=307, headers={"Location": "https://elsewhere.test/x"})
    dub.post("https://elsewhere.test/x", json=sale_ok())
    answer = dub_client.send(SALE_ENDPOINT, SALE)
    assert answer.status == 307 and classify(SALE_ENDPOINT, answer) == "rejected"
    assert [c.request.url for c in dub.calls] == [f"{DUB}/track/sale"]
    assert answer.error is not None and "https://elsewhere.test/x" in answer.error["message"]
    assert "DUB_API_URL" in answer.error["message"]


def test_no_cookie_is_kept_or_sent(dub: responses.RequestsMock, dub_client: DubClient) -> None:
    """A cookie Dub (or a proxy before it) sets is neither kept nor sent with a later call."""
    dub.post(f"{DUB}/track/sale", json=sale_ok(), headers={"Set-Cookie": "seen=1; Path=/"})
    dub_client.send(SALE_ENDPOINT, SALE)
    dub_client.send(SALE_ENDPOINT, SALE)
    assert len(dub_client.session.cookies) == 0
    assert "Cookie" not in dub.calls[1].request.headers


def test_every_call_carries_the_clients_headers(
    dub: responses.RequestsMock, dub_client: DubClient
) -> None:
    """A call's headers are the client's own (its name and version, JSON both ways)."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub_client.send(LEAD_ENDPOINT, LEAD)
    sent = dub.calls[0].request.headers
    assert sent["User-Agent"].startswith("segment-dub-bridge/")
    assert (sent["Accept"], sent["Content-Type"]) == ("application/json", "application/json")

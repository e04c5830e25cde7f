"""Segment's HTTP API for server SDKs (/v1/*) and RudderStack's webhook, in process.

Dub is mocked at HTTP and time is a manual clock; the real SDKs over real HTTP are in
``tests/test_sdk_e2e.py``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import responses
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bridge.core.errors import LedgerError, SettingsError
from bridge.core.logs import JSONFormatter
from bridge.core.outcomes import State
from bridge.core.settings import Settings
from bridge.ledger.base import Ledger
from bridge.service.startup import check
from bridge.web.app import create_app
from bridge.web.sdk import BATCH_LIMIT, MESSAGE_LIMIT, derived_message_id, normalize
from tests.conftest import DUB, body_of, lead_ok, make_settings, order, sale_ok, signup
from tests.helpers.fakes import ManualClock

KEY = "wk_shop_123"
TOKEN = "rs-token-456"


def basic(key: str) -> dict[str, str]:
    """HTTP Basic as Segment's SDKs send it: the write key as user, an empty password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.fixture
def app(tmp_path: Path, clock: ManualClock) -> Any:
    # Unsigned POST /segment too, for the tests that send the same event both ways.
    settings = make_settings(
        tmp_path,
        write_keys=f"shop:{KEY},other_key",
        rudderstack_token=TOKEN,
        allow_unsigned=True,
    )
    made = create_app(settings, clock=clock)
    yield made
    made.extensions["bridge"].close()


def post(client: Any, path: str, data: Any, headers: dict[str, str] | None = None) -> Any:
    raw = data if isinstance(data, bytes) else body_of(data)
    return client.post(
        path, data=raw, headers={"Content-Type": "application/json", **(headers or {})}
    )


def ledger_of(app: Any) -> Ledger:
    ledger = app.extensions["bridge"].ledger
    assert ledger is not None
    return ledger


def sdk_batch(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"batch": list(messages), "sentAt": "2026-12-03T09:00:00.000Z", **extra}


# --- who may post --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track", "/v1/identify", "/v1/alias"])
def test_v1_is_404_without_write_keys(tmp_path: Path, path: str) -> None:
    """With BRIDGE_WRITE_KEYS unset, the /v1 endpoints do not exist."""
    made = create_app(make_settings(tmp_path))
    try:
        response = post(made.test_client(), path, sdk_batch(order()), basic(KEY))
        assert response.status_code == 404
    finally:
        made.extensions["bridge"].close()


def test_rudderstack_is_404_without_a_token(tmp_path: Path) -> None:
    """With BRIDGE_RUDDERSTACK_TOKEN unset, POST /rudderstack does not exist."""
    made = create_app(make_settings(tmp_path))
    try:
        response = post(made.test_client(), "/rudderstack", order(), {"X-Bridge-Token": "x"})
        assert response.status_code == 404
    finally:
        made.extensions["bridge"].close()


@pytest.mark.parametrize(
    "headers",
    [{}, basic("wrong"), basic(""), {"Authorization": f"Bearer {KEY}"}],
    ids=["none", "unknown", "empty", "bearer"],
)
def test_missing_or_unknown_write_key_is_401(
    client: Any, dub: responses.RequestsMock, headers: dict[str, str]
) -> None:
    """No write key, or one the bridge does not know, is 401 and nothing reaches Dub."""
    response = post(client, "/v1/batch", sdk_batch(order()), headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert KEY not in response.get_data(as_text=True)
    assert len(dub.calls) == 0


def test_an_unknown_header_key_is_refused_before_the_body_is_read(client: Any) -> None:
    """A wrong key in the header is 401 even for a body that is not JSON or not gzip."""
    assert post(client, "/v1/batch", b"{not json", basic("wrong")).status_code == 401
    bad_gzip = {**basic("wrong"), "Content-Encoding": "gzip"}
    assert post(client, "/v1/batch", b"not gzip at all", bad_gzip).status_code == 401


def test_write_key_in_the_body_is_accepted_and_never_kept(
    app: Any, client: Any, dub: responses.RequestsMock
) -> None:
    """`writeKey` in the body authenticates; it is stripped before anything is stored."""
    dub.post(f"{DUB}/track/sale", status=503)
    response = post(client, "/v1/track", {**order("wk-1"), "writeKey": KEY})
    assert response.status_code == 200, response.get_data(as_text=True)
    row = ledger_of(app).get("wk-1", "order-sale")
    assert row is not None and row.payload is not None
    assert "writeKey" not in row.payload
    assert KEY not in json.dumps(row.payload)


def test_wrong_write_key_in_the_body_is_401(client: Any, dub: responses.RequestsMock) -> None:
    """An unknown `writeKey` in the body is 401."""
    assert post(client, "/v1/track", {**order(), "writeKey": "nope"}).status_code == 401
    assert len(dub.calls) == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-Bridge-Token": "wrong"}, basic(TOKEN)],
    ids=["none", "wrong-bearer", "wrong-header", "basic"],
)
def test_rudderstack_without_its_token_is_401(
    client: Any, dub: responses.RequestsMock, headers: dict[str, str]
) -> None:
    """POST /rudderstack wants `Bearer <token>` or `X-Bridge-Token`; anything else is 401."""
    assert post(client, "/rudderstack", order(), headers).status_code == 401
    assert len(dub.calls) == 0


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {TOKEN}"}, {"X-Bridge-Token": TOKEN}]
)
def test_rudderstack_event_becomes_a_sale(
    client: Any, dub: responses.RequestsMock, headers: dict[str, str]
) -> None:
    """One RudderStack event (its `channel` and all) runs through the mappings to Dub."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    response = post(client, "/rudderstack", {**order("rs-1"), "channel": "server"}, headers)
    assert response.status_code == 200 and response.get_json() == {"success": True}
    assert len(dub.calls) == 1


@pytest.mark.parametrize(
    "value",
    ["shop:", "bad name:k", "a:k,b:k", ",", " : "],
    ids=["no-key", "name", "twice", "empty", "blank"],
)
def test_bad_write_keys_setting_fails_naming_the_variable(value: str) -> None:
    """A malformed BRIDGE_WRITE_KEYS fails at start-up, named, without echoing a key."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"BRIDGE_WRITE_KEYS": value, "BRIDGE_ALLOW_UNSIGNED": "1"})
    assert "BRIDGE_WRITE_KEYS" in caught.value.message
    assert "(hidden)" in caught.value.message


def test_write_keys_are_named() -> None:
    """`name:key` entries are recorded under their name, a bare key under `sdk`."""
    settings = Settings.from_env({"BRIDGE_WRITE_KEYS": "shop:a1, b2 ,web:c:3"})
    assert settings.write_key_names == {"a1": "shop", "b2": "sdk", "c:3": "web"}


# --- what comes in -------------------------------------------------------------------------


def test_batch_of_lead_sale_and_identify(client: Any, dub: responses.RequestsMock) -> None:
    """A batch as the SDKs send it: the lead and the sale go to Dub, identify is skipped."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    identify = {"type": "identify", "messageId": "id-1", "userId": "user_1", "traits": {}}
    response = post(client, "/v1/batch", sdk_batch(signup(), order(), identify), basic(KEY))
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    assert [c.request.url.rsplit("/", 1)[1] for c in dub.calls] == ["lead", "sale"]


def test_the_path_gives_a_single_calls_type(client: Any, dub: responses.RequestsMock) -> None:
    """`/v1/track` makes its message a track whatever its body says; `/v1/page` a page."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    message = {**order("t-1"), "type": "page"}
    assert post(client, "/v1/track", message, basic(KEY)).status_code == 200
    assert len(dub.calls) == 1
    assert (
        post(client, "/v1/page", {**order("t-2"), "type": "track"}, basic(KEY)).status_code == 200
    )
    assert len(dub.calls) == 1  # a page is no order: no trigger sees it


def test_an_sdk_retry_and_the_webhook_are_one_conversion(
    client: Any, dub: responses.RequestsMock
) -> None:
    """The messageId is the key across every way in: the SDK's retry and the same event
    through POST /segment are duplicates, Dub gets the sale once."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    assert post(client, "/v1/batch", sdk_batch(order("same")), basic(KEY)).status_code == 200
    assert post(client, "/v1/batch", sdk_batch(order("same")), basic(KEY)).status_code == 200
    assert post(client, "/segment", order("same")).get_json()["counts"] == {"duplicate": 1}
    assert len(dub.calls) == 1


def test_a_message_without_messageid_is_sent_once_across_retries(
    client: Any, dub: responses.RequestsMock
) -> None:
    """A message sent without a messageId gets one from its content: the SDK's retry (a new
    sentAt) is the same message, sent to Dub once."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    message = order()
    del message["messageId"]
    first = sdk_batch(message, sentAt="2026-12-03T09:00:00.000Z")
    again = sdk_batch(message, sentAt="2026-12-03T09:00:05.000Z")
    assert post(client, "/v1/batch", first, basic(KEY)).status_code == 200
    assert post(client, "/v1/batch", again, basic(KEY)).status_code == 200
    assert len(dub.calls) == 1


def test_the_batch_context_reaches_each_message(client: Any, dub: responses.RequestsMock) -> None:
    """The batch's `context` is under each message's own (its click id makes the lead)."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    lead = signup(click=None)
    del lead["context"]
    body = sdk_batch(lead, context={"traits": {"clickId": "cl_batch"}})
    assert post(client, "/v1/batch", body, basic(KEY)).status_code == 200
    assert json.loads(dub.calls[0].request.body)["clickId"] == "cl_batch"


def test_rudderstack_click_id_convention_is_a_mappable_path() -> None:
    """context.dubClickId, RudderStack's convention, survives to the mappings."""
    message = normalize({"type": "track", "context": {"dubClickId": "cl_9"}}, received_at="x")
    assert message["context"]["dubClickId"] == "cl_9"


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2"])
def test_a_body_that_is_not_json_is_400(client: Any, body: bytes) -> None:
    """A body that is not JSON is 400 (the SDKs do not retry it)."""
    response = post(client, "/v1/batch", body, basic(KEY))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/batch", {"batch": {}}), ("/v1/batch", [order()]), ("/v1/batch", {}),
     ("/v1/track", [order()]), ("/v1/batch", b"  ")],
    ids=["batch-not-array", "array", "no-batch", "track-array", "empty"],
)  # fmt: skip
def test_json_of_the_wrong_shape_is_400(client: Any, path: str, body: Any) -> None:
    """A batch that is not {"batch": [...]}, or a single call that is not an object, is 400."""
    response = post(client, path, body, basic(KEY))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "no_events"


def test_gzip_body_is_accepted(client: Any, dub: responses.RequestsMock) -> None:
    """`Content-Encoding: gzip` (analytics-python's gzip=True) is inflated and read."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    packed = gzip.compress(body_of(sdk_batch(order())))
    response = post(client, "/v1/batch", packed, {**basic(KEY), "Content-Encoding": "gzip"})
    assert response.status_code == 200 and len(dub.calls) == 1


@pytest.mark.parametrize(
    "packed",
    [b"not gzip", gzip.compress(b'{"batch": []}')[:-12], b"\x1f\x8b\x08\x00garbage"],
    ids=["not-gzip", "truncated", "corrupt"],
)
def test_bad_gzip_is_400(client: Any, packed: bytes) -> None:
    """A body that says gzip but is not (or is cut short) is 400, naming gzip."""
    response = post(client, "/v1/batch", packed, {**basic(KEY), "Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_gzip"


def test_zip_bomb_is_413_without_inflating_it(app: Any, client: Any) -> None:
    """A small gzip body that inflates past BRIDGE_MAX_BODY_BYTES is 413."""
    limit = app.extensions["bridge"].settings.max_body_bytes
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb") as out:
        for _ in range(limit // (1 << 20) + 8):
            out.write(b"\0" * (1 << 20))
    assert len(bomb.getvalue()) < limit // 50
    response = post(
        client, "/v1/batch", bomb.getvalue(), {**basic(KEY), "Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert "BRIDGE_MAX_BODY_BYTES" in response.get_json()["error"]["message"]


def test_other_encodings_are_415(client: Any) -> None:
    """Only gzip is inflated; another Content-Encoding is 415."""
    response = post(client, "/v1/batch", b"x", {**basic(KEY), "Content-Encoding": "br"})
    assert response.status_code == 415


def test_a_message_over_32_kb_is_413(client: Any, dub: responses.RequestsMock) -> None:
    """A message over Segment's 32 KB is 413 naming it; nothing of the batch is sent."""
    big = order("big", note="x" * MESSAGE_LIMIT)
    response = post(client, "/v1/batch", sdk_batch(order("small"), big), basic(KEY))
    assert response.status_code == 413
    assert "batch[1]" in response.get_json()["error"]["message"]
    assert "'big'" in response.get_json()["error"]["message"]
    assert post(client, "/v1/track", big, basic(KEY)).status_code == 413
    assert len(dub.calls) == 0


def test_a_batch_over_500_kb_is_413(client: Any, dub: responses.RequestsMock) -> None:
    """A batch over Segment's 500 KB (before compression) is 413, gzip or not."""
    messages = [order(f"m{i}", note="x" * 20_000) for i in range(BATCH_LIMIT // 20_000 + 2)]
    raw = body_of(sdk_batch(*messages))
    assert post(client, "/v1/batch", raw, basic(KEY)).status_code == 413
    packed = {**basic(KEY), "Content-Encoding": "gzip"}
    assert post(client, "/v1/batch", gzip.compress(raw), packed).status_code == 413
    assert len(dub.calls) == 0


# --- derived messageIds ---------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
_messages = st.dictionaries(
    st.text(max_size=6).filter(
        lambda k: k not in ("sentAt", "receivedAt", "writeKey", "messageId")
    ),
    _json,
    max_size=5,
)


@given(_messages, st.text(max_size=10), st.text(max_size=10))
def test_derived_messageid_is_stable_across_tries(message: dict[str, Any], a: str, b: str) -> None:
    """What changes between tries (sentAt, receivedAt, writeKey) and key order do not
    change a derived messageId."""
    first = derived_message_id({**message, "sentAt": a, "writeKey": a})
    again = derived_message_id({"receivedAt": b, "sentAt": b, **dict(reversed(message.items()))})
    assert first == again and first.startswith("bridge-")


@given(_messages, _json)
def test_derived_messageid_differs_with_content(message: dict[str, Any], value: Any) -> None:
    """Two messages saying different things get different derived messageIds."""
    other = {**message, "extra": value}
    if other != message:
        assert derived_message_id(other) != derived_message_id(message)


def test_a_given_messageid_is_kept() -> None:
    """A message's own messageId is never replaced."""
    assert normalize(order("mine"), received_at="x")["messageId"] == "mine"


# --- settled or queued ----------------------------------------------------------------------


def test_dub_down_is_200_queued_and_the_outbox_sends_it_at_once(
    app: Any, client: Any, dub: responses.RequestsMock
) -> None:
    """Dub failing through the budget: the answer is 200 (the SDK would give up after a few
    tries), the row is the outbox's at once, and its next pass sends it exactly once."""
    dub.post(f"{DUB}/track/sale", status=503)
    response = post(client, "/v1/batch", sdk_batch(order("q-1")), basic(KEY))
    assert response.status_code == 200 and response.get_json() == {"success": True}
    row = ledger_of(app).get("q-1", "order-sale")
    assert row is not None and row.state is State.PENDING
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    before = len(dub.calls)
    counts = app.extensions["bridge"].outbox.run_once()
    assert counts == {"delivered": 1}
    assert len(dub.calls) == before + 1
    assert app.extensions["bridge"].outbox.run_once() == {}


def test_without_a_ledger_an_unsettled_message_is_503(
    tmp_path: Path, clock: ManualClock, dub: responses.RequestsMock
) -> None:
    """With no ledger nothing can be queued: Dub failing is a 503 the SDK retries."""
    settings = make_settings(tmp_path, write_keys=KEY, ledger="off")
    made = create_app(settings, clock=clock)
    try:
        dub.post(f"{DUB}/track/sale", status=503)
        response = post(made.test_client(), "/v1/batch", sdk_batch(order()), basic(KEY))
        assert response.status_code == 503 and "Retry-After" in response.headers
    finally:
        made.extensions["bridge"].close()


def test_a_ledger_that_cannot_take_the_messages_is_503(
    app: Any, client: Any, dub: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only when the ledger itself fails is the answer 503; nothing reaches Dub."""

    def down(*_: Any, **__: Any) -> Any:
        raise LedgerError("database is locked")

    monkeypatch.setattr(ledger_of(app), "claim_many", down)
    response = post(client, "/v1/batch", sdk_batch(order()), basic(KEY))
    assert response.status_code == 503
    assert len(dub.calls) == 0


def test_the_sources_name_is_on_the_log_lines_and_the_metric(
    client: Any, dub: responses.RequestsMock
) -> None:
    """Each event's log line and the `source` label carry the write key's name."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logging.getLogger("bridge").addHandler(handler)
    labels = {"source": "shop", "outcome": "delivered"}
    before = REGISTRY.get_sample_value("bridge_source_events_total", labels) or 0
    try:
        assert post(client, "/v1/batch", sdk_batch(order("src-1")), basic(KEY)).status_code == 200
    finally:
        logging.getLogger("bridge").removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = [line for line in lines if line.get("messageId") == "src-1"]
    assert events and all(line["source"] == "shop" for line in events)
    assert REGISTRY.get_sample_value("bridge_source_events_total", labels) == before + 1


# --- only keyed ways in -----------------------------------------------------------------------


def test_only_keyed_ways_in_start_without_a_secret_and_close_the_webhook(
    tmp_path: Path, dub: responses.RequestsMock
) -> None:
    """With write keys and no SEGMENT_SHARED_SECRET (nor BRIDGE_ALLOW_UNSIGNED), the service
    starts, POST /segment is off (404, never unsigned), and /v1 takes keyed requests."""
    settings = make_settings(tmp_path, write_keys=KEY)
    report = check(settings)
    assert report.ok, report.problems
    assert any("POST /segment is off" in w for w in report.warnings)
    made = create_app(settings)
    try:
        client = made.test_client()
        dub.post(f"{DUB}/track/sale", json=sale_ok())
        assert post(client, "/segment", order("w-1")).status_code == 404
        assert len(dub.calls) == 0
        assert post(client, "/v1/track", order("w-2"), basic(KEY)).status_code == 200
        assert client.get("/healthz").get_json()["signatures"].startswith("POST /segment off")
    finally:
        made.extensions["bridge"].close()


def test_no_secret_and_no_other_way_in_still_refuses_to_start(tmp_path: Path) -> None:
    """Without a secret, BRIDGE_ALLOW_UNSIGNED or a keyed way in, start-up still refuses."""
    problems = check(make_settings(tmp_path)).problems
    assert any("SEGMENT_SHARED_SECRET is not set" in p for p in problems)


def test_the_ledger_keeps_the_sources_name(
    app: Any, client: Any, dub: responses.RequestsMock
) -> None:
    """Each row remembers the way in its event first came by: the write key's name, or
    rudderstack; Segment's webhook leaves it empty; an invalid event's dead letter too."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    assert post(client, "/v1/batch", sdk_batch(order("l-1")), basic(KEY)).status_code == 200
    rudder = {"X-Bridge-Token": TOKEN}
    assert post(client, "/rudderstack", order("l-2"), rudder).status_code == 200
    assert post(client, "/segment", order("l-3")).status_code == 200
    bad = order("l-4", revenue=-1)
    assert post(client, "/v1/batch", sdk_batch(bad), basic("other_key")).status_code == 200
    sources = {m: ledger_of(app).get(m, "order-sale") for m in ("l-1", "l-2", "l-3", "l-4")}
    assert {m: r.source if r else "missing" for m, r in sources.items()} == {
        "l-1": "shop", "l-2": "rudderstack", "l-3": None, "l-4": "sdk"
    }  # fmt: skip
    assert sources["l-4"] is not None and sources["l-4"].state is State.INVALID


def _deep_message(depth: int, message_id: str | None) -> bytes:
    """An order whose properties hold lists nested ``depth`` deep, as text (the standard
    library cannot write it under pytest's stack)."""
    given = f'"messageId": "{message_id}", ' if message_id else ""
    nested = "[" * depth + "]" * depth
    return (
        f'{{"type": "track", "event": "Order Completed", {given}"userId": "u",'
        f' "properties": {{"revenue": 1, "a": {nested}}}}}'
    ).encode()


@pytest.mark.parametrize("depth", [990, 1020])
def test_a_deeply_nested_message_is_a_clear_400_never_a_crash(client: Any, depth: int) -> None:
    """A message nested too deeply to be written again, sent without a messageId (or in a
    batch big enough to be measured message by message), is 400 naming it, not a 500."""
    response = post(client, "/v1/track", _deep_message(depth, None), basic(KEY))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_message"
    assert "the message: no messageId" in response.get_json()["error"]["message"]
    pads = [body_of(order(f"pad{i}", note="x" * 20_000)) for i in range(2)]
    raw = b'{"batch": [' + b",".join([*pads, _deep_message(depth, "deep")]) + b"]}"
    response = post(client, "/v1/batch", raw, basic(KEY))
    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("batch[2]:")


def test_a_ledger_that_cannot_queue_is_503(
    app: Any, client: Any, dub: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dub failing and the ledger refusing the hand-over to the outbox: 503, the SDK retries."""
    dub.post(f"{DUB}/track/sale", status=503)

    def down(*_: Any, **__: Any) -> bool:
        raise LedgerError("database is locked")

    monkeypatch.setattr(ledger_of(app), "defer", down)
    response = post(client, "/v1/batch", sdk_batch(order("nq-1")), basic(KEY))
    assert response.status_code == 503 and "Retry-After" in response.headers

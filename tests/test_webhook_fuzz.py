"""Garbage on the webhook: any bytes, any content type, any event shape, never a 500.

Hypothesis writes the bodies; the bridge runs in-process against the real fake Dub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from bridge.web.app import create_app
from tests.helpers.fakedub import FakeDub
from tests.helpers.faultkit import fault_settings, lead_event, sale_event

# --- 9. Garbage on the webhook ------------------------------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**90),
    st.floats(),  # NaN and Infinity included: json.dumps writes them as bare tokens
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=5),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HUGE_TEXT = st.integers(min_value=5_000, max_value=600_000).map(lambda n: "x" * n)
TEXTISH = st.one_of(st.text(max_size=30), HUGE_TEXT, JSON_VALUE)
NUMBERISH = st.one_of(st.floats(), st.integers(), st.decimals(allow_nan=False).map(str), JSON_VALUE)
PROPERTIES = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "order_id": TEXTISH,
            "revenue": NUMBERISH,
            "total": NUMBERISH,
            "currency": st.one_of(
                st.sampled_from(["USD", "jpy", "KWD", "xx", "", "usdd"]), TEXTISH
            ),
            "payment_processor": st.one_of(st.sampled_from(["Stripe", "paypal"]), TEXTISH),
            "name": TEXTISH,
            "email": st.one_of(st.emails(), TEXTISH),
        },
    ),
    JSON_VALUE,
)
TRAITS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "clickId": TEXTISH,
            "email": st.one_of(st.emails(), TEXTISH),
            "name": TEXTISH,
            "avatar": TEXTISH,
        },
    ),
    JSON_VALUE,
)
SEGMENT_EVENT = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.just("track"), JSON_VALUE),
        "event": st.one_of(st.sampled_from(["Order Completed", "Sign Up", "Signed Up"]), TEXTISH),
        "messageId": st.one_of(st.uuids().map(str), TEXTISH),
        "userId": st.one_of(st.text(min_size=1, max_size=12), st.integers(), TEXTISH),
        "anonymousId": JSON_VALUE,
        "timestamp": JSON_VALUE,
        "properties": PROPERTIES,
        "context": st.one_of(st.fixed_dictionaries({}, optional={"traits": TRAITS}), JSON_VALUE),
        "integrations": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={"Dub (Actions)": st.fixed_dictionaries({}, optional={"dub_id": TEXTISH})},
            ),
            JSON_VALUE,
        ),
    },
)

# Every field the mappings read, and the containers they sit in.
FIELD_PATHS = [
    ("type",),
    ("event",),
    ("messageId",),
    ("userId",),
    ("anonymousId",),
    ("timestamp",),
    ("properties",),
    ("properties", "order_id"),
    ("properties", "revenue"),
    ("properties", "total"),
    ("properties", "currency"),
    ("properties", "payment_processor"),
    ("properties", "name"),
    ("properties", "email"),
    ("context",),
    ("context", "traits"),
    ("context", "traits", "clickId"),
    ("context", "traits", "email"),
    ("context", "traits", "name"),
    ("context", "traits", "avatar"),
    ("integrations",),
    ("integrations", "Dub (Actions)"),
    ("integrations", "Dub (Actions)", "dub_id"),
]
DELETE = object()


def _set_path(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node: Any = event
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def mutated_event(draw: st.DrawFn) -> dict[str, Any]:
    """A valid sale or lead with 0 to 3 fields replaced by a wrong type, a huge text or nothing."""
    n = draw(st.uuids()).hex[:12]  # distinct ids, or the ledger answers `duplicate`
    kind = draw(st.sampled_from(["sale", "lead", "lead-cookie"]))
    event = sale_event(f"fz{n}") if kind == "sale" else lead_event(f"fz{n}")
    if kind == "lead-cookie":  # the click id where Segment's Dub plugin puts it
        del event["context"]["traits"]["clickId"]
        event["integrations"] = {"Dub (Actions)": {"dub_id": f"cl_fz{n}"}}
    paths = draw(st.lists(st.sampled_from(FIELD_PATHS), max_size=3, unique=True))
    for path in paths:
        _set_path(event, path, draw(st.one_of(JSON_VALUE, HUGE_TEXT, st.just(DELETE))))
    return event


ANY_EVENT = st.one_of(mutated_event(), SEGMENT_EVENT)


def _text_of(value: Any) -> bytes:
    return json.dumps(value).encode()  # allow_nan: NaN / Infinity tokens, as lenient senders do


def _nested(depth: int, event: dict[str, Any]) -> bytes:
    """``event`` with its properties wrapped ``depth`` levels deep (written by hand)."""
    core = json.dumps(event.get("properties", {}))
    inner = '{"a":' * depth + core + "}" * depth
    outer = dict(event)
    outer["properties"] = "__NESTED__"
    return json.dumps(outer).replace('"__NESTED__"', inner).encode()


def _corrupt(data: bytes, junk: bytes, at: int) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + junk + data[at:]


BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"])
EVENT_BODIES = st.one_of(
    ANY_EVENT.map(_text_of),
    st.lists(ANY_EVENT, max_size=5).map(_text_of),
    st.lists(ANY_EVENT, max_size=5).map(lambda b: _text_of({"batch": b})),
    st.builds(_nested, st.integers(min_value=1, max_value=600), mutated_event()),
    st.builds(_corrupt, ANY_EVENT.map(_text_of), BAD_UTF8, st.integers(min_value=0)),
)
RAW_BODIES = st.one_of(
    JSON_VALUE.map(lambda v: _text_of({"batch": v})),
    JSON_VALUE.map(_text_of),
    st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n),
    st.integers(min_value=1, max_value=1000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=200),
    st.sampled_from(
        [b"", b" ", b"\n\t ", b"null", b"{}", b"[]", b'{"batch": null}', b"\xef\xbb\xbf{}"]
    ),
    st.just(b'{"batch":[' + b'"' + b"x" * (5 * 1024 * 1024) + b'"]}'),  # over the body limit
)
BODIES = st.sampled_from([EVENT_BODIES, EVENT_BODIES, RAW_BODIES]).flatmap(lambda s: s)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "garbage/;;",
    ]
)


@pytest.fixture(scope="module")
def fuzz_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    fake = FakeDub(api_key="test-key").start()
    db = tmp_path_factory.mktemp("fuzz") / "ledger.sqlite3"
    app = create_app(fault_settings(fake.url, db, deadline_seconds=2.0, log_level="ERROR"))
    try:
        yield app
    finally:
        app.extensions["bridge"].close()
        fake.stop()


def assert_clean_answer(status: int, mimetype: str | None, data: bytes) -> None:
    assert status != 500, data[:500]
    assert b"Traceback" not in data
    assert mimetype == "application/json", (status, mimetype, data[:200])
    payload = json.loads(data)
    assert isinstance(payload, dict), payload
    if "error" in payload:
        error = payload["error"]
        assert isinstance(error, dict), payload
        assert isinstance(error.get("code"), str), payload
        assert isinstance(error.get("message"), str), payload
    else:
        assert isinstance(payload.get("results"), list), payload
    if "counts" in payload or "results" in payload:
        assert isinstance(payload.get("counts"), dict), payload
        assert len(data) < 8 * 1024, len(data)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(body=BODIES, content_type=CONTENT_TYPES)
def test_webhook_never_500s_on_garbage(
    fuzz_bridge: Flask, body: bytes, content_type: str | None
) -> None:
    """Any bytes on POST /segment get JSON (`error` {code, message} or `results`), never a 500."""
    client = fuzz_bridge.test_client()
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/segment", data=body, headers=headers)
    assert_clean_answer(response.status_code, response.mimetype, response.data)
    payload = json.loads(response.data)
    note(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    for line in payload.get("results") or []:
        note(f"outcome {line['outcome']}")


def test_webhook_nesting_orjson_reads_but_cannot_write(fuzz_bridge: Flask) -> None:
    """An event nested 1000 levels deep (orjson reads 1024) is answered without a 500."""
    body = _nested(1000, sale_event("deep"))
    response = fuzz_bridge.test_client().post("/segment", data=body)
    assert_clean_answer(response.status_code, response.mimetype, response.data)

"""Hardening: a batch signature binds to what it first vouched for, stale events are refused,
bodies are bounded before anything is parsed, and dead letters keep payloads as received."""

from __future__ import annotations

import gzip
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner

from bridge.cli import main
from bridge.web.app import create_app
from bridge.web.signing import FIRST_EVENT_MAX, first_element_texts, sign, verify
from tests.conftest import DUB, SECRET, lead_ok, make_settings, order, sale_ok, signup
from tests.helpers.fakes import ManualClock


@pytest.fixture
def secured(tmp_path: Path, clock: ManualClock) -> Any:
    app = create_app(make_settings(tmp_path, segment_shared_secret=SECRET), clock=clock)
    yield app
    app.extensions["bridge"].close()


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def post_batch(app: Any, events: list[Any], signed_over: Any) -> Any:
    """A batch signed as Segment's Actions sign it: over one event's JSON text."""
    headers = {
        "Content-Type": "application/json",
        "X-Signature": sign(compact(signed_over), SECRET),
    }
    return app.test_client().post("/segment", data=compact(events), headers=headers)


def sent(dub: responses.RequestsMock) -> list[str]:
    return [json.loads(c.request.body).get("invoiceId") or "lead" for c in dub.calls]


# --- a batch signature binds to what it first vouched for -------------------------------------------


def test_a_captured_signature_cannot_carry_forged_events(
    secured: Any, dub: responses.RequestsMock
) -> None:
    """[a captured signed event, a forged sale, a forged lead] under the captured signature:
    the forged ones are not sent but kept as `unverified` dead letters; the real one is fine."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    captured = order("real")
    single = secured.test_client().post(
        "/segment",
        data=compact(captured),
        headers={
            "Content-Type": "application/json",
            "X-Signature": sign(compact(captured), SECRET),
        },
    )
    assert single.get_json()["counts"] == {"delivered": 1}
    forged = [captured, order("forged", revenue=99999), signup("forged-lead", userId="mallory")]
    answer = post_batch(secured, forged, signed_over=captured)
    assert answer.status_code == 200
    assert answer.get_json()["counts"] == {"duplicate": 1, "unverified": 2}
    assert sent(dub) == ["o-real"]
    listed = CliRunner().invoke(
        main,
        ["deadletters", "--json"],
        env={"BRIDGE_DB": str(secured.extensions["bridge"].settings.db_path)},
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {(r["messageId"], r["state"]) for r in rows} == {
        ("forged", "unverified"),
        ("forged-lead", "unverified"),
    }
    assert rows[0]["payload"]["messageId"] in ("forged", "forged-lead")


def test_a_lead_resent_under_a_new_message_id_is_held(
    secured: Any, dub: responses.RequestsMock
) -> None:
    """[the victim's lead, the same lead with a new messageId] under the victim's signature:
    the copy is held back, so the lead is sent once."""
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    lead = signup("victim")
    post_batch(secured, [lead], signed_over=lead)
    answer = post_batch(secured, [lead, lead | {"messageId": "copy"}], signed_over=lead)
    assert answer.get_json()["counts"] == {"duplicate": 1, "unverified": 1}
    assert len(dub.calls) == 1


def test_segments_retries_of_a_batch_go_through(
    secured: Any, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """The same batch posted again (Segment's retry) is vouched for whole: nothing is held."""
    dub.post(f"{DUB}/track/sale", status=503, json={"error": {"code": "x", "message": "x"}})
    now = {"receivedAt": iso(clock.time())}  # Segment stamps every event it receives
    batch = [order("a") | {"userId": "a"} | now, order("b") | {"userId": "b"} | now]
    assert post_batch(secured, batch, signed_over=batch[0]).status_code == 503
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    again = post_batch(secured, batch, signed_over=batch[0])
    assert again.status_code == 200 and again.get_json()["counts"] == {"delivered": 2}


def test_the_strict_setting_refuses_such_a_body(
    tmp_path: Path, dub: responses.RequestsMock
) -> None:
    """With BRIDGE_UNVERIFIED_EVENTS=refuse, a body with events the signature does not vouch
    for is refused whole, 401, and nothing is sent."""
    app = create_app(
        make_settings(tmp_path, segment_shared_secret=SECRET, unverified_events="refuse")
    )
    try:
        dub.post(f"{DUB}/track/sale", json=sale_ok())
        first = order("one")
        post_batch(app, [first], signed_over=first)
        answer = post_batch(app, [first, order("two")], signed_over=first)
        assert answer.status_code == 401
        assert len(dub.calls) == 1
    finally:
        app.extensions["bridge"].close()


# --- stale events -------------------------------------------------------------------------------------


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_events_older_than_the_ledgers_memory_are_refused(
    client: Any, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """receivedAt (else timestamp) older than BRIDGE_MAX_EVENT_AGE_DAYS: `too_old`, final,
    not sent, not a dead letter; fresh ones go."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    now = clock.time()
    events = [
        order("stale") | {"receivedAt": iso(now - 7 * 86400), "timestamp": iso(now)},
        order("stale-ts") | {"timestamp": iso(now - 6.5 * 86400)},
        order("fresh") | {"receivedAt": iso(now - 5 * 86400)},
    ]
    answer = client.post("/segment", data=compact(events), content_type="application/json")
    assert answer.status_code == 200
    assert answer.get_json()["counts"] == {"too_old": 2, "delivered": 1}
    assert sent(dub) == ["o-fresh"]
    reasons = {r["messageId"]: r["reason"] for r in answer.get_json()["results"]}
    assert "may have been sent already" in reasons["stale"]


def test_replay_send_accepts_old_events_only_when_told(
    tmp_path: Path, dub: responses.RequestsMock
) -> None:
    """`replay --send` refuses old events as the webhook does; `--accept-old` sends them."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    path = tmp_path / "old.ndjson"
    path.write_text(json.dumps(order("old") | {"timestamp": iso(time.time() - 30 * 86400)}))
    env = {"DUB_API_KEY": "k", "DUB_API_URL": DUB, "BRIDGE_DB": str(tmp_path / "l.db")}
    refused = CliRunner().invoke(main, ["replay", "--send", str(path)], env=env)
    assert json.loads(refused.stdout)["outcome"] == "too_old" and len(dub.calls) == 0
    accepted = CliRunner().invoke(main, ["replay", "--send", "--accept-old", str(path)], env=env)
    assert json.loads(accepted.stdout)["outcome"] == "delivered" and len(dub.calls) == 1


# --- bodies bounded before parsing ----------------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413(tmp_path: Path) -> None:
    """A chunked body (no Content-Length) past the limit gets 413, as with Content-Length."""
    app = create_app(make_settings(tmp_path, max_body_bytes=2048))
    try:
        answer = app.test_client().post(
            "/segment",
            input_stream=io.BytesIO(b"[" + b" " * 5000 + b"]"),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            # What gunicorn sets for a chunked body: the stream ends where the body does.
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert answer.status_code == 413
        assert answer.get_json()["error"]["code"] == "payload_too_large"
    finally:
        app.extensions["bridge"].close()


def test_a_compressed_body_is_415(client: Any) -> None:
    """Content-Encoding: gzip is refused clearly (415), not read as garbage."""
    answer = client.post(
        "/segment",
        data=gzip.compress(compact(order())),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 415
    assert answer.get_json()["error"]["code"] == "unsupported_encoding"


def test_an_unsigned_request_costs_little(secured: Any, dub: responses.RequestsMock) -> None:
    """A 4 MB array with a bad signature is refused (401) after reading its first element
    only within a bound; a first element past the bound can never match."""
    huge = b'[{"x":"' + b"a" * (4 * 1024 * 1024 - 20) + b'"}]'
    assert first_element_texts(huge) == []
    answer = secured.test_client().post(
        "/segment", data=huge, headers={"Content-Type": "application/json", "X-Signature": "0" * 40}
    )
    assert answer.status_code == 401 and len(dub.calls) == 0
    small = b'[{"x":"' + b"a" * (FIRST_EVENT_MAX - 100) + b'"}, 2]'
    first = small[1 : small.index(b"}") + 1]
    assert verify(small, sign(first, "k"), "k").ok


# --- dead letters keep the payload as received -------------------------------------------------------------


def test_a_dead_letter_keeps_nan_and_infinity_as_sent(
    tmp_path: Path, dub: responses.RequestsMock
) -> None:
    """NaN, Infinity and 1e400 stay in the dead letter's payload as written, and a redrive
    names the real problem (not a finite number) instead of a missing value."""
    app = create_app(make_settings(tmp_path))
    try:
        body = (
            b'{"type":"track","event":"Order Completed","messageId":"nan-1","userId":"u",'
            b'"properties":{"revenue":NaN,"tax":1e400,"fee":-Infinity,"currency":"usd"}}'
        )
        answer = app.test_client().post("/segment", data=body, content_type="application/json")
        assert answer.get_json()["counts"] == {"invalid": 1}
    finally:
        app.extensions["bridge"].close()
    env = {"BRIDGE_DB": str(tmp_path / "ledger.sqlite3"), "DUB_API_KEY": "k", "DUB_API_URL": DUB}
    listed = CliRunner().invoke(main, ["deadletters", "--json"], env=env).stdout
    assert '"revenue":NaN' in listed and '"tax":1e400' in listed and '"fee":-Infinity' in listed
    redriven = CliRunner().invoke(main, ["redrive", "--dry-run"], env=env).stdout
    assert "not a finite number" in redriven and "no value" not in redriven


def test_the_answer_masks_emails(client: Any, dub: responses.RequestsMock) -> None:
    """Segment shows answers in its UI: an email in a reason is masked there too."""
    dub.post(
        f"{DUB}/track/sale",
        json={"error": {"code": "bad", "message": "jane.doe@example.com is bad"}},
        status=422,
    )
    answer = client.post("/segment", data=compact(order("m")), content_type="application/json")
    assert "jane.doe@example.com" not in answer.get_data(as_text=True)
    assert "j***@example.com" in answer.get_data(as_text=True)

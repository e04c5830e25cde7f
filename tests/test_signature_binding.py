"""A captured signature never carries a forged conversion (issue 23, Critical and Medium),
on the SQLite, in-memory and PostgreSQL ledgers.

Segment's Webhooks (Actions) post a batch as a JSON array and sign it over its first
event's JSON text only (HMAC-SHA1, hex, in ``X-Signature``). A signature vouches for the
exact content of each event it first came with; an attacker holding one captured signed
request tries every way around that, and a forged copy of an event must never stand in
the way of the real one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli import main
from bridge.core.outcomes import State
from bridge.ledger import retention_of
from bridge.service.redrive import redrive
from bridge.web.signing import event_texts, sign, signature_key
from tests.conftest import DUB, SECRET, lead_ok, make_settings, order, sale_ok, signup
from tests.helpers.fakes import ManualClock

DAY = 86400.0
MakeApp = Callable[..., Any]


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def make_app(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[MakeApp]:
    """A factory of signed services on one backend: ``make_app(unverified_events=...)``."""
    backend: dict[str, Any] = {}
    if request.param == "memory":
        backend["ledger"] = "memory"
    elif request.param == "postgres":
        backend["database_url"] = request.getfixturevalue("pg_url")
    made: list[Any] = []

    def make(**overrides: Any) -> Any:
        from bridge.web.app import create_app

        values = {"segment_shared_secret": SECRET, **backend, **overrides}
        made.append(create_app(make_settings(tmp_path, **values), clock=clock))
        return made[-1]

    yield make
    for app in made:
        app.extensions["bridge"].close()


@pytest.fixture
def app(make_app: MakeApp) -> Any:
    return make_app()


@pytest.fixture
def mock_dub(dub: responses.RequestsMock) -> responses.RequestsMock:
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    dub.post(f"{DUB}/track/lead", json=lead_ok())
    return dub


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def segment(event: dict[str, Any], at: float) -> dict[str, Any]:
    """The event as Segment delivers it: stamped when sent, received and processed."""
    stamp = iso(at)
    return event | {
        "anonymousId": "anon-1",
        "channel": "client",
        "originalTimestamp": stamp,
        "receivedAt": stamp,
        "sentAt": stamp,
        "timestamp": stamp,
        "version": 2,
    }


def page_view(message_id: str, at: float) -> dict[str, Any]:
    return segment(
        {"type": "page", "name": "Pricing", "messageId": message_id, "userId": "user_1",
         "properties": {"path": "/pricing"}},
        at,
    )  # fmt: skip


def text(value: Any) -> bytes:
    """JSON as Segment's JavaScript writes it (JSON.stringify): compact."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def post(app: Any, body: Any, signed_over: Any = None) -> Any:
    """Post ``body``; the signature is over ``signed_over`` (a batch: its first event)."""
    if signed_over is None:
        signed_over = body[0] if isinstance(body, list) else body
    headers = {"Content-Type": "application/json", "X-Signature": sign(text(signed_over), SECRET)}
    return app.test_client().post("/segment", data=text(body), headers=headers)


def sent(dub: responses.RequestsMock) -> list[tuple[str, Any]]:
    """Each call Dub received: (endpoint, invoiceId or the lead's customer)."""
    calls = []
    for call in dub.calls:
        body = json.loads(call.request.body)
        where = str(call.request.url).rsplit("/", 1)[-1]
        calls.append((where, body.get("invoiceId") or body.get("customerExternalId")))
    return calls


# --- Critical: a signature binds content, not messageIds ---------------------------------------


def attack_page_view(app: Any, now: float) -> tuple[list[Any], Any]:
    """Segment's batch [a sale, a page view], then the page view's messageId reused for a
    $99,999 sale under the same signature."""
    first, view = segment(order("a1"), now), page_view("p1", now)
    assert post(app, [first, view]).status_code == 200
    return [first, segment(order("p1", revenue=99999, order_id="X-99999"), now)], first


def attack_sign_up(app: Any, now: float) -> tuple[list[Any], Any]:
    """A batch, then an extra Sign Up reusing the first event's messageId."""
    first = segment(order("a2"), now)
    assert post(app, [first, segment(order("b2"), now)]).status_code == 200
    return [first, segment(signup("a2", userId="mallory"), now)], first


def attack_single_event(app: Any, now: float) -> tuple[list[Any], Any]:
    """A captured single-event request made the first element of a batch, plus a sale
    reusing its messageId."""
    single = segment(order("s3"), now)
    assert post(app, single).status_code == 200
    return [single, segment(order("s3", revenue=55555, order_id="X-55555"), now)], single


ATTACKS = {
    "page view's messageId": attack_page_view,
    "first event's messageId": attack_sign_up,
    "single event as first": attack_single_event,
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_a_vouched_message_id_carries_no_other_content(
    app: Any, mock_dub: responses.RequestsMock, clock: ManualClock, attack: Any
) -> None:
    """An event reusing a messageId its signature vouched for, with other content, is held
    `unverified` (saying so), never sent; the genuine events went out once."""
    forged, _ = attack(app, clock.time())
    before = sent(mock_dub)
    answer = post(app, forged)
    assert answer.status_code == 200
    assert answer.get_json()["counts"] == {"duplicate": 1, "unverified": 1}
    (held,) = answer.get_json()["results"]
    assert "other content under this messageId" in held["reason"]
    assert sent(mock_dub) == before
    assert not any(invoice in ("X-99999", "X-55555") for _, invoice in sent(mock_dub))


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_the_strict_setting_refuses_every_such_body(
    make_app: MakeApp, mock_dub: responses.RequestsMock, clock: ManualClock, attack: Any
) -> None:
    """With BRIDGE_UNVERIFIED_EVENTS=refuse, each attack is refused whole (401)."""
    app = make_app(unverified_events="refuse")
    forged, _ = attack(app, clock.time())
    before = sent(mock_dub)
    assert post(app, forged).status_code == 401
    assert sent(mock_dub) == before


@pytest.mark.parametrize("mode", ["dead_letter", "refuse"])
def test_a_forgotten_signature_cannot_carry_forged_sales(
    make_app: MakeApp, mock_dub: responses.RequestsMock, clock: ManualClock, mode: str
) -> None:
    """A signature is remembered as long as its first event can be accepted (forged sales
    are held at 5.9 days, after a sweep); later, [the captured first event, 5 forged
    sales] is refused whole, 401, before and after the ledger forgot the signature."""
    app = make_app(unverified_events=mode)
    ledger = app.extensions["bridge"].ledger
    retention = retention_of(app.extensions["bridge"].settings)
    start = clock.time()
    first = segment(order("f0"), start)
    assert post(app, [first, segment(order("f1"), start)]).status_code == 200
    forged = [first, *(segment(order(f"x{n}", revenue=9999), start) for n in range(5))]
    clock.advance(5.9 * DAY)
    ledger.sweep(retention)
    held = post(app, forged)
    if mode == "refuse":
        assert held.status_code == 401
    else:
        assert held.get_json()["counts"] == {"duplicate": 1, "unverified": 5}
    clock.advance(0.2 * DAY)  # the first event is too old; the signature is still known
    assert post(app, forged).status_code == 401
    clock.advance(2 * DAY)
    ledger.sweep(retention)  # now forgotten, with the rows
    refused = post(app, forged)
    assert refused.status_code == 401
    assert "older than BRIDGE_MAX_EVENT_AGE_DAYS" in refused.get_json()["error"]["message"]
    assert sent(mock_dub) == [("sale", "o-f0"), ("sale", "o-f1")]


def test_a_first_event_without_a_time_vouches_for_no_other(
    make_app: MakeApp, mock_dub: responses.RequestsMock
) -> None:
    """A batch whose signed first event has no readable time could never be forgotten
    safely: its other events are held (refused with `refuse`), whatever was seen first."""
    app = make_app()

    def timeless(name: str) -> dict[str, Any]:
        return {k: v for k, v in order(name).items() if k not in ("timestamp", "receivedAt")}

    answer = post(app, [timeless("t0"), order("t1")])
    # The first event itself cannot be sent either: its age cannot be checked.
    assert answer.get_json()["counts"] == {"invalid": 1, "unverified": 1}
    assert any("no readable time" in r["reason"] for r in answer.get_json()["results"])
    strict = make_app(unverified_events="refuse")
    assert post(strict, [timeless("t2"), order("t3")]).status_code == 401
    assert sent(mock_dub) == []


def test_segments_retry_of_a_stamped_batch_goes_through(
    app: Any, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Segment's retry of the same batch (the same bytes) is vouched for whole."""
    dub.post(f"{DUB}/track/sale", status=503, json={"error": {"code": "x", "message": "x"}})
    now = clock.time()
    batch = [
        segment(order("r1") | {"userId": "a"}, now),
        segment(order("r2") | {"userId": "b"}, now),
        page_view("r3", now),
    ]
    assert post(app, batch).status_code == 503
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    again = post(app, batch)
    assert again.status_code == 200
    assert again.get_json()["counts"] == {"delivered": 2, "skipped": 1}


def test_a_signature_the_release_before_recorded_vouches_for_no_content(
    tmp_path: Path, clock: ManualClock, mock_dub: responses.RequestsMock
) -> None:
    """A signature first recorded by the release before (messageIds only, during a rolling
    deploy) vouches for its signed first event alone: the rest wait, saying why."""
    from bridge.web.app import create_app

    settings = make_settings(tmp_path, segment_shared_secret=SECRET)
    app = create_app(settings, clock=clock)
    try:
        now = clock.time()
        batch = [segment(order("old1"), now), segment(order("old2"), now)]
        with sqlite3.connect(settings.db_path) as db:  # as the release before recorded it
            db.execute(
                "INSERT INTO signatures (key, message_ids, first_seen) VALUES (?, ?, ?)",
                (signature_key(sign(text(batch[0]), SECRET)), '["old1","old2"]', now),
            )
        answer = post(app, batch)
        assert answer.get_json()["counts"] == {"delivered": 1, "unverified": 1}
        assert "the release before" in answer.get_json()["results"][0]["reason"]
    finally:
        app.extensions["bridge"].close()


# --- Medium: an unverified row never shadows the real event ---------------------------------------


def plant(app: Any, now: float, message_id: str) -> Any:
    """A forged sale under a captured signature, with the messageId the real one will have."""
    first = segment(order("cap"), now)
    assert post(app, [first, segment(order("cap2"), now)]).status_code == 200
    forged = segment(order(message_id, revenue=99999, order_id="X-forged"), now)
    answer = post(app, [first, forged])
    assert answer.get_json()["counts"] == {"duplicate": 1, "unverified": 1}
    return forged


def test_a_verified_arrival_takes_over_a_forged_copy(
    app: Any, mock_dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """The real, validly signed event arriving after a forged copy of its messageId is sent
    (its own content), once; the forged content never reaches Dub."""
    plant(app, clock.time(), "next-1")
    clock.advance(3600)
    real = segment(order("next-1"), clock.time())
    answer = post(app, real)
    assert answer.status_code == 200 and answer.get_json()["counts"] == {"delivered": 1}
    assert post(app, real).get_json()["counts"] == {"duplicate": 1}
    assert sent(mock_dub) == [("sale", "o-cap"), ("sale", "o-cap2"), ("sale", "o-next-1")]
    row = app.extensions["bridge"].ledger.get("next-1", "order-sale")
    assert row.state is State.DELIVERED and row.created_at == clock.time()


def test_redrive_leaves_unverified_rows_alone_unless_asked(
    app: Any, mock_dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A plain redrive sends no `unverified` dead letter; asked by name it sends each, its
    line saying what differs from a verified copy of its messageId."""
    service = app.extensions["bridge"]
    now = clock.time()
    mock_dub.replace(responses.POST, f"{DUB}/track/lead", status=403,
                     json={"error": {"code": "forbidden", "message": "plan"}})  # fmt: skip
    genuine = segment(signup("m-lead"), now)
    assert post(app, genuine).get_json()["counts"] == {"rejected": 1}
    plant(app, now, "m-lead")  # a sale under the lead's messageId: a second mapping's row
    plant(app, now, "m-other")
    mock_dub.replace(responses.POST, f"{DUB}/track/lead", json=lead_ok())
    calls = len(mock_dub.calls)

    def run(**kw: Any) -> list[dict[str, Any]]:
        return redrive(service.store.engine, service.ledger, service.deliverer, mapping=None,
                       since=None, budget=2.0, **kw)  # fmt: skip

    lines = run()
    assert [(x["messageId"], x["outcome"]) for x in lines] == [("m-lead", "delivered")]
    assert sent(mock_dub)[calls:] == [("lead", "user_1")]
    for forged in ("m-lead", "m-other"):
        assert service.ledger.get(forged, "order-sale").state is State.UNVERIFIED

    lines = run(include_unverified=True)
    by_id = {x["messageId"]: x for x in lines}
    assert {x["outcome"] for x in lines} == {"delivered"} and set(by_id) == {"m-lead", "m-other"}
    assert by_id["m-other"]["verifiedCopy"] is None
    lead_copy = by_id["m-lead"]
    assert lead_copy["verifiedCopy"] == {
        "mapping": "signup-lead", "state": "delivered", "contentKept": True
    }  # fmt: skip
    assert lead_copy["differs"]["event"] == {
        "verified": "'Sign Up'",
        "unverified": "'Order Completed'",
    }
    assert lead_copy["differs"]["properties.revenue"]["verified"] is None


def test_the_redrive_command_names_unverified_rows(
    tmp_path: Path, clock: ManualClock, dub: responses.RequestsMock
) -> None:
    """`bridge redrive` leaves `unverified` rows alone; `--include-unverified` sends them."""
    from bridge.web.app import create_app

    settings = make_settings(tmp_path, segment_shared_secret=SECRET)
    app = create_app(settings, clock=clock)
    try:
        dub.post(f"{DUB}/track/sale", json=sale_ok())
        plant(app, clock.time(), "cli-1")
    finally:
        app.extensions["bridge"].close()
    env = {"BRIDGE_DB": str(settings.db_path), "DUB_API_KEY": "k", "DUB_API_URL": DUB}
    plain = CliRunner().invoke(main, ["redrive"], env=env, catch_exceptions=False)
    assert plain.exit_code == 0 and plain.stdout == "" and len(dub.calls) == 2
    named = CliRunner().invoke(main, ["redrive", "--include-unverified"], env=env)
    (line,) = [json.loads(x) for x in named.stdout.splitlines()]
    assert (line["messageId"], line["before"], line["outcome"]) == (
        "cli-1", "unverified", "delivered"
    )  # fmt: skip
    assert line["verifiedCopy"] is None and len(dub.calls) == 3


# --- what the events are, as sent ----------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(JSON, min_size=1, max_size=5), st.sampled_from([None, 1, 2]), st.booleans())
def test_event_texts_are_the_elements_as_sent(
    events: list[Any], indent: int | None, ascii_only: bool
) -> None:
    """Each element of an array body is found as its own bytes, however the sender spaced
    and escaped them; a body that is not a complete array is one event, or unreadable."""
    body = json.dumps(events, indent=indent, ensure_ascii=ascii_only).encode()
    texts = event_texts(b" \n" + body + b"\r\n")
    assert texts is not None and [json.loads(t) for t in texts] == events
    assert all(t in body for t in texts)
    assert event_texts(body[:-1]) is None
    assert event_texts(b'{"a": 1}\n') == [b'{"a": 1}']
    assert event_texts(b"[1,]") is None and event_texts(b"[1 2]") is None


def test_event_texts_of_odd_bodies() -> None:
    """Bytes that are not UTF-8 are kept as sent; nesting too deep to read, or a body that is
    not one array, gives None (its events beyond the first are then held), never an error."""
    assert event_texts(b'[{"a":"\xff\xfe"},\n"\xc3"]') == [b'{"a":"\xff\xfe"}', b'"\xc3"']
    assert event_texts(b"[" * 200_000 + b"]" * 200_000) is None
    assert event_texts(b'[{"a":1}] [2]') is None and event_texts(b"[") is None
    assert event_texts(b"[]") == []

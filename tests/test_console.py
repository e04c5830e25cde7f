"""The ops console through Flask's test client: who may use it, CSRF, the events list and
its filters, the detail panes, redrive (one and bulk), try a mapping, and the mapping sets."""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import responses

from bridge.core.errors import SettingsError
from bridge.core.outcomes import State
from bridge.core.settings import Settings
from bridge.ledger.base import Attempt, ClaimRequest
from bridge.web.app import create_app
from tests.conftest import DUB, MAPPINGS, make_settings, order, sale_ok
from tests.helpers.fakes import ManualClock

TOKEN = "console-token-0123456789"


@pytest.fixture
def console_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, console_token=TOKEN)


@pytest.fixture
def capp(console_settings: Settings, clock: ManualClock) -> Iterator[Any]:
    app = create_app(console_settings, clock=clock)
    yield app
    app.extensions["bridge"].close()


def csrf_of(page: Any) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True))
    assert found, "the page has no CSRF field"
    return found[1]


def log_in(client: Any, token: str = TOKEN) -> Any:
    csrf = csrf_of(client.get("/console/login"))
    return client.post("/console/login", data={"token": token, "csrf": csrf})


@pytest.fixture
def c(capp: Any) -> Any:
    client = capp.test_client()
    assert log_in(client).status_code == 302
    return client


def ledger_of(app: Any) -> Any:
    return app.extensions["bridge"].ledger


def dead(app: Any, message_id: str, **props: Any) -> dict[str, Any]:
    """An order stored as an invalid dead letter (as a mapping that refused it left it)."""
    event = order(message_id, **props)
    ledger_of(app).record(
        message_id, "order-sale", State.INVALID, action="sale", event="Order Completed",
        errors=["amount: was refused"], payload=event,
    )  # fmt: skip
    return event


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


# --- on, off, and who may use it -----------------------------------------------------------------


def test_console_is_404_when_no_token_is_set(app: Any) -> None:
    """Without BRIDGE_CONSOLE_TOKEN, /console and every page under it answer 404."""
    client = app.test_client()
    for path in ("/console", "/console/login", "/console/events"):
        assert client.get(path).status_code == 404


def test_a_short_token_fails_at_start_naming_the_variable(tmp_path: Path) -> None:
    """A console token under 16 characters is a start-up error naming the variable, not it."""
    with pytest.raises(SettingsError) as caught:
        make_settings(tmp_path, console_token="short-secret")
    assert "BRIDGE_CONSOLE_TOKEN" in str(caught.value)
    assert "short-secret" not in str(caught.value)


def test_without_a_session_pages_redirect_to_login(capp: Any) -> None:
    """A page asked for without a session redirects to the login form, which has a password
    input named token."""
    client = capp.test_client()
    answer = client.get("/console/events?state=dead")
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/console/login?next=")
    assert 'type="password" id="token" name="token"' in text(client.get("/console/login"))


def test_the_right_token_gives_a_strict_httponly_cookie(capp: Any) -> None:
    """The right token gives a session cookie, HttpOnly and SameSite=Strict (no Secure over
    http), and the pages open."""
    client = capp.test_client()
    answer = log_in(client)
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert client.get("/console/events").status_code == 200


def test_the_cookie_is_secure_behind_https(capp: Any) -> None:
    """Behind a proxy that says https (X-Forwarded-Proto), the session cookie is Secure."""
    client = capp.test_client()
    https = {"X-Forwarded-Proto": "https"}
    csrf = csrf_of(client.get("/console/login", headers=https))
    answer = client.post("/console/login", data={"token": TOKEN, "csrf": csrf}, headers=https)
    assert "Secure" in answer.headers["Set-Cookie"]


def test_a_wrong_token_is_refused_logged_and_slowed(
    capp: Any, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong token: 401, a clear message, no cookie, a warning logged (without the token),
    and each failure answered later than the one before (on the injected clock)."""
    client = capp.test_client()
    with caplog.at_level(logging.WARNING, "bridge.console"):
        first = log_in(client, "wrong-token-guess-1")
        second = log_in(client, "wrong-token-guess-2")
    assert first.status_code == second.status_code == 401
    assert "not right" in text(first)
    assert "Set-Cookie" not in first.headers
    assert clock.slept[-2:] == [0.5, 1.0]
    refused = [r for r in caplog.records if r.getMessage() == "console login refused"]
    assert len(refused) == 2
    assert all("wrong-token-guess" not in str(r.__dict__) for r in caplog.records)
    assert client.get("/console/events").status_code == 302


def test_logout_ends_the_session(c: Any) -> None:
    """After logout the pages redirect to the login form again."""
    csrf = csrf_of(c.get("/console/events"))
    assert c.post("/console/logout", data={"csrf": csrf}).status_code == 302
    assert c.get("/console/events").status_code == 302


def test_an_expired_session_asks_for_the_token_again(c: Any, clock: ManualClock) -> None:
    """A login lasts 12 hours of the clock, then the token is asked again."""
    clock.advance(12 * 3600 + 1)
    assert c.get("/console/events").status_code == 302


def test_login_never_redirects_off_the_console(capp: Any) -> None:
    """The login's `next` only ever leads to a console page, never to another site."""
    client = capp.test_client()
    csrf = csrf_of(client.get("/console/login"))
    answer = client.post(
        "/console/login", data={"token": TOKEN, "csrf": csrf, "next": "//evil.test/console"}
    )
    assert answer.headers["Location"] == "/console/events"


def test_a_post_without_csrf_is_403_and_changes_nothing(c: Any, capp: Any) -> None:
    """A redrive POST without the CSRF token (or with a wrong one) gets 403; the dead letter
    stays, nothing is sent."""
    dead(capp, "m-csrf")
    with responses.RequestsMock() as dub:  # any Dub call would fail the test
        assert c.post("/console/events/m-csrf/redrive").status_code == 403
        bad = c.post("/console/events/m-csrf/redrive", data={"csrf": "forged"})
        assert bad.status_code == 403
        assert not dub.calls
    assert ledger_of(capp).get("m-csrf", "order-sale").state is State.INVALID


def test_a_login_post_without_csrf_is_403(capp: Any) -> None:
    """Even the login form needs its CSRF token."""
    client = capp.test_client()
    client.get("/console/login")
    assert client.post("/console/login", data={"token": TOKEN}).status_code == 403


# --- the events list -------------------------------------------------------------------------------


def test_events_list_counts_rows_and_masks_emails(c: Any, capp: Any) -> None:
    """The list shows counts per state and one <tr data-message-id> per row; a customer's
    email is masked in the list."""
    ledger = ledger_of(capp)
    dead(capp, "m-1")
    ledger.record(
        "m-2", "order-sale", State.INVALID, action="sale", event="Order Completed",
        errors=["no customer jane.doe@example.com"], payload=order("m-2"),
    )  # fmt: skip
    page = text(c.get("/console/events"))
    assert re.findall(r'data-message-id="([^"]+)"', page) == ["m-2", "m-1"]
    assert 'data-state="invalid">2<' in page
    assert 'id="dead-count">2<' in page
    assert "jane.doe@example.com" not in page and "j***@example.com" in page


def test_state_dead_means_every_dead_letter_kind(c: Any, capp: Any, clock: ManualClock) -> None:
    """?state=dead lists invalid, rejected, uncertain, gave_up and unverified rows, not
    delivered ones; ?state=delivered the delivered ones."""
    ledger = ledger_of(capp)
    from bridge.ledger.base import ClaimRequest

    for mid, state in [("d1", State.DELIVERED), ("r1", State.REJECTED), ("g1", State.GAVE_UP)]:
        ledger.claim_many([ClaimRequest(mid, "order-sale", "sale", "Order Completed", "u", {})])
        ledger.finish(mid, "order-sale", state, calls=1, status=422 if state else None)
        clock.advance(1)
    ledger.record("u1", "order-sale", State.UNVERIFIED, action="sale", event="E", errors=[],
                  payload={})  # fmt: skip
    dead(capp, "i1")
    listed = set(
        re.findall(r'data-message-id="([^"]+)"', text(c.get("/console/events?state=dead")))
    )
    assert listed == {"r1", "g1", "u1", "i1"}
    delivered = re.findall(
        r'data-message-id="([^"]+)"', text(c.get("/console/events?state=delivered"))
    )
    assert delivered == ["d1"]


def test_filters_by_mapping_since_and_search(c: Any, capp: Any, clock: ManualClock) -> None:
    """mapping, since (an age or an ISO time) and the messageId/customer search each narrow
    the list."""
    from datetime import UTC, datetime

    dead(capp, "old")
    clock.advance(3 * 3600)
    dead(capp, "new")
    clock.advance(1)
    ledger_of(capp).record("lead-1", "signup-lead", State.INVALID, action="lead",
                           event="Sign Up", errors=[], payload={})  # fmt: skip

    def ids(query: str) -> list[str]:
        return re.findall(r'data-message-id="([^"]+)"', text(c.get("/console/events?" + query)))

    assert ids("mapping=signup-lead") == ["lead-1"]
    assert ids("since=2h") == ["lead-1", "new"]
    iso = datetime.fromtimestamp(clock.time() - 3600, UTC).isoformat()
    assert ids("since=" + quote(iso)) == ["lead-1", "new"]
    assert ids("q=old") == ["old"]
    assert ids("q=nobody") == []


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("state=bogus", "state: "),
        ("since=yesterday", "since: "),
        ("since=12x", "since: "),
        ("after=not-a-marker", "after: "),
        ("after=WzEsMl0", "after: "),  # valid base64 JSON, not a page marker
        ("mapping=" + "m" * 300, "mapping: "),
        ("q=a%00b", "q: "),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(c: Any, query: str, named: str) -> None:
    """Each bad filter value answers 400 with a message naming the parameter."""
    answer = c.get("/console/events?" + query)
    assert answer.status_code == 400
    assert named in text(answer).replace("&#39;", "'")


def test_keyset_pagination_walks_every_row_once(c: Any, capp: Any, clock: ManualClock) -> None:
    """120 rows: pages of 50, 50 and 20 through the 'Older rows' link, none twice or missed."""
    for i in range(120):
        dead(capp, f"m{i:03d}")
        clock.advance(1)
    seen: list[str] = []
    url = "/console/events?state=dead"
    while url:
        page = text(c.get(url))
        seen += re.findall(r'data-message-id="([^"]+)"', page)
        found = re.search(r'id="next-page" href="([^"]+)"', page)
        url = found[1].replace("&amp;", "&") if found else ""
    assert seen == [f"m{i:03d}" for i in range(119, -1, -1)]


# --- one event -------------------------------------------------------------------------------------


def test_detail_shows_payload_request_answer_and_explain(c: Any, capp: Any) -> None:
    """The detail page: the payload as received (unmasked), the Dub request the current
    mappings would send, the ledger's record of Dub's answers, the explain, a Redrive."""
    event = dead(capp, "m-d", **{"email": "jane@example.com"})
    page = text(c.get("/console/events/m-d"))
    for pane in ('id="pane-payload"', 'id="pane-request"', 'id="pane-answers"', 'id="explain"'):
        assert pane in page
    assert "jane@example.com" in page  # the payload as received
    assert event["properties"]["order_id"] in page
    assert "/track/sale" in page and "would send now" in page
    assert 'id="redrive"' in page


def test_detail_lists_each_call_with_dubs_answer(c: Any, capp: Any) -> None:
    """Dub's answer pane is a table with headers and a row per call kept (its number, time,
    call, HTTP status, the Retry-After applied), each followed by Dub's answer on a row of
    its own, across the table."""
    ledger = ledger_of(capp)
    body = {"customerExternalId": "u", "eventName": "Purchase", "amount": 1999}
    ledger.claim_many([ClaimRequest("m-c", "order-sale", "sale", "Order Completed", "u", body)])
    calls = [
        Attempt(1.0, "POST", "/track/sale", 503, '{"error":{"code":"busy"}}', retry_after=2.5),
        Attempt(3.0, "POST", "/track/sale", 422, '{"error":{"code":"unprocessable_entity"}}'),
    ]
    ledger.finish("m-c", "order-sale", State.REJECTED, calls=2, status=422, answers=calls)
    page = text(c.get("/console/events/m-c"))
    pane = page[page.index('id="pane-answers"') : page.index('id="explain"')]
    for header in ("#", "Time", "Call", "HTTP status", "Retry-After applied"):
        assert f'<th scope="col">{header}</th>' in pane.replace("&#39;", "'")
    answers = re.findall(r'data-answer-of="(\d+)"><td colspan="5"><pre[^>]*>([^<]*)</pre>', pane)
    assert [(n, json.loads(html.unescape(a))) for n, a in answers] == [
        ("1", {"error": {"code": "busy"}}), ("2", {"error": {"code": "unprocessable_entity"}}),
    ]  # fmt: skip
    assert re.findall(r'data-attempt="(\d+)" data-status="(\d+)"', pane) == [
        ("1", "503"), ("2", "422"),
    ]  # fmt: skip
    assert "2.5 s" in pane and "unprocessable_entity" in pane and "POST /track/sale" in pane


def test_unknown_message_id_is_404(c: Any) -> None:
    """A messageId the ledger does not hold is a 404 page naming it."""
    answer = c.get("/console/events/nope")
    assert answer.status_code == 404 and "nope" in text(answer)


def test_redrive_sends_once_and_shows_the_result(
    c: Any, capp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redrive from the detail page sends the conversion, shows the outcome, logs the action
    as a JSON line's fields; a second redrive sends nothing."""
    dead(capp, "m-r")
    page = c.get("/console/events/m-r")
    with responses.RequestsMock() as dub, caplog.at_level(logging.INFO, "bridge.console"):
        dub.add(responses.POST, f"{DUB}/track/sale", json=sale_ok())
        done = c.post("/console/events/m-r/redrive", data={"csrf": csrf_of(page)})
        again = c.post("/console/events/m-r/redrive", data={"csrf": csrf_of(page)})
        assert len(dub.calls) == 1
    assert 'data-outcome="delivered"' in text(done)
    assert "Nothing to redrive" in text(again)
    assert ledger_of(capp).get("m-r", "order-sale").state is State.DELIVERED
    actions = [r.__dict__ for r in caplog.records if r.getMessage() == "console action"]
    assert {"action": "redrive", "result": "1 delivered", "messageIds": ["m-r"]}.items() <= (
        actions[0].items()
    )


# --- bulk redrive ------------------------------------------------------------------------------------


def test_bulk_redrive_plans_then_runs_once(c: Any, capp: Any) -> None:
    """The plan is a dry run (nothing sent) counting what would be sent; 'Redrive N' sends
    each once; running it again sends nothing."""
    for i in range(3):
        dead(capp, f"b{i}")
    with responses.RequestsMock() as dub:
        dub.add(responses.POST, f"{DUB}/track/sale", json=sale_ok())
        plan = c.get("/console/redrive?state=dead")
        assert not dub.calls
        assert 'data-outcome="dry_run">3<' in text(plan)
        assert "Redrive 3" in text(plan)
        data = {"csrf": csrf_of(plan), "state": "dead"}
        done = c.post("/console/redrive", data=data)
        assert 'data-outcome="delivered">3<' in text(done)
        again = c.post("/console/redrive", data=data)
        assert "nothing to redrive" in text(again)
        assert len(dub.calls) == 3


def test_bulk_plan_follows_the_filters(c: Any, capp: Any) -> None:
    """The plan takes only the dead letters the list's filters choose."""
    dead(capp, "keep")
    dead(capp, "other")
    plan = text(c.get("/console/redrive?q=keep"))
    assert re.findall(r'<tr data-message-id="([^"]+)"', plan) == ["keep"]


# --- try a mapping ---------------------------------------------------------------------------------


def test_try_explains_with_the_active_set_and_writes_nothing(c: Any, capp: Any) -> None:
    """Try with the active set: the explain as HTML and the exact Dub body; the ledger holds
    no row afterwards and nothing is sent."""
    csrf = csrf_of(c.get("/console/try"))
    with responses.RequestsMock() as dub:
        answer = c.post("/console/try", data={"csrf": csrf, "event": json.dumps(order("t-1"))})
        assert not dub.calls
    page = text(answer)
    assert answer.status_code == 200
    assert 'data-mapping="order-sale"' in page and "would send" in page
    assert "&#34;amount&#34;: 1999" in page or '"amount": 1999' in page
    assert ledger_of(capp).rows_of("t-1") == []


TRIED = """\
mappings:
  - name: tried-sale
    trigger: {event: Order Completed}
    action: sale
    fields:
      customerExternalId: {path: $.userId, transform: string}
      amount: {path: $.properties.revenue, transform: minor_units}
      currency: {path: $.properties.currency, transform: lower}
      eventName: {value: Tried}
"""


def test_try_a_mapping_file_instead_of_the_active_set(c: Any) -> None:
    """A mapping pasted in the second textarea is tried instead of the active set."""
    csrf = csrf_of(c.get("/console/try"))
    answer = c.post(
        "/console/try", data={"csrf": csrf, "event": json.dumps(order("t-2")), "mapping": TRIED}
    )
    page = text(answer)
    assert 'data-mapping="tried-sale"' in page, page
    assert 'data-mapping="order-sale"' not in page


def test_try_shows_mapping_errors_with_line_numbers(c: Any) -> None:
    """A broken mapping file's errors are listed with their line numbers (400)."""
    csrf = csrf_of(c.get("/console/try"))
    broken = TRIED.replace("action: sale", "action: rebate")
    answer = c.post(
        "/console/try", data={"csrf": csrf, "event": json.dumps(order()), "mapping": broken}
    )
    assert answer.status_code == 400
    assert re.search(r'data-line="4">tried\.yaml:4: ', text(answer))


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("", "event: empty"),
        ('{"event": "x",\n  oops}', "event: not JSON (line 2, column 3)"),
        ("[1, 2]", "event: a JSON object (one Segment event), not list"),
        ("[" * 100_000, "event: "),
    ],
)
def test_try_a_bad_event_says_what_is_wrong(c: Any, event: str, message: str) -> None:
    """An event that is empty, not JSON (line and column given) or not an object is a 400
    with a clear message."""
    csrf = csrf_of(c.get("/console/try"))
    answer = c.post("/console/try", data={"csrf": csrf, "event": event})
    assert answer.status_code == 400
    assert message in text(answer)


def test_try_this_event_prefills_the_stored_payload(c: Any, capp: Any) -> None:
    """'Try this event' from a detail page fills the textarea with the stored payload."""
    dead(capp, "m-t")
    assert "m-t" in text(c.get("/console/try?message_id=m-t"))
    assert c.get("/console/try?message_id=absent").status_code == 404


# --- mappings --------------------------------------------------------------------------------------


def test_mappings_page_shows_the_active_set_from_files(c: Any, capp: Any) -> None:
    """The active set (version, source, mappings, files); no Publish when it follows files,
    and a publish POST is refused there (409)."""
    page = text(c.get("/console/mappings"))
    assert capp.extensions["bridge"].store.engine.version in page
    assert "order-sale" in page and "sales.yaml" in page
    assert 'id="publish-button"' not in page
    csrf = csrf_of(c.get("/console/mappings"))
    assert c.post("/console/mappings/publish", data={"csrf": csrf}).status_code == 409


@pytest.fixture
def dbapp(tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    """A console following the database's published set, with its own copy of the files."""
    import shutil

    folder = tmp_path / "maps"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("samples"))
    settings = make_settings(
        tmp_path, console_token=TOKEN, mappings_dir=folder, mappings_source="database"
    )
    app = create_app(settings, clock=clock)
    yield app, folder
    app.extensions["bridge"].close()


def test_publish_history_diff_and_rollback(dbapp: Any) -> None:
    """With the database as source: Publish validates and activates the folder, the history
    lists it with who and why, a diff shows the file change, Rollback brings the first back."""
    app, folder = dbapp
    client = app.test_client()
    log_in(client)
    csrf = csrf_of(client.get("/console/mappings"))
    first = client.post(
        "/console/mappings/publish", data={"csrf": csrf, "author": "ops", "message": "first"}
    )
    assert "published" in text(first)
    sales = folder / "sales.yaml"
    sales.write_text(sales.read_text().replace("Completed orders,", "Completed orders (v2),", 1))
    client.post("/console/mappings/publish", data={"csrf": csrf, "message": "second"})
    ledger = ledger_of(app)
    history = ledger.activations(10)
    assert [a.message for a in history] == ["second", "first"]
    assert history[0].author == "console" and history[1].author == "ops"
    page = text(
        client.get(f"/console/mappings?base={history[1].version}&head={history[0].version}")
    )
    assert "+    description: Completed orders (v2)," in page
    back = client.post(
        "/console/mappings/rollback", data={"csrf": csrf, "version": history[1].version}
    )
    assert f"rolled back to {history[1].version}" in text(back)
    assert ledger.active_mapping_set().version == history[1].version


def test_publish_of_a_broken_folder_is_refused_with_its_errors(dbapp: Any) -> None:
    """A folder that does not validate is not published: its errors are shown (400)."""
    app, folder = dbapp
    client = app.test_client()
    log_in(client)
    (folder / "broken.yaml").write_text("mappings:\n  - name: x\n")
    csrf = csrf_of(client.get("/console/mappings"))
    answer = client.post("/console/mappings/publish", data={"csrf": csrf})
    assert answer.status_code == 400
    assert "not published" in text(answer) and "broken.yaml:2" in text(answer)
    assert ledger_of(app).activations(10) == []


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"version": "nomatch"}, "none matches"),
        ({"version": ""}, "none matches"),
        ({"version": "x", "author": "a\u0007b"}, "author: holds a control character"),
    ],
)
def test_a_bad_rollback_is_refused(dbapp: Any, form: dict[str, str], message: str) -> None:
    """A rollback to no published version, or with an author that is not one line, is a 400
    saying why."""
    app, _ = dbapp
    client = app.test_client()
    log_in(client)
    csrf = csrf_of(client.get("/console/mappings"))
    answer = client.post("/console/mappings/rollback", data={"csrf": csrf, **form})
    assert answer.status_code == 400
    assert message in text(answer)


def test_diff_needs_two_kept_versions(dbapp: Any) -> None:
    """A diff naming a version the ledger does not keep is a 400."""
    app, _ = dbapp
    client = app.test_client()
    log_in(client)
    assert client.get("/console/mappings?base=a&head=b").status_code == 400


def test_header_on_every_page(c: Any) -> None:
    """Every page's header: ok/degraded, mapping version, ledger backend, dead-letter count."""
    for path in ("/console/events", "/console/try", "/console/mappings", "/console/redrive"):
        page = text(c.get(path))
        assert 'id="status" class="ok"' in page
        assert 'id="mapping-version"' in page and 'id="ledger-kind">sqlite<' in page
        assert 'id="dead-count">0<' in page


def test_counts_stop_at_the_cap_and_say_so(c: Any, capp: Any, monkeypatch: Any) -> None:
    """A state's count stops at the cap (its cost bounded on a big ledger) and shows a `+`;
    the header's dead-letter count too."""
    from bridge.web.console import blueprint

    monkeypatch.setattr(blueprint, "COUNT_CAP", 2)
    for i in range(3):
        dead(capp, f"cap-{i}")
    page = text(c.get("/console/events"))
    assert 'data-state="invalid">2+<' in page
    assert 'id="dead-count">2+<' in page


def test_a_forwarded_address_does_not_escape_the_slowdown(capp: Any, clock: ManualClock) -> None:
    """Failed logins claiming another address in X-Forwarded-For are still slowed together."""
    client = capp.test_client()
    for i in range(3):
        csrf = csrf_of(client.get("/console/login"))
        client.post(
            "/console/login",
            data={"token": f"wrong-{i}", "csrf": csrf},
            headers={"X-Forwarded-For": f"10.0.0.{i}"},
        )
    assert clock.slept[-3:] == [0.5, 1.0, 1.5]

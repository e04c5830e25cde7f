"""/metrics: who may scrape it, what survives a database outage, database-wide gauges counted
once, the webhook's latency histogram and the reason of its 503s, and the README's alerts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import responses
import yaml

from bridge.core.errors import LedgerError, SettingsError
from bridge.core.settings import Settings
from bridge.web.app import create_app
from bridge.web.scrape import CLOSED
from tests.conftest import DUB, MAPPINGS, body_of, make_settings, order, sale_ok
from tests.helpers.fakes import ManualClock
from tests.helpers.tcpproxy import TCPProxy

README = Path(__file__).resolve().parents[1] / "README.md"


def series(text: str, name: str) -> dict[str, float]:
    """Every sample of ``name`` in an exposition: its label text -> value."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(\{{.*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def added(before: str, after: str, name: str) -> dict[str, float]:
    """What each series of ``name`` gained between two scrapes (the registry outlives a test)."""
    old = series(before, name)
    return {k: v - old.get(k, 0.0) for k, v in series(after, name).items() if v != old.get(k)}


def value(text: str, name: str, labels: str = "") -> float:
    return series(text, name).get(labels, 0.0)


@pytest.fixture
def public_app(tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    app = create_app(make_settings(tmp_path, metrics_public=True), clock=clock)
    yield app
    app.extensions["bridge"].close()


def scrape(app: Any) -> str:
    answer = app.test_client().get("/metrics")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return str(answer.get_data(as_text=True))


def post(app: Any, data: Any) -> Any:
    return app.test_client().post("/segment", data=body_of(data), content_type="application/json")


# --- who may scrape (issue 23) --------------------------------------------------------------------


def test_metrics_are_closed_without_a_token_unless_made_public(tmp_path: Path) -> None:
    """No BRIDGE_METRICS_TOKEN and no BRIDGE_METRICS_PUBLIC=1: 403 saying how to open it."""
    app = create_app(make_settings(tmp_path))
    try:
        answer = app.test_client().get("/metrics")
        assert answer.status_code == 403
        assert answer.get_json() == {"error": {"code": "metrics_closed", "message": CLOSED}}
        assert "bridge_" not in answer.get_data(as_text=True)
    finally:
        app.extensions["bridge"].close()


def test_public_metrics_are_served_to_anyone(public_app: Any) -> None:
    """BRIDGE_METRICS_PUBLIC=1 serves /metrics without a token."""
    assert "bridge_webhook_requests_total" in scrape(public_app)


def test_metrics_access_settings_are_checked() -> None:
    """A token and BRIDGE_METRICS_PUBLIC=1 together, or an unreadable flag, fail at start-up
    naming the variable (the token never echoed)."""
    with pytest.raises(SettingsError) as both:
        Settings.from_env({"BRIDGE_METRICS_TOKEN": "t0ken", "BRIDGE_METRICS_PUBLIC": "1"})
    assert "BRIDGE_METRICS_PUBLIC: expected unset when BRIDGE_METRICS_TOKEN" in both.value.message
    assert "t0ken" not in both.value.message
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({"BRIDGE_METRICS_PUBLIC": "maybe"})
    assert bad.value.message.startswith("bad setting: BRIDGE_METRICS_PUBLIC: expected")
    assert Settings.from_env({"BRIDGE_METRICS_PUBLIC": "1"}).metrics_public is True
    assert Settings.from_env({}).metrics_public is False


# --- a database outage (issue 25, 5) --------------------------------------------------------------


def test_counters_stay_served_while_the_ledger_cannot_be_read(
    public_app: Any, dub: responses.RequestsMock, clock: ManualClock, monkeypatch: Any
) -> None:
    """The ledger's rows cannot be read: /metrics still answers 200 with the webhook's
    counters, leaves the ledger gauges out and says bridge_ledger_up 0; they come back
    with the ledger."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    before = scrape(public_app)
    assert post(public_app, order("m-out")).status_code == 200
    clock.advance(6)  # past the rows read by the first scrape
    ledger = public_app.extensions["bridge"].ledger
    calls = []

    def down() -> dict[Any, int]:
        calls.append(1)
        raise LedgerError("the ledger does not answer (injected)")

    monkeypatch.setattr(ledger, "counts", down)
    text = scrape(public_app)
    assert added(before, text, "bridge_webhook_requests_total") == {'{reason="",status="200"}': 1}
    assert series(text, "bridge_ledger_rows") == {}
    assert "bridge_ledger_oldest_unsettled_seconds" not in text
    assert list(series(text, "bridge_ledger_up").values()) == [0.0]
    scrape(public_app)
    assert len(calls) == 1  # a failed read is cached too: an outage costs one wait per 5 s
    monkeypatch.undo()
    clock.advance(6)
    text = scrape(public_app)
    assert list(series(text, "bridge_ledger_up").values()) == [1.0]
    assert sum(series(text, "bridge_ledger_rows").values()) == 1


@pytest.mark.slow  # the pool's real connect timeout
def test_a_postgresql_outage_keeps_the_counters_served(
    pg_url: str, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """PostgreSQL gone while running (the connection cut): /metrics answers 200 with the
    webhook's counters, bridge_ledger_up 0 and no ledger rows; they return with the database."""
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    proxy = TCPProxy((str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)))
    proxy.start()
    settings = Settings.from_env(
        {},
        dub_api_key="k",
        dub_api_url=DUB,
        mappings_dir=MAPPINGS,
        reload_seconds=0,
        database_url=_as_url(info, proxy.port),
        db_timeout=1.0,
        metrics_public=True,
    )
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    app = create_app(settings, clock=clock)
    try:
        before = scrape(app)
        assert post(app, order("pg-before")).status_code == 200
        proxy.cut()
        assert post(app, order("pg-during")).status_code == 503
        clock.advance(6)
        text = scrape(app)
        assert added(before, text, "bridge_webhook_requests_total") == {
            '{reason="",status="200"}': 1,
            '{reason="ledger_unavailable",status="503"}': 1,
        }
        assert list(series(text, "bridge_ledger_up").values()) == [0.0]
        assert series(text, "bridge_ledger_rows") == {}
        proxy.restore()
        assert post(app, order("pg-during")).status_code == 200
        clock.advance(6)
        text = scrape(app)
        assert list(series(text, "bridge_ledger_up").values()) == [1.0]
        assert sum(series(text, "bridge_ledger_rows").values()) == 2
    finally:
        app.extensions["bridge"].close()
        proxy.cut()


def _as_url(info: dict[str, Any], port: int) -> str:
    user = info.get("user") or "postgres"
    password = f":{info['password']}" if info.get("password") else ""
    return f"postgresql://{user}{password}@127.0.0.1:{port}/{info.get('dbname') or 'postgres'}"


# --- database-wide gauges counted once (issue 25, 5) ----------------------------------------------


def test_instances_sharing_a_ledger_report_it_under_one_label(
    tmp_path: Path, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Two instances on one ledger export its rows under the same ``ledger`` label, so
    ``max by (ledger, state)`` counts each row once (a sum over instances counted it twice)."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    apps = [create_app(make_settings(tmp_path, metrics_public=True), clock=clock) for _ in range(2)]
    try:
        assert post(apps[0], [order("a"), order("b")]).status_code == 200
        assert post(apps[1], order("c")).status_code == 200
        scrapes = [series(scrape(app), "bridge_ledger_rows") for app in apps]
    finally:
        for app in apps:
            app.extensions["bridge"].close()
    label = f'{{ledger="sqlite:{(tmp_path / "ledger.sqlite3").resolve()}",state="delivered"}}'
    assert scrapes[0] == scrapes[1] == {label: 3.0}


def alert_rules() -> list[dict[str, Any]]:
    text = README.read_text()
    block = text.split("Alert rules to start from", 1)[1].split("```yaml", 1)[1]
    rules: list[dict[str, Any]] = yaml.safe_load(block.split("```", 1)[0])["groups"][0]["rules"]
    return rules


def test_readme_alerts_count_database_wide_gauges_once() -> None:
    """Every database-wide gauge in the README's alerts is first reduced to one value per
    ledger (max or min by ledger), so several instances never multiply it."""
    rules = alert_rules()
    seen = 0
    for rule in rules:
        expr = " ".join(rule["expr"].split())
        for match in re.finditer(r"bridge_ledger_\w+", expr):
            seen += 1
            before = expr[: match.start()]
            assert re.search(r"(max|min) by \(ledger(, state)?\) \($", before), (
                f"{rule['alert']}: {match.group()} is not reduced per ledger first: {expr}"
            )
    assert seen >= 3


# --- the webhook's latency and the reason of a 503 (issue 25, 5) ----------------------------------


def test_webhook_latency_is_a_histogram(
    public_app: Any, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Each POST /segment is timed from the request to its answer, on the service's clock."""

    def slow_dub(_: Any) -> tuple[int, dict[str, str], str]:
        clock.advance(1.5)  # Dub takes 1.5 s of the service's time
        return 200, {}, json.dumps(sale_ok())

    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=slow_dub)
    before = scrape(public_app)
    assert post(public_app, order("slow")).status_code == 200
    text = scrape(public_app)
    name = "bridge_webhook_request_seconds"
    for le, added in (("1.0", 0), ("2.0", 1), ("+Inf", 1)):
        bucket = f'{{le="{le}"}}'
        assert value(text, f"{name}_bucket", bucket) == value(before, f"{name}_bucket", bucket) + (
            added
        )
    assert value(text, f"{name}_count") == value(before, f"{name}_count") + 1
    assert value(text, f"{name}_sum") - value(before, f"{name}_sum") == pytest.approx(1.5)


@pytest.mark.parametrize(("dub_status", "reason"), [(503, "dub_failed"), (429, "dub_rate_limited")])
def test_a_503_is_counted_with_its_reason(
    tmp_path: Path, clock: ManualClock, dub: responses.RequestsMock, dub_status: int, reason: str
) -> None:
    """A 503 from Dub failing, or from Dub's rate limit (not queued), is counted under that
    reason."""
    error = {"error": {"code": "x", "message": "no", "doc_url": "https://dub.co/docs"}}
    dub.post(f"{DUB}/track/sale", json=error, status=dub_status, headers={"Retry-After": "1"})
    settings = make_settings(tmp_path, metrics_public=True, queue_when_limited=False)
    app = create_app(settings, clock=clock)
    try:
        before = scrape(app)
        assert post(app, order("r")).status_code == 503
        counted = added(before, scrape(app), "bridge_webhook_requests_total")
        assert counted == {f'{{reason="{reason}",status="503"}}': 1.0}
    finally:
        app.extensions["bridge"].close()


def test_a_503_for_the_ledger_is_counted_as_such(public_app: Any, monkeypatch: Any) -> None:
    """The ledger not answering makes a 503 counted as ledger_unavailable; other statuses
    have no reason."""
    ledger = public_app.extensions["bridge"].ledger

    def down(*args: Any, **kwargs: Any) -> Any:
        raise LedgerError("the ledger does not answer (injected)")

    monkeypatch.setattr(ledger, "claim_many", down)
    before = scrape(public_app)
    assert post(public_app, order("l")).status_code == 503
    assert post(public_app, {"type": "page", "messageId": "p"}).status_code == 200
    assert public_app.test_client().post("/segment", data=b"{").status_code == 400
    counted = added(before, scrape(public_app), "bridge_webhook_requests_total")
    assert counted == {
        '{reason="ledger_unavailable",status="503"}': 1.0,
        '{reason="",status="200"}': 1.0,
        '{reason="",status="400"}': 1.0,
    }

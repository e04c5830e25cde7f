"""What an operator sees and does: health, readiness and liveness, Prometheus metrics, request
ids and refused-request lines, the last good mappings surviving a restart, mappings published
to every instance, and `bridge check`."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner

from bridge.cli import main
from bridge.core.errors import MappingFileError
from bridge.core.logs import JSONFormatter
from bridge.core.settings import Settings
from bridge.ledger import open_ledger
from bridge.service.store import MappingStore
from bridge.web.app import create_app
from tests.conftest import DUB, MAPPINGS, body_of, make_settings, order, sale_ok
from tests.helpers.fakes import ManualClock


def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "maps"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("samples"))
    return folder


def break_files(folder: Path) -> None:
    (folder / "sales.yaml").write_text("mappings: [{name: broken}]\n")


@pytest.fixture
def logged() -> Iterator[Any]:
    """A function giving every JSON line the bridge logged so far in the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logging.getLogger("bridge").addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger("bridge").removeHandler(handler)


# --- health ---------------------------------------------------------------------------------------


def test_livez_readyz_and_healthz(client: Any) -> None:
    """A healthy worker is alive, ready (with its version) and ok."""
    assert client.get("/livez").get_json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    health = client.get("/healthz").get_json()
    assert health["status"] == "ok" and health["ledger"] == {"kind": "sqlite", "problem": None}
    assert health["source"] == "files" and health["origin"] == "files"


def test_not_ready_while_draining_or_without_the_ledger(tmp_path: Path, clock: ManualClock) -> None:
    """Readiness fails, saying why, when the worker drains or the ledger does not answer."""
    app = create_app(make_settings(tmp_path), clock=clock)
    try:
        service = app.extensions["bridge"]
        service.draining = True
        answer = app.test_client().get("/readyz")
        assert answer.status_code == 503
        assert answer.get_json()["reasons"] == ["draining: shutting down"]
        service.draining = False
        service.ledger.close()
        (tmp_path / "ledger.sqlite3").unlink()
        (tmp_path / "ledger.sqlite3").mkdir()  # the file is gone, a folder in its place
        clock.advance(3)  # past the cached answer of the last check
        answer = app.test_client().get("/readyz")
        assert answer.status_code == 503
        assert answer.get_json()["reasons"][0].startswith("the ledger does not answer")
        assert app.test_client().get("/healthz").get_json()["status"] == "degraded"
    finally:
        app.extensions["bridge"].close()


def test_not_ready_while_the_ledger_cannot_write(tmp_path: Path, clock: ManualClock) -> None:
    """Reads answer but writes fail (another process holds the write lock past the wait):
    /readyz answers 503 saying the ledger cannot write, and ready again once writes work."""
    app = create_app(make_settings(tmp_path), clock=clock)
    client = app.test_client()
    holder = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    try:
        assert client.get("/readyz").status_code == 200
        holder.execute("BEGIN IMMEDIATE")  # every write of the service now waits, then fails
        clock.advance(3)  # past the cached answer of the last check
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        (reason,) = answer.get_json()["reasons"]
        assert reason.startswith("the ledger cannot write: ledger ") and "locked" in reason
        assert client.get("/healthz").get_json()["ledger"]["problem"] == reason
        holder.execute("ROLLBACK")
        clock.advance(3)
        assert client.get("/readyz").status_code == 200
    finally:
        holder.close()
        app.extensions["bridge"].close()


def test_healthz_is_degraded_while_a_rejected_edit_waits(tmp_path: Path) -> None:
    """A rejected reload keeps the last good mappings (still ready) and /healthz says degraded."""
    folder = copy(tmp_path)
    app = create_app(make_settings(tmp_path, mappings_dir=folder))
    try:
        store = app.extensions["bridge"].store
        break_files(folder)
        assert store.check() is False
        client = app.test_client()
        health = client.get("/healthz").get_json()
        assert health["status"] == "degraded" and "broken" in health["lastError"]
        assert client.get("/readyz").status_code == 200
    finally:
        app.extensions["bridge"].close()


# --- metrics --------------------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_metrics_count_events_dub_calls_and_ledger_rows(
    tmp_path: Path, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """/metrics has the issue's figures: events, Dub calls and latency, webhook answers,
    ledger rows and the mapping version."""
    app = create_app(make_settings(tmp_path, metrics_public=True), clock=clock)
    try:
        client = app.test_client()
        dub.post(f"{DUB}/track/sale", json=sale_ok())
        before = client.get("/metrics").get_data(as_text=True)
        client.post("/segment", data=body_of(order("metric")), content_type="application/json")
        clock.advance(6)  # the ledger's rows are read again every few seconds, not per scrape
        text = client.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["bridge"].close()
    delivered = 'bridge_events_total{mapping="order-sale",outcome="delivered"}'
    assert metric(text, delivered) == metric(before, delivered) + 1
    sale_ok_calls = 'bridge_dub_requests_total{endpoint="sale",status="200"}'
    assert metric(text, sale_ok_calls) == metric(before, sale_ok_calls) + 1
    assert 'bridge_dub_request_seconds_bucket{endpoint="sale"' in text
    assert metric(text, 'bridge_webhook_requests_total{reason="",status="200"}') >= 1
    assert 'bridge_webhook_request_seconds_bucket{le="0.005"}' in text
    assert metric(text, "bridge_ledger_rows{ledger=") == 1
    assert metric(text, "bridge_ledger_oldest_unsettled_seconds{ledger=") == 0.0
    assert metric(text, "bridge_ledger_up{ledger=") == 1.0
    assert 'bridge_mappings_info{version="' in text
    for name in ("bridge_retries_total", "bridge_rate_limit_waits_total"):
        assert name in text


def test_metrics_token_protects_the_endpoint(tmp_path: Path) -> None:
    """With BRIDGE_METRICS_TOKEN, /metrics answers only a matching bearer token."""
    app = create_app(make_settings(tmp_path, metrics_token="s3cret"))
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        good = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and "bridge_" in good.get_data(as_text=True)
    finally:
        app.extensions["bridge"].close()


# --- request ids and refused requests -------------------------------------------------------------


def test_request_id_is_kept_echoed_and_on_every_line(
    client: Any, dub: responses.RequestsMock, logged: Any
) -> None:
    """A given X-Request-Id comes back and is on every line the request logs, the calls'
    included; one is made when none (or an unsafe one) is given."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    answer = client.post(
        "/segment",
        data=body_of([order("r1") | {"userId": "a"}, order("r2") | {"userId": "b"}]),
        headers={"Content-Type": "application/json", "X-Request-Id": "req-42"},
    )
    assert answer.headers["X-Request-Id"] == "req-42"
    events = [line for line in logged() if line["msg"] == "event"]
    assert len(events) == 2 and {line["requestId"] for line in events} == {"req-42"}
    assert all(isinstance(line["pid"], int) for line in events)
    made = client.get("/livez", headers={"X-Request-Id": "bad id with spaces"})
    assert len(made.headers["X-Request-Id"]) == 32


def test_refused_requests_leave_one_line_without_their_body(tmp_path: Path, logged: Any) -> None:
    """401, 400 and 413 each log one line with the status and reason, never body content."""
    signed = create_app(make_settings(tmp_path, segment_shared_secret="s"))
    (tmp_path / "plain").mkdir()
    plain = create_app(make_settings(tmp_path / "plain", max_body_bytes=2048))
    try:
        signed.test_client().post(
            "/segment", data=b'{"secretish": "jane@example.com"', headers={"X-Signature": "x"}
        )
        client = plain.test_client()
        client.post("/segment", data=b'{"secretish": 1', content_type="application/json")
        client.post("/segment", data=b"[" + b" " * 4096 + b"]", content_type="application/json")
    finally:
        signed.extensions["bridge"].close()
        plain.extensions["bridge"].close()
    lines = logged()
    refused = [line for line in lines if line["msg"] == "request refused"]
    assert [(line["status"], line["code"]) for line in refused] == [
        (401, "unauthorized"),
        (400, "invalid_json"),
        (413, "payload_too_large"),
    ]
    assert all(line["requestId"] for line in refused)
    assert "jane" not in json.dumps(lines) and "secretish" not in json.dumps(lines)


# --- the last good mappings ------------------------------------------------------------------------


def test_a_restart_with_rejected_files_starts_from_the_last_good_set(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Files rejected at a worker's start: it starts from the last good set the ledger kept,
    says why, and switches back once the files are fixed."""
    folder = copy(tmp_path)
    settings = make_settings(tmp_path, mappings_dir=folder)
    ledger = open_ledger(settings, clock=clock)
    assert ledger is not None
    good = MappingStore(folder, ledger=ledger, poll_seconds=0, clock=clock)
    text = (folder / "sales.yaml").read_text()
    break_files(folder)
    restarted = MappingStore(folder, ledger=ledger, poll_seconds=0, clock=clock)
    assert restarted.engine.version == good.engine.version
    assert restarted.origin == "last-good" and restarted.degraded
    assert "broken.trigger" in (restarted.last_error or "")
    (folder / "sales.yaml").write_text(text + "\n# fixed\n")
    assert restarted.check() is True
    assert restarted.origin == "files" and not restarted.degraded
    ledger.close()


def test_no_last_good_set_means_the_start_fails(tmp_path: Path, clock: ManualClock) -> None:
    """With nothing good kept, invalid files at start-up are refused with every error."""
    folder = copy(tmp_path)
    break_files(folder)
    ledger = open_ledger(make_settings(tmp_path, mappings_dir=folder), clock=clock)
    with pytest.raises(MappingFileError, match="broken.trigger"):
        MappingStore(folder, ledger=ledger, poll_seconds=0, clock=clock)
    assert ledger is not None
    ledger.close()


# --- mappings published to every instance ----------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_publish_history_rollback_and_instances_follow(tmp_path: Path, clock: ManualClock) -> None:
    """A published set is what every instance following the database runs; history lists it,
    rollback brings the earlier one back, and an invalid folder is never published."""
    db = tmp_path / "ledger.sqlite3"
    env = {"BRIDGE_DB": str(db), "DUB_API_KEY": "k"}
    folder = copy(tmp_path)
    assert cli("db", "upgrade", env=env).exit_code == 0
    first = cli("mappings", "publish", str(folder), env=env)
    assert first.exit_code == 0 and first.stdout.startswith("published ")
    v1 = first.stdout.split()[1].rstrip(":")
    settings = Settings.from_env(
        {}, db_path=db, mappings_dir=folder, mappings_source="database", dub_api_key="k"
    )
    ledger = open_ledger(settings, clock=clock)
    assert ledger is not None
    instance = MappingStore(folder, source="database", ledger=ledger, poll_seconds=0, clock=clock)
    assert instance.engine.version == v1 and instance.origin == "database"
    (folder / "leads.yaml").write_text(
        (folder / "leads.yaml").read_text().replace("Signed Up", "Registered")
    )
    clock.advance(1)
    second = cli("mappings", "publish", str(folder), env=env)
    v2 = second.stdout.split()[1].rstrip(":")
    assert instance.check() is True and instance.engine.matches("Registered")
    listed = cli("mappings", "history", env=env).stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [["*", v2], [v1, "publish"]]
    clock.advance(1)
    assert cli("mappings", "rollback", v1[:6], env=env).stdout == f"rolled back to {v1}\n"
    assert instance.check() is True and instance.engine.version == v1
    break_files(folder)
    refused = cli("mappings", "publish", str(folder), env=env)
    assert refused.exit_code == 1 and "not published" in refused.stderr
    assert instance.check() is False and instance.engine.version == v1
    ledger.close()


def test_bridge_check_says_what_would_stop_a_start(tmp_path: Path) -> None:
    """`bridge check` runs the master's checks: each problem one line, exit 1; ok otherwise."""
    db = tmp_path / "ledger.sqlite3"
    env = {"BRIDGE_DB": str(db), "BRIDGE_MAPPINGS_DIR": str(MAPPINGS),
           "SEGMENT_SHARED_SECRET": "s"}  # fmt: skip
    missing = cli("check", env=env)
    assert missing.exit_code == 1
    assert [line.split(":")[0] for line in missing.stderr.splitlines()] == ["error", "error"]
    assert "DUB_API_KEY is not set" in missing.stderr and "no ledger there" in missing.stderr
    assert cli("db", "upgrade", env=env).exit_code == 0
    done = cli("check", env=env | {"DUB_API_KEY": "k"})
    assert done.exit_code == 0 and done.stdout == "ok: ready to start\n"

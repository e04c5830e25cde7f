"""PostgreSQL faults: unreachable at start-up, lost while running, a connection killed in the
middle of a transaction, and instances that start (and migrate) at the same moment."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import responses
from click.testing import CliRunner
from psycopg_pool.base import AttemptWithBackoff

from bridge.cli import main
from bridge.core.errors import LedgerConfigError, LedgerError
from bridge.core.settings import Settings
from bridge.ledger import open_ledger
from bridge.ledger.migrations import LATEST
from bridge.ledger.postgres import PROBE_SECONDS
from bridge.ledger.sql import SQLLedger
from bridge.web.app import create_app
from tests.conftest import DUB, MAPPINGS, fresh_database, order, pg_base_url, sale_ok
from tests.helpers.fakes import ManualClock
from tests.helpers.procs import free_port
from tests.helpers.tcpproxy import TCPProxy


def app_settings(url: str, **overrides: Any) -> Settings:
    values = {
        "dub_api_key": "dub_test_key_123",
        "dub_api_url": DUB,
        "mappings_dir": MAPPINGS,
        "reload_seconds": 0,
        "database_url": url,
        "db_timeout": 1.0,
        **overrides,
    }
    return Settings.from_env({}, **values)


def post(client: Any, event: dict[str, Any]) -> Any:
    return client.post("/segment", data=json.dumps(event), content_type="application/json")


def test_unreachable_at_start_up_refuses_in_one_line() -> None:
    """No database at DATABASE_URL: the app refuses to start with one line naming the
    setting and the reason, never the password; the CLI exits 2 with that line."""
    url = f"postgresql://bridge:s3cret@127.0.0.1:{free_port()}/ledger"
    with pytest.raises(LedgerConfigError) as info:
        create_app(app_settings(url))
    message = info.value.message
    assert message.startswith("DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:")
    assert "refused" in message.lower() and "s3cret" not in message and "\n" not in message
    done = CliRunner().invoke(main, ["deadletters"], env={"DATABASE_URL": url})
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [f"error: {message}"]


@pytest.fixture
def proxied_database(pg_url: str) -> Iterator[tuple[str, TCPProxy]]:
    """The test database behind a proxy the test can cut: a database that goes away."""
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    proxy = TCPProxy((str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)))
    proxy.start()
    url = pg_url.replace(f":{info.get('port') or 5432}/", f":{proxy.port}/")
    if f":{proxy.port}/" not in url:  # a URL without a port
        url = pg_url.replace(f"@{info.get('host')}/", f"@{info.get('host')}:{proxy.port}/")
    try:
        yield url, proxy
    finally:
        proxy.cut()


@pytest.mark.slow  # the pool's real connect timeout
def test_database_lost_while_running_answers_503_and_recovers(
    proxied_database: tuple[str, TCPProxy], dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """With the database gone the webhook answers 503 with Retry-After and calls Dub for
    nothing (no call without a claim); when it returns, the service recovers by itself."""
    url, proxy = proxied_database
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    app = create_app(app_settings(url), clock=clock)
    try:
        client = app.test_client()
        assert post(client, order("before")).status_code == 200
        proxy.cut()
        lost = post(client, order("during"))
        assert lost.status_code == 503 and int(lost.headers["Retry-After"]) >= 1
        assert lost.get_json()["error"]["code"] == "ledger_unavailable"
        assert len(dub.calls) == 1
        proxy.restore()
        assert post(client, order("during")).status_code == 200  # Segment's retry
        assert post(client, order("after")).status_code == 200
        assert post(client, order("before")).get_json()["counts"] == {"duplicate": 1}
    finally:
        app.extensions["bridge"].close()
    sent = [json.loads(c.request.body)["invoiceId"] for c in dub.calls]
    assert sorted(sent) == ["o-after", "o-before", "o-during"]


@pytest.mark.slow  # the pool's real connect timeout
@pytest.mark.parametrize("pool_size", [None, 1])
def test_a_long_outage_ends_with_the_first_request_after_it(
    proxied_database: tuple[str, TCPProxy], dub: responses.RequestsMock, clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch, pool_size: int | None,
) -> None:  # fmt: skip
    """After an outage long enough for the pool's reconnection backoff to reach a minute, the
    first request once the database is back is served (on a fresh pool), not 503'd for that
    minute; also when the pool held all the connections it may before the outage."""
    monkeypatch.setattr(AttemptWithBackoff, "INITIAL_DELAY", 60.0)  # as after a long outage
    assert PROBE_SECONDS < 1.0  # the pool's timeout here: a request may probe after it
    url, proxy = proxied_database
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    app = create_app(app_settings(url, db_pool_size=pool_size), clock=clock)
    try:
        client = app.test_client()
        assert post(client, order("before")).status_code == 200
        proxy.cut()
        assert post(client, order("during")).status_code == 503
        proxy.restore()
        # It waits out the pool's timeout (1 s, more than PROBE_SECONDS), then probes: up.
        assert post(client, order("during")).status_code == 200
    finally:
        app.extensions["bridge"].close()
    assert len(dub.calls) == 2


def test_connection_killed_mid_claim_loses_nothing(
    pg_url: str, dub: responses.RequestsMock, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_terminate_backend on the connection of a batch's claim (one statement, its own
    transaction) as it is sent: nothing is claimed, the claim is retried on a fresh
    connection, and every conversion is sent exactly once."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    original = SQLLedger._claim_chunk
    killed: list[int] = []

    def claim_then_die(self: SQLLedger, db: Any, *args: Any) -> Any:
        if not killed:
            killed.append(1)
            db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return original(self, db, *args)

    monkeypatch.setattr(SQLLedger, "_claim_chunk", claim_then_die)
    app = create_app(app_settings(pg_url), clock=clock)
    try:
        batch = {"batch": [order(f"k{i}") | {"userId": f"u{i}"} for i in range(5)]}
        answer = app.test_client().post(
            "/segment", data=json.dumps(batch), content_type="application/json"
        )
        assert answer.status_code == 200 and answer.get_json()["counts"] == {"delivered": 5}
        again = app.test_client().post(
            "/segment", data=json.dumps(batch), content_type="application/json"
        )
        assert again.get_json()["counts"] == {"duplicate": 5}
    finally:
        app.extensions["bridge"].close()
    assert killed == [1]
    assert sorted(json.loads(c.request.body)["invoiceId"] for c in dub.calls) == [
        f"o-k{i}" for i in range(5)
    ]


def test_connection_killed_between_the_call_and_its_record(
    pg_url: str, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Every ledger connection killed while Dub is answering: the answer is still recorded
    (on a fresh connection), so Segment's retry sends nothing twice."""

    def answer_and_kill(_: Any) -> tuple[int, dict[str, str], str]:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        return 200, {}, json.dumps(sale_ok())

    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=answer_and_kill)
    app = create_app(app_settings(pg_url), clock=clock)
    try:
        client = app.test_client()
        assert post(client, order("cut")).get_json()["counts"] == {"delivered": 1}
        assert post(client, order("cut")).get_json()["counts"] == {"duplicate": 1}
    finally:
        app.extensions["bridge"].close()
    assert len(dub.calls) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_instances_starting_together_all_migrate(kind: str, tmp_path: Path) -> None:
    """Eight processes' worth of start-ups at once on an empty database all succeed, and each
    migration is applied exactly once."""
    with empty_ledger_settings(kind, tmp_path) as settings:
        start = threading.Barrier(8)
        failures: list[BaseException] = []

        def boot() -> None:
            try:
                start.wait()
                ledger = open_ledger(settings)
                assert ledger is not None
                ledger.close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=boot) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == []
        ledger = open_ledger(settings)
        assert ledger is not None
        assert ledger.schema().current == LATEST and ledger.schema().up_to_date
        assert isinstance(ledger, SQLLedger)
        rows = ledger._run(
            lambda db: db.execute("SELECT version FROM schema_migrations").fetchall()
        )
        assert sorted(v for (v,) in rows) == list(range(1, LATEST + 1))
        ledger.close()


@contextlib.contextmanager
def empty_ledger_settings(kind: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings naming an empty ledger of that kind (nothing created yet)."""
    if kind == "sqlite":
        yield Settings.from_env({}, db_path=tmp_path / "fresh.sqlite3")
        return
    with fresh_database(pg_base_url()) as url:
        yield Settings.from_env({}, database_url=url)


def _backends(url: str) -> int:
    """Connections to this test's database, from any process."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _until(condition: Any, what: str) -> None:
    """Wait (real time: a pool's own threads) until ``condition()`` holds."""
    done = threading.Event()
    for _ in range(500):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError(f"never: {what}")


def test_a_busy_pool_is_not_taken_for_an_outage(pg_url: str, clock: ManualClock) -> None:
    """Every connection busy (the outbox's lock held) and the server up: a request waits out
    its timeout and gets the ledger's error, and the pool is kept: no probe, no second pool,
    no more connections than the setting allows."""
    ledger = open_ledger(app_settings(pg_url, db_pool_size=1, db_timeout=0.3), clock=clock)
    assert ledger is not None
    try:
        pool = ledger.pool  # type: ignore[attr-defined]
        with ledger.exclusive("outbox") as taken:
            assert taken
            with pytest.raises(LedgerError, match="no connection"):
                ledger.take_slots("dub", 10, 1)
            assert ledger.pool is pool  # type: ignore[attr-defined]
            assert _backends(pg_url) == 1
        assert ledger.take_slots("dub", 10, 1)[:2] == (1, 0.0)
    finally:
        ledger.close()


def test_a_request_waiting_on_a_replaced_pool_goes_on_with_the_fresh_one(
    pg_url: str, clock: ManualClock
) -> None:
    """A request still waiting on the pool that recovery replaced is served by the fresh
    pool, not failed."""
    ledger = open_ledger(app_settings(pg_url, db_pool_size=1, db_timeout=5.0), clock=clock)
    assert ledger is not None
    got: list[Any] = []
    try:
        stale = ledger.pool  # type: ignore[attr-defined]
        with ledger.exclusive("outbox"):
            waiter = threading.Thread(target=lambda: got.append(ledger.take_slots("dub", 9, 1)))
            waiter.start()
            _until(lambda: stale.get_stats().get("requests_waiting", 0) == 1, "a request waits")
            fresh = ledger._new_pool()  # type: ignore[attr-defined]
            fresh.open(wait=True)
            # As _recovered() swaps it, right after its probe (so no other probe is due).
            ledger._last_probe = time.monotonic()  # type: ignore[attr-defined]
            ledger.pool = fresh  # type: ignore[attr-defined]
            stale.close(timeout=0)
            waiter.join(timeout=10)
        assert [slots[:2] for slots in got] == [(1, 0.0)]
    finally:
        ledger.close()


def test_a_closed_ledger_stays_closed(pg_url: str, clock: ManualClock) -> None:
    """After close(), a late call (a background thread at exit) gets the ledger's error and
    opens no pool and no connection."""
    ledger = open_ledger(app_settings(pg_url), clock=clock)
    assert ledger is not None
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.take_slots("dub", 10, 1)
    with pytest.raises(LedgerError), ledger.exclusive("outbox"):
        pass
    assert ledger.pool.closed  # type: ignore[attr-defined]
    assert _backends(pg_url) == 0


def test_not_ready_while_postgres_cannot_write(pg_url: str, clock: ManualClock) -> None:
    """PostgreSQL answers reads but refuses writes with 'disk full' (53100): /readyz answers
    503 saying the ledger cannot write, and is ready again once writes work."""
    app = create_app(app_settings(pg_url), clock=clock)
    client = app.test_client()
    admin = psycopg.connect(pg_url, autocommit=True)
    try:
        assert client.get("/readyz").status_code == 200
        admin.execute(
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'"
            " USING ERRCODE = 'disk_full'; END$$"
        )
        admin.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON locks"
            " FOR EACH ROW EXECUTE FUNCTION disk_full()"
        )
        clock.advance(3)  # past the cached answer of the last check
        answer = client.get("/readyz")
        assert answer.status_code == 503
        (reason,) = answer.get_json()["reasons"]
        assert reason.startswith("the ledger cannot write: PostgreSQL at ")
        assert "No space left on device" in reason
        admin.execute("DROP TRIGGER disk_full ON locks")
        clock.advance(3)
        assert client.get("/readyz").status_code == 200
    finally:
        admin.execute("DROP TRIGGER IF EXISTS disk_full ON locks")
        admin.execute("DROP FUNCTION IF EXISTS disk_full()")
        admin.close()
        app.extensions["bridge"].close()


@pytest.mark.slow  # a database of its own
def test_bridge_check_on_an_empty_database_says_to_upgrade() -> None:
    """A PostgreSQL database holding no ledger yet (a first release phase run in the wrong
    order): `bridge check` fails and says to run `bridge db upgrade`."""
    with fresh_database(pg_base_url()) as url:
        env = {"DATABASE_URL": url, "DUB_API_KEY": "k", "BRIDGE_MAPPINGS_DIR": str(MAPPINGS),
               "SEGMENT_SHARED_SECRET": "s"}  # fmt: skip
        done = CliRunner().invoke(main, ["check"], env=env)
        assert done.exit_code == 1
        assert done.stderr.startswith("error: DATABASE_URL: schema version 0, ")
        assert done.stderr.rstrip().endswith("run `bridge db upgrade`")
        assert CliRunner().invoke(main, ["db", "upgrade"], env=env).exit_code == 0
        again = CliRunner().invoke(main, ["check"], env=env)
        assert again.exit_code == 0 and again.stdout == "ok: ready to start\n"

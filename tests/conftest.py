"""Shared fixtures: the default mappings, a configured app, signed requests, Dub's contract."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import responses

from bridge.core.results import LINE_KEYS as _LINE_KEYS
from bridge.core.settings import Settings
from bridge.mapping.engine import Engine
from bridge.service import wiring
from bridge.service.mapping_files import load_directory
from bridge.web.app import create_app
from bridge.web.signing import sign
from tests.helpers.fakedub import FakeDub
from tests.helpers.fakes import ManualClock
from tests.helpers.faultkit import Bridge, fault_settings

# The ledger fixtures (every backend), shared by the ledger contract files.
pytest_plugins = ["tests.helpers.ledgers"]

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
SAMPLES = MAPPINGS / "samples"
SHARED_DUB = ROOT.parent / "shared" / "dub"
DUB = "https://dub.test"
# The keys of a replay line.
LINE_KEYS = set(_LINE_KEYS)
SECRET = "segment-shared-secret"
# An event's time far ahead of every clock the tests use (real or manual): it counts as now,
# so these events are never too old, and an event without a readable time is never sent.
FRESH = "2100-01-01T00:00:00Z"


BACKGROUND_THREADS = ("mapping-reload", "ledger-maintenance")


@pytest.fixture(autouse=True)
def no_background_thread_outlives_its_test() -> Iterator[None]:
    """Every service a test starts is closed by its end: no poller thread is left running."""
    before = {t.ident for t in threading.enumerate()}
    yield
    left = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.name in BACKGROUND_THREADS and t.is_alive()
    ]
    assert not left, f"background threads left running: {left}"


@pytest.fixture(autouse=True)
def outbox_sent_by_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """No service's outbox sender runs in the background during a test: a test sends the
    queue itself (``Outbox.run_once``), so what is sent when never depends on threads."""
    monkeypatch.setattr(wiring, "OUTBOX_POLL_SECONDS", 0.0)


def needs_shared() -> Path:
    """Dub's contract from ../shared; skip (with the reason) where this checkout has none."""
    if not (SHARED_DUB / "track-openapi.json").is_file():
        pytest.skip(f"Dub's contract is not at {SHARED_DUB} (CI places ../shared beside the repo)")
    return SHARED_DUB


@pytest.fixture(scope="session")
def engine() -> Engine:
    return load_directory(MAPPINGS).engine


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dub_api_key": "dub_test_key_123",
        "dub_api_url": DUB,
        "mappings_dir": MAPPINGS,
        "db_path": tmp_path / "ledger.sqlite3",
        "reload_seconds": 0,
        "deadline_seconds": 2.0,
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when code sleeps on it: retries and waits cost nothing real."""
    return ManualClock()


@pytest.fixture
def app(settings: Settings, clock: ManualClock) -> Iterator[Any]:
    app = create_app(settings, clock=clock)
    yield app
    app.extensions["bridge"].close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def dub() -> Iterator[responses.RequestsMock]:
    """Dub's HTTP boundary, mocked; every request must be expected by the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def lead_ok(customer: str = "user_1") -> dict[str, Any]:
    return {
        "click": {"id": "cl_1"},
        "link": {
            "id": "link_1",
            "domain": "dub.sh",
            "key": "abc",
            "shortLink": "https://dub.sh/abc",
            "url": "https://example.com",
            "partnerId": None,
            "programId": None,
            "tenantId": None,
            "externalId": None,
        },
        "customer": {"name": None, "email": None, "avatar": None, "externalId": customer},
    }


def sale_ok(amount: int = 1999) -> dict[str, Any]:
    return {
        "eventName": "Purchase",
        "customer": {"id": "cus_1", "name": None, "email": None, "avatar": None, "externalId": "u"},
        "sale": {
            "amount": amount,
            "currency": "usd",
            "paymentProcessor": "custom",
            "invoiceId": None,
            "metadata": None,
        },
    }


def order(message_id: str = "m-1", **props: Any) -> dict[str, Any]:
    properties = {"order_id": f"o-{message_id}", "revenue": 19.99, "currency": "USD"}
    properties.update(props)
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": message_id,
        "userId": "user_1",
        "timestamp": FRESH,
        "properties": properties,
    }


def signup(message_id: str = "s-1", click: str | None = "cl_1", **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "event": "Sign Up",
        "messageId": message_id,
        "userId": "user_1",
        "timestamp": FRESH,
        "context": {"traits": {"email": "a@example.com"}},
        "properties": {"plan": "pro"},
    }
    if click:
        event["context"]["traits"]["clickId"] = click
    event.update(extra)
    return event


def body_of(data: Any) -> bytes:
    return json.dumps(data).encode()


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Signature": sign(body, secret)}


@pytest.fixture
def fake_dub() -> Iterator[FakeDub]:
    """The fake Dub server, running (a real HTTP server, unlike conftest's `dub` mock)."""
    fake = FakeDub(api_key="test-key").start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def bridge(fake_dub: FakeDub, tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """A factory: ``bridge(deadline_seconds=1.0)`` -> an app pointed at the fake Dub."""
    made: list[Bridge] = []

    def make(clock: Any = None, **overrides: Any) -> Bridge:
        db = tmp_path / "ledger.sqlite3"
        settings = fault_settings(fake_dub.url, db, **overrides)
        app = create_app(settings, clock=clock) if clock is not None else create_app(settings)
        made.append(Bridge(app, db))
        return made[-1]

    yield make
    for b in made:
        b.close()


# --- PostgreSQL ------------------------------------------------------------------------------

PG_ENV = "BRIDGE_TEST_DATABASE_URL"
PG_TABLES = (
    "dub_attempts",
    "deliveries",
    "rate_buckets",
    "rate_pauses",
    "locks",
    "mapping_sets",
    "mapping_activations",
    "signatures",
)


def pg_base_url() -> str:
    """The test server's URL; skips (saying how to run them) when unset, fails when unreachable."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV}, e.g. postgresql://postgres@127.0.0.1:5432/test"
            " (.ci/run sets it and starts the server)"
        )
    try:
        with psycopg.connect(base, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(f"{PG_ENV} is set, but PostgreSQL is unreachable: {exc}")
    return base


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def fresh_database(base: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    name = f"bridge_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(base, name)
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_session_database() -> Iterator[str]:
    """One database for the whole test run, created at its start and dropped at its end."""
    with fresh_database(pg_base_url()) as url:
        yield url


@pytest.fixture
def pg_url(pg_session_database: str) -> str:
    """The run's database, emptied of every row (the schema stays)."""
    with psycopg.connect(pg_session_database, autocommit=True) as conn:
        present = [
            t for t in PG_TABLES if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0]
        ]
        if present:
            conn.execute(f"TRUNCATE {', '.join(present)}")
    return pg_session_database


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the real PostgreSQL server are `slow`, as tests of other real servers are:
    the fast tier runs the same contracts on SQLite and memory; CI runs everything."""
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = "pg_url" in getattr(item, "fixturenames", ()) or (
            params is not None and "postgres" in params.params.values()
        )
        if on_postgres:
            item.add_marker(pytest.mark.slow)

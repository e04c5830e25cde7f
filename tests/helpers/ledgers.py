"""Ledgers on every backend (SQLite, memory, PostgreSQL), opened as the service opens
them: the fixtures every ledger contract file shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.core.clock import SYSTEM
from bridge.core.outcomes import State
from bridge.core.settings import Settings
from bridge.ledger import open_ledger
from bridge.ledger.base import (
    ClaimRequest,
    Ledger,
)
from tests.helpers.fakes import ManualClock

BACKENDS = ["sqlite", "memory", "postgres"]
LEASE = 30.0
MakeLedger = Callable[..., Ledger]
SOURCES: list[State | None] = [None, *State]


def backend_settings(kind: str, tmp_path: Path, pg_url: str | None = None) -> Settings:
    values: dict[str, Any] = {
        "ledger": "memory" if kind == "memory" else "on",
        "db_path": tmp_path / "ledger.sqlite3",
        "lease_seconds": LEASE,
    }
    if kind == "postgres":
        values["database_url"] = pg_url
    return Settings.from_env({}, **values)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    pg_url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    return backend_settings(kind, tmp_path, pg_url)


@pytest.fixture
def make_ledger(settings_for: Settings, clock: ManualClock) -> Iterator[MakeLedger]:
    """Opens the backend through open_ledger, as the service does; a second call gives a
    second handle on the same ledger where the backend is shared (another worker)."""
    opened: list[Ledger] = []

    def make(real_time: bool = False) -> Ledger:
        if settings_for.ledger == "memory" and opened:
            return opened[0]  # one process: every "worker" shares the one dict
        # real_time: for handles that race each other for real, whose waits for the lock
        # must be real waits (on the manual clock they would give up in a few spins).
        ledger = open_ledger(settings_for, clock=SYSTEM if real_time else clock)
        assert ledger is not None
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: MakeLedger) -> Ledger:
    return make_ledger()


def claim(ledger: Ledger, message_id: str = "m", mapping: str = "sale", **kw: Any) -> Any:
    wanted = ClaimRequest(
        message_id,
        mapping,
        kw.pop("action", "sale"),
        "Order Completed",
        kw.pop("customer", "u"),
        {"amount": 1},
    )
    (result,) = ledger.claim_many([wanted], **kw)
    return result

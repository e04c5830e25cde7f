"""The Procfile's web process: gunicorn workers build their service and close it on exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakedub import FakeDub
from tests.procs import REPO, ProcfileWeb, clean_env

pytestmark = pytest.mark.slow


def test_each_worker_closes_its_service_when_gunicorn_stops(tmp_path: Path) -> None:
    """On SIGTERM every gunicorn worker stops its background threads and closes its ledger."""
    with FakeDub(api_key="k").start() as fake:
        env = clean_env(
            DUB_API_KEY="k",
            DUB_API_URL=fake.url,
            BRIDGE_DB=str(tmp_path / "ledger.sqlite3"),
            BRIDGE_MAPPINGS_DIR=str(REPO / "mappings"),
            WEB_CONCURRENCY="2",
        )
        web = ProcfileWeb(env, tmp_path)
        web.start()
        web.stop()
    assert web.proc is not None and web.proc.returncode == 0, web.tail()
    lines = [json.loads(x) for x in web.log.read_text().splitlines() if x.startswith("{")]
    ready = [x for x in lines if x["msg"] == "bridge ready"]
    closed = [x for x in lines if x["msg"].startswith("service closed")]
    assert len(ready) == 2 and len(closed) == 2

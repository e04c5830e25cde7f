"""The Procfile: gunicorn workers build their service and close it on exit; the release phase
migrates, then checks what the new release would start from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridge.ledger import open_ledger
from bridge.settings import Settings
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


def procfile_release() -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("release:"):
            return line.removeprefix("release:").strip()
    raise AssertionError("Procfile has no release: line")


def test_release_phase_upgrades_then_refuses_an_unloadable_published_set(tmp_path: Path) -> None:
    """The release line migrates a new ledger and passes; once the active published set is
    one this release cannot load, it fails, saying so."""
    db = tmp_path / "ledger.sqlite3"
    env = clean_env(
        DUB_API_KEY="k",
        BRIDGE_DB=str(db),
        BRIDGE_MAPPINGS_DIR=str(REPO / "mappings"),
        BRIDGE_MAPPINGS_SOURCE="database",
    )

    def release() -> subprocess.CompletedProcess[str]:
        command = ["bash", "-c", procfile_release()]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)

    first = release()
    assert first.returncode == 0 and first.stdout.endswith("ok: ready to start\n"), first.stderr
    ledger = open_ledger(Settings.from_env({}, db_path=db))
    assert ledger is not None
    ledger.keep_mapping_set("v-next", [("m.yaml", "mappings: [{name: x, sampleRate: 1}]\n")], "p")
    ledger.activate_mapping_set("v-next", "publish")
    ledger.close()
    refused = release()
    assert refused.returncode == 1
    assert "published mapping set v-next cannot be loaded by this release" in refused.stderr

"""The Procfile: gunicorn workers build their service and close it on exit; what the web
process writes on stderr is JSON lines, crashes included; the release phase migrates, then
checks what the new release would start from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridge.core.settings import Settings
from bridge.ledger import open_ledger
from tests.helpers import procs
from tests.helpers.fakedub import FakeDub
from tests.helpers.procs import REPO, ProcfileWeb, clean_env, json_lines

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


def test_a_bad_web_concurrency_is_one_json_line(tmp_path: Path) -> None:
    """WEB_CONCURRENCY=abc (gunicorn reads it when it loads): one JSON line naming the
    variable, exit 1, no traceback, nothing but JSON on stderr."""
    env = clean_env(
        DUB_API_KEY="k",
        BRIDGE_DB=str(tmp_path / "ledger.sqlite3"),
        BRIDGE_MAPPINGS_DIR=str(REPO / "mappings"),
        WEB_CONCURRENCY="abc",
    )
    web = ProcfileWeb(env, tmp_path)
    web.start(wait=False)
    assert web.proc is not None and web.proc.wait(30) == 1
    lines = json_lines(web)
    assert [(line["level"], line["msg"]) for line in lines] == [
        (
            "error",
            "bad setting: WEB_CONCURRENCY: expected a valid integer, unable to parse string as"
            " an integer, found 'abc'",
        )
    ]


def test_a_worker_failing_to_boot_writes_json_lines_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose app raises while booting: gunicorn's traceback and the error it prints
    on stderr are JSON lines (the traceback in ``exc``), and the master stops."""
    (tmp_path / "boom_app.py").write_text(
        "def create_app():\n    raise RuntimeError('cannot boot: boom')\n"
    )
    web_line = procs.procfile_web()
    assert "'bridge.web.app:create_app()'" in web_line
    monkeypatch.setattr(
        procs,
        "procfile_web",
        lambda: web_line.replace("'bridge.web.app:create_app()'", "'boom_app:create_app()'"),
    )
    env = clean_env(
        DUB_API_KEY="k",
        BRIDGE_DB=str(tmp_path / "ledger.sqlite3"),
        BRIDGE_MAPPINGS_DIR=str(REPO / "mappings"),
        WEB_CONCURRENCY="1",
        PYTHONPATH=str(tmp_path),
    )
    web = ProcfileWeb(env, tmp_path)
    web.start(wait=False)
    assert web.proc is not None and web.proc.wait(30) != 0
    lines = json_lines(web)  # fails on any line that is not JSON
    crash = [line for line in lines if "exc" in line]
    assert crash and "RuntimeError: cannot boot: boom" in crash[0]["exc"]
    assert [line["msg"] for line in lines if line["logger"] == "stderr"] == ["cannot boot: boom"]
    assert any(line["msg"] == "Reason: Worker failed to boot." for line in lines)


def test_what_gunicorn_prints_before_its_hooks_is_json_too(tmp_path: Path) -> None:
    """A value gunicorn refuses while reading its options (PORT=abc), before any hook of the
    bridge runs: one JSON line with gunicorn's message, exit non-zero."""
    env = clean_env(
        DUB_API_KEY="k",
        BRIDGE_DB=str(tmp_path / "ledger.sqlite3"),
        BRIDGE_MAPPINGS_DIR=str(REPO / "mappings"),
        PORT="abc",
    )
    done = subprocess.run(
        ["bash", "-c", f"exec {procs.procfile_web()}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert [(x["level"], x["logger"]) for x in lines] == [("error", "stderr")]
    assert "'abc'" in lines[0]["msg"]  # gunicorn's own words, whichever version


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

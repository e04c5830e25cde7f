"""The Procfile's service as a platform runs it: checks once in the master, JSON logs only,
metrics summed over workers, a restarted worker that meets rejected files, and a drain on
SIGTERM that loses nothing and sends nothing twice."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.core.settings import Settings
from bridge.ledger import open_ledger
from bridge.mapping.loader import MappingText, load_texts
from tests.helpers.fakedub import FakeDub, Hold
from tests.helpers.faultkit import key_for, mixed_batch
from tests.helpers.procs import REPO, ProcfileWeb, clean_env, json_lines

pytestmark = pytest.mark.slow
MAPPINGS = REPO / "mappings"


def env_for(tmp_path: Path, fake: FakeDub, **extra: str) -> dict[str, str]:
    return clean_env(
        DUB_API_KEY="k",
        DUB_API_URL=fake.url,
        BRIDGE_DB=str(tmp_path / "ledger.sqlite3"),
        BRIDGE_MAPPINGS_DIR=str(extra.pop("maps", MAPPINGS)),
        WEB_CONCURRENCY="2",
        **extra,
    )


def exited(web: ProcfileWeb) -> int:
    assert web.proc is not None
    return web.proc.wait(30)


def test_a_bad_setting_stops_the_master_in_one_line(tmp_path: Path) -> None:
    """A bad setting: one JSON error line naming it, exit non-zero, no worker, no traceback."""
    with FakeDub(api_key="k").start() as fake:
        web = ProcfileWeb(env_for(tmp_path, fake, BRIDGE_DEADLINE_SECONDS="4s"), tmp_path)
        web.start(wait=False)
        assert exited(web) != 0
    lines = json_lines(web)
    errors = [line for line in lines if line["level"] == "error"]
    assert [e["msg"] for e in errors] == [
        "bad setting: BRIDGE_DEADLINE_SECONDS: expected a valid number, "
        "unable to parse string as a number, found '4s'"
    ]
    assert not any("Booting worker" in line["msg"] for line in lines)
    assert "Traceback" not in web.log.read_text()


def test_invalid_mappings_without_a_last_good_set_stop_the_start(tmp_path: Path) -> None:
    """Invalid files and nothing good kept: the master refuses to start, in one line."""
    maps = tmp_path / "maps"
    shutil.copytree(MAPPINGS, maps, ignore=shutil.ignore_patterns("samples"))
    (maps / "sales.yaml").write_text("mappings: [{name: broken}]\n")
    with FakeDub(api_key="k").start() as fake:
        web = ProcfileWeb(env_for(tmp_path, fake, maps=str(maps)), tmp_path)
        web.start(wait=False)
        assert exited(web) != 0
    errors = [line["msg"] for line in json_lines(web) if line["level"] == "error"]
    assert len(errors) == 1 and "broken.trigger" in errors[0] and "no last good" in errors[0]


def test_rejected_files_never_become_an_outage(tmp_path: Path) -> None:
    """Files turned invalid under a running service: a worker that dies and restarts, and a
    whole restart, start from the last good set (degraded), and events keep flowing."""
    maps = tmp_path / "maps"
    shutil.copytree(MAPPINGS, maps, ignore=shutil.ignore_patterns("samples"))
    with FakeDub(api_key="k").start() as fake:
        web = ProcfileWeb(env_for(tmp_path, fake, maps=str(maps)), tmp_path)
        web.start()
        try:
            good = requests.get(web.url + "/healthz", timeout=5).json()["version"]
            (maps / "sales.yaml").write_text("mappings: [{name: broken}]\n")
            workers = [p for p in _children(web) if p != web.proc.pid]  # type: ignore[union-attr]
            os.kill(workers[0], signal.SIGKILL)  # a crash: gunicorn boots a new worker
            _wait_for(lambda: len(_children(web)) == 2 and workers[0] not in _children(web))
            for _ in range(6):  # whichever worker answers
                health = requests.get(web.url + "/healthz", timeout=5).json()
                assert health["version"] == good
            web.stop()
            web.start()  # a redeploy with the same bad files
            health = requests.get(web.url + "/healthz", timeout=5).json()
            assert health["status"] == "degraded" and health["version"] == good
            answer = requests.post(web.url + "/segment", json=mixed_batch(4, "ok"), timeout=10)
            assert answer.status_code == 200, answer.text
        finally:
            web.stop()
    assert fake.recorded_count() == 4


def test_json_logs_and_metrics_summed_over_workers(tmp_path: Path) -> None:
    """Every line is JSON with its pid (gunicorn's own too); one scrape sums every worker's
    figures; each request has an access line with its id."""
    with FakeDub(api_key="k").start() as fake:
        web = ProcfileWeb(env_for(tmp_path, fake, BRIDGE_METRICS_PUBLIC="1"), tmp_path)
        web.start()
        web.wait_workers(2)
        try:
            for i in range(10):  # a new connection each: both workers take some
                requests.post(
                    web.url + "/segment",
                    json={"type": "page", "messageId": f"p{i}"},
                    headers={"X-Request-Id": f"rid-{i}", "Connection": "close"},
                    timeout=5,
                )
            text = requests.get(web.url + "/metrics", timeout=5).text
        finally:
            web.stop()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('bridge_webhook_requests_total{reason="",status="200"}')
    )
    assert total == 10
    lines = json_lines(web)
    assert all(isinstance(line["pid"], int) for line in lines)
    access = [
        line for line in lines if line["logger"] == "bridge.access" and line["path"] == "/segment"
    ]
    assert sorted(line["requestId"] for line in access) == sorted(f"rid-{i}" for i in range(10))
    # Both workers' figures are in one scrape: each wrote its own mapping-version gauge.
    assert (
        len([line for line in text.splitlines() if line.startswith("bridge_mappings_info{")]) == 2
    )


def test_sigterm_mid_batch_drains_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    """SIGTERM while a batch waits on a slow Dub: the drain is logged, the calls finish and
    are recorded; Segment's retry on a new process sends nothing twice."""
    gate = threading.Event()
    events = mixed_batch(6, "drain")
    with FakeDub(api_key="k").start() as fake:
        for event in events:
            fake.script(key_for(event), Hold(gate))
        env = env_for(tmp_path, fake, BRIDGE_DEADLINE_SECONDS="2")
        web = ProcfileWeb(env, tmp_path)
        web.start()
        answers: list[int] = []
        poster = threading.Thread(
            target=lambda: answers.append(
                requests.post(web.url + "/segment", json=events, timeout=30).status_code
            )
        )
        poster.start()
        assert fake.wait_until(lambda: fake.received_count() == 6, timeout=10)
        os.killpg(web.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        _wait_for(lambda: "drain started" in web.log.read_text())  # Dub answers only after
        gate.set()
        poster.join(30)
        assert exited(web) == 0
        lines = json_lines(web)
        web.start()  # the platform's new process; Segment retries the batch there
        try:
            retry = requests.post(web.url + "/segment", json=events, timeout=10)
        finally:
            web.stop()
    assert answers and answers[0] in (200, 503)
    assert retry.status_code == 200 and set(retry.json()["counts"]) == {"duplicate"}
    assert fake.received_count() == 6 and set(fake.recorded_by_key().values()) == {1}
    drains = Counter(line["msg"].split(":")[0] for line in lines if "drain" in line["msg"])
    assert drains["drain started"] >= 1 and drains["drain ended"] >= 1


def _children(web: ProcfileWeb) -> list[int]:
    assert web.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().split()
            except OSError:
                continue
            if int(stat[3]) == web.proc.pid:
                found.append(int(entry.name))
    return found


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)  # polling for a process to come up


def test_an_unloadable_published_set_starts_degraded_not_a_crash_loop(tmp_path: Path) -> None:
    """The active published set has a construct this release cannot load: the instance
    starts anyway, from the previous published set, and /healthz, /readyz and the gauge
    say why; events keep flowing."""
    db = tmp_path / "ledger.sqlite3"
    ledger = open_ledger(Settings.from_env({}, db_path=db))
    assert ledger is not None
    good = [(p.name, p.read_text()) for p in sorted(MAPPINGS.glob("*.yaml"))]
    newer = [
        (n, t.replace("  - name: order-sale\n", "  - name: order-sale\n    sampleRate: 1\n"))
        for n, t in good
    ]
    version = load_texts([MappingText(n, t.encode()) for n, t in good]).engine.version
    for label, files in ((version, good), ("v-next", newer)):
        ledger.keep_mapping_set(label, files, "publish")
        ledger.activate_mapping_set(label, "publish", author="test")
    ledger.close()
    with FakeDub(api_key="k").start() as fake:
        web = ProcfileWeb(
            env_for(tmp_path, fake, BRIDGE_MAPPINGS_SOURCE="database", BRIDGE_METRICS_PUBLIC="1"),
            tmp_path,
        )
        web.start()
        web.wait_workers(2)
        try:
            health = requests.get(web.url + "/healthz", timeout=5).json()
            assert health["status"] == "degraded" and health["version"] == version
            assert health["degradedCause"] == "published_unloadable"
            assert "v-next cannot be loaded by this release" in health["lastError"]
            ready = requests.get(web.url + "/readyz", timeout=5)
            assert ready.status_code == 200 and "sampleRate" in ready.json()["degraded"]
            text = requests.get(web.url + "/metrics", timeout=5).text
            answer = requests.post(web.url + "/segment", json=mixed_batch(2, "deg"), timeout=10)
            assert answer.status_code == 200, answer.text
        finally:
            web.stop()
    gauges = [
        line
        for line in text.splitlines()
        if line.startswith('bridge_mappings_degraded{cause="published_unloadable"')
    ]
    assert len(gauges) == 2 and all(line.endswith(" 1.0") for line in gauges)
    warnings = [line["msg"] for line in json_lines(web) if line["level"] == "warning"]
    assert any("published mapping set v-next cannot be loaded" in w for w in warnings)
    assert fake.recorded_count() == 2

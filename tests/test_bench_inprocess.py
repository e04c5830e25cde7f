"""``bench/inprocess.py``, the request path's CPU per event for two apps side by side, runs
as its README says and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_two_apps_in_one_process_report_their_cpu_per_event() -> None:
    """The bare app and the bridge without a ledger answer every request 200, and the
    report names both apps' CPU per event and their ratio."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inprocess.py"), "--a", "bare", "--b", "off",
         "--events", "200", "--block", "50"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["a"] == "bare" and report["b"] == "off" and report["select"] == "all"
    cpu = report["cpu_us_per_event"]
    assert cpu["bare"] > 0 and cpu["off"] > 0
    assert report["b_over_a"] == pytest.approx(cpu["off"] / cpu["bare"], rel=0.01)
    assert list(report["statuses"]) == ["200 OK"] and report["statuses"]["200 OK"] == 2 * 400

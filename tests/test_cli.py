"""The `bridge` command through its installed entry point."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LINE_KEYS, MAPPINGS, SAMPLES, order, signup

BRIDGE = Path(sys.executable).with_name("bridge")


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    """Run the real console script, with a clean environment (no API key unless given)."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("DUB_", "BRIDGE_", "SEGMENT_"))
    }
    base.update(env or {})
    return subprocess.run(
        [str(BRIDGE), *args],
        capture_output=True,
        text=True,
        env=base,
        cwd=cwd or MAPPINGS.parent,
        timeout=60,
        check=False,
    )


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_entry_point_is_installed() -> None:
    """The `bridge` script is installed beside the interpreter."""
    assert BRIDGE.exists(), "install the project: pip install -e '.[test]'"


def test_replay_dry_run_on_shipped_samples() -> None:
    """The quickstart command: dry run on the samples, no key, one JSON line each, exit 0."""
    files = sorted(str(p) for p in SAMPLES.glob("*json"))
    done = run("replay", "--dry-run", *files)
    assert done.returncode == 0, done.stderr
    out = lines(done.stdout)
    assert {"dry_run", "skipped"} == {line["outcome"] for line in out}
    assert all(set(line) >= LINE_KEYS for line in out)
    sale = next(line for line in out if line["messageId"] == "ajs-next-1700000000000-3f4c")
    assert sale["request"]["path"] == "/track/sale" and sale["request"]["body"]["amount"] == 1999


def test_replay_reports_bad_events_and_exits_1() -> None:
    """Bad events are invalid lines naming the problem; the good ones still print; exit 1."""
    done = run("replay", str(SAMPLES / "problems" / "bad-events.ndjson"))
    assert done.returncode == 1
    out = lines(done.stdout)
    assert all(line["outcome"] == "invalid" for line in out)
    assert any("bad-events.ndjson:6: not JSON" in line["errors"][0] for line in out)


@pytest.mark.parametrize("form", ["object", "array", "batch", "ndjson", "gz"])
def test_replay_file_forms(tmp_path: Path, form: str) -> None:
    """An object, an array, {"batch": [...]}, NDJSON and .gz files are all read."""
    events = [signup("s1"), order("o1")]
    path = tmp_path / f"events.{'json.gz' if form == 'gz' else 'json'}"
    if form == "object":
        path.write_text(json.dumps(events[1]))
        events = events[1:]
    elif form == "array":
        path.write_text(json.dumps(events))
    elif form == "batch":
        path.write_text(json.dumps({"batch": events}))
    elif form == "ndjson":
        path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    else:
        path.write_bytes(gzip.compress("\n".join(json.dumps(e) for e in events).encode()))
    done = run("replay", str(path))
    assert done.returncode == 0, done.stderr
    assert [line["messageId"] for line in lines(done.stdout)] == [e["messageId"] for e in events]


def test_replay_usage_errors_exit_2(tmp_path: Path) -> None:
    """A missing file or no file at all is a usage error: exit 2."""
    assert run("replay", str(tmp_path / "missing.json")).returncode == 2
    assert run("replay").returncode == 2


def test_send_without_key_refuses(tmp_path: Path) -> None:
    """--send without DUB_API_KEY refuses to start with a clear message."""
    path = tmp_path / "e.json"
    path.write_text(json.dumps(order()))
    done = run("replay", "--send", str(path), env={"BRIDGE_DB": str(tmp_path / "l.db")})
    assert done.returncode == 1
    assert "DUB_API_KEY is not set" in done.stderr and done.stdout == ""


def test_serve_without_key_refuses() -> None:
    """`bridge serve` without DUB_API_KEY refuses to start."""
    done = run("serve")
    assert done.returncode == 1 and "DUB_API_KEY is not set" in done.stderr


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    """A bad environment value fails naming the variable, the expectation and the value."""
    path = tmp_path / "e.json"
    path.write_text(json.dumps(order()))
    done = run("replay", str(path), env={"BRIDGE_DEADLINE_SECONDS": "soon"})
    assert done.returncode == 1
    assert "BRIDGE_DEADLINE_SECONDS: expected a valid number" in done.stderr
    assert "'soon'" in done.stderr


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    """validate prints ok for the defaults; every error and exit 1 for a broken copy."""
    done = run("validate", str(MAPPINGS))
    assert done.returncode == 0 and done.stdout.startswith("ok: 2 mapping(s) in 2 file(s)")
    broken = tmp_path / "maps"
    shutil.copytree(MAPPINGS, broken, ignore=shutil.ignore_patterns("samples"))
    sales = broken / "sales.yaml"
    sales.write_text(
        sales.read_text()
        .replace("transform: minor_units", "transform: cents")
        .replace("eventName: $.event", "eventNme: $.event")
    )
    done = run("validate", str(broken))
    assert done.returncode == 1
    assert "order-sale.fields.amount.transform: unknown transform 'cents'" in done.stderr
    assert "order-sale.fields.eventNme: not a field of Dub's sale request" in done.stderr
    assert "2 error(s)" in done.stderr


def test_replay_refuses_bad_mappings(tmp_path: Path) -> None:
    """replay with broken mappings prints the mapping errors and exits 1."""
    (tmp_path / "m.yaml").write_text("mappings: [{name: x}]\n")
    path = tmp_path / "e.json"
    path.write_text(json.dumps(order()))
    done = run("replay", "--mappings", str(tmp_path), str(path))
    assert done.returncode == 1 and "x.trigger: Field required" in done.stderr

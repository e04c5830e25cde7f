"""The `bridge` command: its installed script, and its click entry point in-process.

The console script is run as a real process for the quickstart and the exit-code
contract; the many error paths call the same entry point (``bridge.cli:main``)
in-process through click's runner, which costs no interpreter start-up.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import main
from tests.conftest import LINE_KEYS, MAPPINGS, SAMPLES, order, signup

BRIDGE = Path(sys.executable).with_name("bridge")


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Done:
    """Call the entry point in-process, with a clean environment (no API key unless given)."""
    clean: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("DUB_", "BRIDGE_", "SEGMENT_"))
    }
    clean.update(env or {})
    with contextlib.chdir(cwd or MAPPINGS.parent):
        result = CliRunner().invoke(main, list(args), env=clean, catch_exceptions=False)
    return Done(result.exit_code, result.stdout, result.stderr)


def run_script(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
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


@pytest.mark.slow  # the installed script, as a real process
def test_replay_dry_run_on_shipped_samples() -> None:
    """The quickstart command: dry run on the samples, no key, one JSON line each, exit 0."""
    files = sorted(str(p) for p in SAMPLES.glob("*json"))
    done = run_script("replay", "--dry-run", *files)
    assert done.returncode == 0, done.stderr
    out = lines(done.stdout)
    assert {"dry_run", "skipped"} == {line["outcome"] for line in out}
    assert all(set(line) >= LINE_KEYS for line in out)
    sale = next(line for line in out if line["messageId"] == "ajs-next-1700000000000-3f4c")
    assert sale["request"]["path"] == "/track/sale" and sale["request"]["body"]["amount"] == 1999


@pytest.mark.slow  # the installed script, as a real process
def test_replay_reports_bad_events_and_exits_1() -> None:
    """Bad events are invalid lines naming the problem; the good ones still print; exit 1."""
    done = run_script("replay", str(SAMPLES / "problems" / "bad-events.ndjson"))
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


@pytest.mark.slow  # the installed script, as a real process
def test_send_without_key_refuses(tmp_path: Path) -> None:
    """--send without DUB_API_KEY refuses to start with one clear line, exit 2."""
    path = tmp_path / "e.json"
    path.write_text(json.dumps(order()))
    done = run_script("replay", "--send", str(path), env={"BRIDGE_DB": str(tmp_path / "l.db")})
    assert done.returncode == 2
    assert "DUB_API_KEY is not set" in done.stderr and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1


def test_serve_without_key_refuses() -> None:
    """`bridge serve` without DUB_API_KEY refuses to start, exit 2."""
    done = run("serve")
    assert done.returncode == 2 and "DUB_API_KEY is not set" in done.stderr


@pytest.mark.slow  # the installed script, as a real process
def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    """A bad environment value fails naming the variable, the expectation and the value."""
    path = tmp_path / "e.json"
    path.write_text(json.dumps(order()))
    done = run_script("replay", str(path), env={"BRIDGE_DEADLINE_SECONDS": "soon"})
    assert done.returncode == 2
    assert "BRIDGE_DEADLINE_SECONDS: expected a valid number" in done.stderr
    assert "'soon'" in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["deadletters"],
        ["redrive"],
        ["redrive", "--dry-run"],
        ["replay", "FILE"],
        ["replay", "--send", "FILE"],
        ["validate"],
        ["serve"],
    ],
)
def test_every_command_answers_a_bad_setting_with_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    """Whatever the command, a bad setting is one line naming the variable, exit 2, no traceback."""
    path = tmp_path / "e.json"
    path.write_text(json.dumps(order()))
    args = [str(path) if a == "FILE" else a for a in command]
    done = run(*args, env={"BRIDGE_RETENTION_DAYS": "a week", "DUB_API_KEY": "k"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: bad setting: BRIDGE_RETENTION_DAYS: expected a valid number, "
        "unable to parse string as a number, found 'a week'"
    ]


def ledger_env(db: Path) -> dict[str, str]:
    return {"BRIDGE_DB": str(db), "DUB_API_KEY": "k", "DUB_API_URL": "http://127.0.0.1:9"}


@pytest.mark.parametrize("command", [["deadletters"], ["redrive"], ["redrive", "--dry-run"]])
def test_ledger_commands_never_create_a_ledger(tmp_path: Path, command: list[str]) -> None:
    """A BRIDGE_DB that names no file is one clear line, exit 2, and nothing is created."""
    db = tmp_path / "typo.sqlite3"
    done = run(*command, env=ledger_env(db))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: BRIDGE_DB={db}: no ledger there (the file does not exist; the service or "
        "`bridge replay --send` creates it): is BRIDGE_DB right?"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["deadletters"], ["redrive"]])
def test_ledger_in_a_missing_folder(tmp_path: Path, command: list[str]) -> None:
    """A BRIDGE_DB in a folder that does not exist is one clear line, exit 2, no traceback."""
    db = tmp_path / "nowhere" / "l.sqlite3"
    done = run(*command, env=ledger_env(db))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: BRIDGE_DB={db}: the folder {db.parent} does not exist"
    ]
    assert not db.parent.exists()


@pytest.mark.parametrize("command", [["deadletters"], ["redrive"]])
def test_a_file_that_is_not_a_ledger_is_left_untouched(tmp_path: Path, command: list[str]) -> None:
    """A BRIDGE_DB that is some other file is refused in one line, and the file is unchanged."""
    db = tmp_path / "notes.txt"
    db.write_text("dear diary")
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    done = run(*command, env=ledger_env(db))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: BRIDGE_DB={db}: is not a SQLite database (left untouched)"
    ]
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_sqlite_file_without_a_ledger_is_left_untouched(tmp_path: Path) -> None:
    """Another program's SQLite file is refused by redrive (which writes), and left as it was."""
    import sqlite3

    db = tmp_path / "other.sqlite3"
    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE notes (text TEXT)")
    before = db.read_bytes()
    done = run("redrive", env=ledger_env(db))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: BRIDGE_DB={db}: is a SQLite database, but holds no ledger"
    ]
    assert db.read_bytes() == before


def make_ledger_file(tmp_path: Path) -> Path:
    db = tmp_path / "l.sqlite3"
    env = ledger_env(db) | {"BRIDGE_CLI_BUDGET_SECONDS": "0.5"}
    done = run("replay", "--send", "--accept-old", str(SAMPLES / "mixed.ndjson"), env=env)
    assert done.returncode == 1  # Dub is unreachable at that address: pending
    return db


def test_read_only_ledger_is_read_but_never_written(tmp_path: Path) -> None:
    """deadletters reads a read-only ledger; redrive, which writes, refuses it in one line."""
    db = make_ledger_file(tmp_path)
    db.chmod(0o444)
    before = db.read_bytes()
    listed = run("deadletters", env=ledger_env(db))
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.endswith("dead letter(s)\n")
    done = run("redrive", env=ledger_env(db))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: BRIDGE_DB={db}: is read-only, and this command writes to the ledger"
    ]
    assert db.read_bytes() == before


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


def test_one_boundary_turns_any_bridge_error_into_one_line() -> None:
    """A BridgeError from any command ends it as one line: exit 2 for configuration, 1 for
    anything else, every mapping problem listed; no traceback."""
    import click

    from bridge.cli.common import Boundary
    from bridge.core.errors import ConfigError, LedgerError, MappingFileError
    from bridge.mapping.loader import MappingIssue

    @click.group(cls=Boundary)
    def cli() -> None:
        """A group as the bridge's own."""

    raised = {
        "config": ConfigError("BRIDGE_X: bad"),
        "ledger": LedgerError("the ledger does not answer"),
        "mappings": MappingFileError([MappingIssue("m.yaml", 3, "s.fields", "no such field")]),
    }
    for name, exc in raised.items():

        def command(exc: Exception = exc) -> None:
            raise exc

        cli.add_command(click.Command(name, callback=command))
    runner = CliRunner()
    config = runner.invoke(cli, ["config"])
    ledger = runner.invoke(cli, ["ledger"])
    mappings = runner.invoke(cli, ["mappings"])
    assert (config.exit_code, config.stderr) == (2, "error: BRIDGE_X: bad\n")
    assert (ledger.exit_code, ledger.stderr) == (1, "error: the ledger does not answer\n")
    assert mappings.exit_code == 1 and "m.yaml:3: s.fields: no such field" in mappings.stderr
    assert all(r.exception is None or isinstance(r.exception, SystemExit)
               for r in (config, ledger, mappings))  # fmt: skip

"""Mapping sets this release cannot load, and publishing: a published set with a newer
construct starts a worker degraded from the last set it can load (never a crash), `bridge
check` refuses it, and a publish records who and why in the database's order."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bridge.cli import main
from bridge.core.errors import MappingFileError
from bridge.ledger import open_ledger
from bridge.ledger.base import Ledger
from bridge.ledger.migrations import MIGRATIONS, schema_table
from bridge.mapping.loader import MappingText, load_texts
from bridge.service.store import MappingStore
from bridge.web.app import create_app
from tests.conftest import MAPPINGS, make_settings
from tests.helpers.fakes import ManualClock

# A construct a later release knows and this one refuses (an unknown key).
NEWER = (
    (MAPPINGS / "sales.yaml")
    .read_text()
    .replace("  - name: order-sale\n", "  - name: order-sale\n    sampleRate: 0.5\n", 1)
)


def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "maps"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("samples"))
    return folder


def publish_set(ledger: Ledger, version: str, files: list[tuple[str, str]]) -> None:
    ledger.keep_mapping_set(version, files, "publish")
    ledger.activate_mapping_set(version, "publish", author="test")


def good_files() -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(MAPPINGS.glob("*.yaml"))]


def newer_files() -> list[tuple[str, str]]:
    return [(n, NEWER if n == "sales.yaml" else t) for n, t in good_files()]


def version_of(ledger: Ledger, label: str) -> str:
    """The engine version of a kept set, as this release computes it."""
    kept = ledger.mapping_set(label)
    assert kept is not None
    return load_texts([MappingText(n, t.encode()) for n, t in kept.files]).engine.version


def degraded_gauge(cause: str) -> float | None:
    return REGISTRY.get_sample_value("bridge_mappings_degraded", {"cause": cause})


@pytest.fixture
def db_ledger(tmp_path: Path, clock: ManualClock) -> Iterator[Ledger]:
    ledger = open_ledger(make_settings(tmp_path), clock=clock)
    assert ledger is not None
    yield ledger
    ledger.close()


# --- a published set this release cannot load ----------------------------------------------------


def test_unloadable_published_set_starts_degraded_from_the_previous_one(
    tmp_path: Path, db_ledger: Ledger, clock: ManualClock
) -> None:
    """A worker starting while the active published set cannot be loaded starts from the
    previous published set, degraded, with the reason and the gauge; a later loadable
    publish ends it."""
    publish_set(db_ledger, "v1", good_files())
    clock.advance(1)
    publish_set(db_ledger, "v2-newer", newer_files())
    store = MappingStore(
        copy(tmp_path), source="database", ledger=db_ledger, poll_seconds=0, clock=clock
    )
    assert degraded_gauge("published_unloadable") == 1
    assert store.engine.version != "v2-newer" and store.origin == "last-good"
    assert store.engine.version == version_of(db_ledger, "v1")
    assert store.degraded and store.last_error is not None
    assert "published mapping set v2-newer cannot be loaded by this release" in store.last_error
    assert "sampleRate: unknown key" in store.last_error
    assert store.check() is False  # the refused set is not tried again every poll
    files = [(n, t.replace("Signed Up", "Registered")) for n, t in good_files()]
    publish_set(db_ledger, "v3", files)
    assert store.check() is True and store.origin == "database" and not store.degraded
    assert degraded_gauge("published_unloadable") == 0


def test_unloadable_first_publish_falls_back_to_the_files(
    tmp_path: Path, db_ledger: Ledger, clock: ManualClock
) -> None:
    """With no earlier published set this release can load, a worker follows the files, as
    it did before the publish, degraded."""
    publish_set(db_ledger, "v9", newer_files())
    store = MappingStore(
        copy(tmp_path), source="database", ledger=db_ledger, poll_seconds=0, clock=clock
    )
    assert store.origin == "files" and store.degraded
    assert "v9 cannot be loaded" in (store.last_error or "")


def test_nothing_loadable_fails_the_start_naming_the_published_set(
    tmp_path: Path, db_ledger: Ledger
) -> None:
    """Only when nothing at all loads does the start fail, naming the refused set."""
    publish_set(db_ledger, "v9", newer_files())
    folder = copy(tmp_path)
    (folder / "sales.yaml").write_text(NEWER)
    with pytest.raises(MappingFileError, match="BRIDGE_MAPPINGS_SOURCE=database: published"):
        MappingStore(folder, source="database", ledger=db_ledger, poll_seconds=0)


def test_a_last_good_set_this_release_cannot_load_is_skipped(
    tmp_path: Path, db_ledger: Ledger, clock: ManualClock
) -> None:
    """Files rejected at start-up (a code rollback): a kept set of a later release that
    this one cannot load is passed over for the next one it can."""
    folder = copy(tmp_path)
    good = MappingStore(folder, ledger=db_ledger, poll_seconds=0, clock=clock).engine.version
    clock.advance(1)
    db_ledger.keep_mapping_set("later", newer_files(), "files")
    (folder / "sales.yaml").write_text(NEWER)
    store = MappingStore(folder, ledger=db_ledger, poll_seconds=0, clock=clock)
    assert store.engine.version == good and store.origin == "last-good" and store.degraded
    assert degraded_gauge("files_rejected") == 1


def test_healthz_and_readyz_say_why_a_worker_is_degraded(
    tmp_path: Path, clock: ManualClock
) -> None:
    """The service starts on an unloadable published set: ready (serving the fallback), and
    /healthz and /readyz carry the reason."""
    settings = make_settings(
        tmp_path, mappings_source="database", mappings_dir=copy(tmp_path), metrics_public=True
    )
    ledger = open_ledger(settings, clock=clock)
    assert ledger is not None
    publish_set(ledger, "v9", newer_files())
    ledger.close()
    app = create_app(settings, clock=clock)
    try:
        client: Any = app.test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert "v9 cannot be loaded by this release" in ready.get_json()["degraded"]
        health = client.get("/healthz").get_json()
        assert health["status"] == "degraded" and "v9" in health["lastError"]
        assert health["degradedCause"] == "published_unloadable"
        text = client.get("/metrics").get_data(as_text=True)
        assert 'bridge_mappings_degraded{cause="published_unloadable"} 1.0' in text
    finally:
        app.extensions["bridge"].close()


# --- bridge check ---------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> Any:
    env = {"SEGMENT_SHARED_SECRET": "s"} | env  # the service's checks want one
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_bridge_check_refuses_an_unloadable_active_published_set(
    tmp_path: Path, db_ledger: Ledger
) -> None:
    """`bridge check` (the release phase) fails, in one clear line, when the active
    published set cannot be loaded by this release, though the files are fine."""
    publish_set(db_ledger, "v1", good_files())
    publish_set(db_ledger, "v9", newer_files())
    env = {
        "BRIDGE_DB": str(tmp_path / "ledger.sqlite3"),
        "BRIDGE_MAPPINGS_DIR": str(MAPPINGS),
        "BRIDGE_MAPPINGS_SOURCE": "database",
        "DUB_API_KEY": "k",
    }
    done = cli("check", env=env)
    assert done.exit_code == 1, done.output
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        "error: BRIDGE_MAPPINGS_SOURCE=database: published mapping set v9 cannot be loaded "
        "by this release: 1 error(s), the first: sales.yaml:"
    )
    assert "sampleRate: unknown key" in line
    assert line.endswith(f"; starting from mapping set {version_of(db_ledger, 'v1')}")


def test_bridge_check_warns_in_one_line_when_files_fall_back(
    tmp_path: Path, db_ledger: Ledger, clock: ManualClock
) -> None:
    """Invalid files with a last good set kept: `bridge check` passes with one warning line
    naming the first error and the set workers start from."""
    folder = copy(tmp_path)
    good = MappingStore(folder, ledger=db_ledger, poll_seconds=0, clock=clock).engine.version
    (folder / "sales.yaml").write_text("mappings: [{name: broken}, {name: worse}]\n")
    env = {"BRIDGE_DB": str(tmp_path / "ledger.sqlite3"), "BRIDGE_MAPPINGS_DIR": str(folder),
           "DUB_API_KEY": "k"}  # fmt: skip
    done = cli("check", env=env)
    assert done.exit_code == 0 and done.stdout == "ok: ready to start\n"
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"warning: BRIDGE_MAPPINGS_DIR={folder}: ") and "error(s): " in line
    assert line.endswith(f"; starting from mapping set {good}")


def test_bridge_check_before_an_upgrade_says_to_run_it(tmp_path: Path) -> None:
    """A ledger behind this release's schema, or a database with no ledger yet: `bridge
    check` fails and says to run `bridge db upgrade`."""
    db = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.execute("DROP TABLE unrelated")  # a SQLite database, holding nothing yet
    env = {"BRIDGE_DB": str(db), "BRIDGE_MAPPINGS_DIR": str(MAPPINGS), "DUB_API_KEY": "k"}
    empty = cli("check", env=env)
    assert empty.exit_code == 1
    assert empty.stderr.startswith(f"error: BRIDGE_DB={db}: schema version 0, ")
    assert empty.stderr.rstrip().endswith("run `bridge db upgrade`")
    conn.execute(schema_table("sqlite"))
    for migration in MIGRATIONS[:-1]:
        for statement in migration.statements("sqlite"):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, 0)", (migration.version, migration.name)
        )
    conn.close()
    behind = cli("check", env=env)
    assert behind.exit_code == 1 and "1 pending" in behind.stderr
    assert behind.stderr.rstrip().endswith("run `bridge db upgrade`")
    assert cli("db", "upgrade", env=env).exit_code == 0
    assert cli("check", env=env).stdout == "ok: ready to start\n"


# --- publish: who, why, and the database's order -------------------------------------------------


def published(done: Any) -> str:
    assert done.exit_code == 0, done.output
    return str(done.stdout.split()[1].rstrip(":"))


def test_publish_records_who_and_why_and_history_shows_them(tmp_path: Path) -> None:
    """publish and rollback record --author (else the OS user) and --message; history shows
    both."""
    db = tmp_path / "ledger.sqlite3"
    env = {"BRIDGE_DB": str(db), "DUB_API_KEY": "k", "LOGNAME": "ops-jane"}
    folder = copy(tmp_path)
    assert cli("db", "upgrade", env=env).exit_code == 0
    v1 = published(cli("mappings", "publish", str(folder), "-m", "first cut", env=env))
    (folder / "leads.yaml").write_text(
        (folder / "leads.yaml").read_text().replace("Signed Up", "Registered")
    )
    v2 = published(cli("mappings", "publish", str(folder), "--author", "Kim", env=env))
    rolled = cli("mappings", "rollback", v1, "--message", "leads broke", env=env)
    assert rolled.exit_code == 0
    lines = cli("mappings", "history", env=env).stdout.splitlines()
    assert [line[0] for line in lines] == ["*", " ", " "]
    assert [line[2:].split()[:2] + line[2:].split()[4:] for line in lines] == [
        [v1, "rollback", "ops-jane", "leads", "broke"],
        [v2, "publish", "Kim"],
        [v1, "publish", "ops-jane", "first", "cut"],
    ]


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--author", "  ", "--author: is empty"),
        (
            "--message",
            "two\nlines",
            "--message: holds a control character: one line of text, please",
        ),
        ("--author", "x" * 101, "--author: is 101 characters long, at most 100"),
        ("--message", "y" * 501, "--message: is 501 characters long, at most 500"),
    ],
)
def test_bad_author_or_message_is_refused(
    tmp_path: Path, option: str, value: str, said: str
) -> None:
    """An empty, multi-line or overlong author or message is refused, naming the option,
    and nothing is published."""
    env = {"BRIDGE_DB": str(tmp_path / "ledger.sqlite3"), "DUB_API_KEY": "k"}
    assert cli("db", "upgrade", env=env).exit_code == 0
    done = cli("mappings", "publish", str(MAPPINGS), option, value, env=env)
    assert done.exit_code == 2 and done.stderr == f"error: {said}\n"
    assert cli("mappings", "history", env=env).stderr == "nothing published yet\n"


def test_a_publisher_clock_ahead_pins_nothing(tmp_path: Path) -> None:
    """An activation stamped an hour ahead (a publisher whose clock ran fast, from the
    release before): a later publish and a rollback still take effect."""
    db = tmp_path / "ledger.sqlite3"
    env = {"BRIDGE_DB": str(db), "DUB_API_KEY": "k"}
    folder = copy(tmp_path)
    assert cli("db", "upgrade", env=env).exit_code == 0
    v1 = published(cli("mappings", "publish", str(folder), env=env))
    with sqlite3.connect(db) as conn:  # what the release before wrote, with a fast clock
        conn.execute(
            "INSERT INTO mapping_activations (version, origin, activated_at) VALUES (?, ?, ?)",
            (v1, "publish", time.time() + 3600),
        )
    conn.close()
    (folder / "leads.yaml").write_text(
        (folder / "leads.yaml").read_text().replace("Signed Up", "Registered")
    )
    v2 = published(cli("mappings", "publish", str(folder), env=env))
    ledger = open_ledger(make_settings(tmp_path))
    assert ledger is not None
    try:
        active = ledger.active_mapping_set()
        assert active is not None and active.version == v2
        assert cli("mappings", "rollback", v1, env=env).exit_code == 0
        active = ledger.active_mapping_set()
        assert active is not None and active.version == v1
    finally:
        ledger.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=600))
def test_any_message_is_recorded_exactly_or_refused_in_one_line(tmp_path: Path, text: str) -> None:
    """Whatever --message holds, a publish records it (stripped) and history shows it, or
    refuses it with one line naming the option; nothing crashes."""
    env = {"BRIDGE_DB": str(tmp_path / "ledger.sqlite3"), "DUB_API_KEY": "k", "LOGNAME": "kim"}
    if not (tmp_path / "ledger.sqlite3").exists():
        assert cli("db", "upgrade", env=env).exit_code == 0
    done = CliRunner().invoke(main, ["mappings", "publish", str(MAPPINGS), f"--message={text}"],
                              env=env)  # fmt: skip
    if done.exit_code == 0:
        newest = cli("mappings", "history", "--limit", "1", env=env).stdout
        assert newest.rstrip("\n").endswith(f"  kim  {text.strip()}")
    else:
        assert done.exit_code == 2, done.output
        (line,) = done.stderr.splitlines()
        assert line.startswith("error: --message: ")

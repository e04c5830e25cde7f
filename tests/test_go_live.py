"""Settings that would fail open stop the start instead: no signature secret, no chosen ledger.

Findings: without `SEGMENT_SHARED_SECRET` the service started without a word and delivered
unsigned sales from anyone; without `DATABASE_URL` every instance silently ran its own SQLite
ledger (exactly-once across instances and the shared rate limit gone) and the release phase
passed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.core.settings import Settings
from bridge.service.startup import check
from bridge.web.app import create_app
from tests.conftest import MAPPINGS, make_settings
from tests.helpers.fakedub import FakeDub
from tests.helpers.procs import ProcfileWeb, clean_env, json_lines

SIGNED = {"segment_shared_secret": "s"}


def _problems(**values: Any) -> list[str]:
    base: dict[str, Any] = {"dub_api_key": "k", "mappings_dir": MAPPINGS}
    return check(Settings.from_env({}, **(base | values))).problems


def test_no_secret_stops_the_start(tmp_path: Path) -> None:
    """Without SEGMENT_SHARED_SECRET the start-up check refuses, naming both ways out."""
    problems = _problems(db_path=tmp_path / "l.db")
    assert len(problems) == 1
    assert problems[0].startswith("SEGMENT_SHARED_SECRET is not set")
    assert "BRIDGE_ALLOW_UNSIGNED=1" in problems[0]


def test_unsigned_on_purpose_starts_with_a_warning(tmp_path: Path) -> None:
    """BRIDGE_ALLOW_UNSIGNED=1 lets it start, with a warning in the check's report."""
    settings = Settings.from_env(
        {}, dub_api_key="k", mappings_dir=MAPPINGS, db_path=tmp_path / "l.db", allow_unsigned=True
    )
    report = check(settings)
    assert report.ok, report.problems
    assert any("requests are accepted without a signature" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://api.dub.co", True),
        ("http://dub.internal:8080", True),
        ("https://api.dub.co", False),
        ("http://127.0.0.1:9001", False),
        ("http://localhost:9001", False),
    ],
)
def test_plain_http_to_dub_starts_with_a_warning(tmp_path: Path, url: str, warned: bool) -> None:
    """DUB_API_URL over plain http to another machine starts with a warning (Dub's API is
    https and no redirect is followed); https, and a fake on this machine, start without."""
    settings = Settings.from_env(
        {}, **SIGNED, dub_api_key="k", mappings_dir=MAPPINGS, db_path=tmp_path / "l.db",
        dub_api_url=url,
    )  # fmt: skip
    report = check(settings)
    assert report.ok, report.problems
    assert any("DUB_API_URL is plain http" in w for w in report.warnings) is warned


def test_no_chosen_ledger_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither DATABASE_URL nor BRIDGE_DB: refused, rather than a SQLite file per instance."""
    monkeypatch.chdir(tmp_path)  # the default file would land here
    problems = _problems(**SIGNED)
    assert len(problems) == 1 and problems[0].startswith("neither DATABASE_URL nor BRIDGE_DB")
    assert not (tmp_path / "bridge-ledger.sqlite3").exists()


def test_bridge_check_fails_the_release_phase_without_them(tmp_path: Path) -> None:
    """`bridge check` (the release phase) exits 1 with one line per missing choice."""
    env = {"DUB_API_KEY": "k", "BRIDGE_MAPPINGS_DIR": str(MAPPINGS)}
    result = CliRunner().invoke(main, ["check"], env=env)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any("SEGMENT_SHARED_SECRET is not set" in e for e in errors)
    assert any("neither DATABASE_URL nor BRIDGE_DB" in e for e in errors)


def test_bridge_serve_refuses_without_a_secret(tmp_path: Path) -> None:
    """`bridge serve` is the service too: no secret and no BRIDGE_ALLOW_UNSIGNED, exit 2."""
    env = {"DUB_API_KEY": "k", "BRIDGE_DB": str(tmp_path / "l.db")}
    result = CliRunner().invoke(main, ["serve", "--port", "1"], env=env)
    assert result.exit_code == 2
    assert "SEGMENT_SHARED_SECRET is not set" in result.stderr


def test_healthz_and_the_start_say_signatures_are_not_checked(tmp_path: Path) -> None:
    """An unsigned service logs a warning when it starts and /healthz says so."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    app_log = logging.getLogger("bridge.app")
    app_log.addHandler(handler)
    try:
        app = create_app(make_settings(tmp_path, allow_unsigned=True))
    finally:
        app_log.removeHandler(handler)
    try:
        assert any("without a signature" in r.getMessage() for r in seen)
        body = app.test_client().get("/healthz").get_json()
        assert body["signatures"] == "not checked (BRIDGE_ALLOW_UNSIGNED=1)"
    finally:
        app.extensions["bridge"].close()
    signed = create_app(make_settings(tmp_path, **SIGNED))
    try:
        assert signed.test_client().get("/healthz").get_json()["signatures"] == "required"
    finally:
        signed.extensions["bridge"].close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("missing", "line"),
    [
        ("SEGMENT_SHARED_SECRET", "SEGMENT_SHARED_SECRET is not set"),
        ("BRIDGE_DB", "neither DATABASE_URL nor BRIDGE_DB is set"),
    ],
)
def test_the_procfile_process_refuses_to_start(tmp_path: Path, missing: str, line: str) -> None:
    """The Procfile's gunicorn exits non-zero with one JSON line, before any worker boots."""
    values = {
        "DUB_API_KEY": "k",
        "BRIDGE_MAPPINGS_DIR": str(MAPPINGS),
        "SEGMENT_SHARED_SECRET": "s",
        "BRIDGE_ALLOW_UNSIGNED": "0",
        "BRIDGE_DB": str(tmp_path / "ledger.sqlite3"),
        "WEB_CONCURRENCY": "1",
    }
    del values[missing]
    with FakeDub(api_key="k").start() as fake:
        web = ProcfileWeb(clean_env(DUB_API_URL=fake.url, **values), tmp_path)
        web.start(wait=False)
        assert web.proc is not None and web.proc.wait(30) != 0
    lines = json_lines(web)
    errors = [x["msg"] for x in lines if x["level"] == "error"]
    assert len(errors) == 1 and errors[0].startswith(line), errors
    assert not any("Booting worker" in x["msg"] for x in lines)

"""Hot reload: edited mapping files are picked up; an invalid edit keeps the last good ones."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bridge.app import create_app
from bridge.reload import MappingStore
from tests.conftest import MAPPINGS, make_settings


def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "maps"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("samples"))
    return folder


def touch(path: Path, text: str) -> None:
    path.write_text(text)
    # mtime granularity can be coarse: make sure the change is visible.
    stamp = time.time() + 1
    import os

    os.utime(path, (stamp, stamp))


def test_valid_edit_is_picked_up(tmp_path: Path) -> None:
    """A valid edit replaces the active engine and its version."""
    folder = copy(tmp_path)
    store = MappingStore(folder, poll_seconds=0)
    before = store.engine.version
    sales = folder / "sales.yaml"
    touch(
        sales,
        sales.read_text().replace("event: Order Completed", "event: [Order Completed, Order Paid]"),
    )
    assert store.check() is True
    assert store.engine.version != before and store.engine.matches("Order Paid")
    assert store.check() is False  # nothing changed since


def test_invalid_edit_keeps_last_good(tmp_path: Path) -> None:
    """An invalid edit is rejected, the old mappings stay, and the error is kept for /healthz."""
    folder = copy(tmp_path)
    store = MappingStore(folder, poll_seconds=0)
    before = store.engine.version
    touch(folder / "sales.yaml", "mappings: [{name: broken}]\n")
    assert store.check() is False
    assert store.engine.version == before and store.engine.matches("Order Completed")
    assert store.last_error is not None and "broken.trigger: Field required" in store.last_error


def test_running_service_reloads_by_polling(tmp_path: Path) -> None:
    """The running app picks up an edit without restart; /healthz shows version and last error."""
    folder = copy(tmp_path)
    app = create_app(make_settings(tmp_path, mappings_dir=folder, reload_seconds=0.1))
    client: Any = app.test_client()
    first = client.get("/healthz").get_json()
    touch(
        folder / "leads.yaml",
        (folder / "leads.yaml").read_text().replace("Signed Up", "Registered"),
    )
    deadline = time.monotonic() + 5
    while client.get("/healthz").get_json()["version"] == first["version"]:
        assert time.monotonic() < deadline, "reload not picked up"
        time.sleep(0.05)
    touch(folder / "leads.yaml", "not: [valid\n")
    while client.get("/healthz").get_json()["lastError"] is None:
        assert time.monotonic() < deadline, "bad edit not reported"
        time.sleep(0.05)
    health = client.get("/healthz").get_json()
    assert health["mappings"] == 2 and "YAML" in health["lastError"]
    app.extensions["bridge"].store.stop()
    app.extensions["bridge"].deliverer.close()

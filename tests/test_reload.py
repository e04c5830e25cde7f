"""Hot reload: edited mapping files are picked up; an invalid edit keeps the last good ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bridge.service.store import MappingStore
from bridge.web.app import create_app
from tests.conftest import MAPPINGS, make_settings


def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "maps"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("samples"))
    return folder


def touch(path: Path, text: str) -> None:
    path.write_text(text)
    # mtime granularity can be coarse: make sure the change is visible.
    stamp = path.stat().st_mtime + 1
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
    app = create_app(make_settings(tmp_path, mappings_dir=folder, reload_seconds=0.01))
    service = app.extensions["bridge"]
    poller = service.store.poller
    client: Any = app.test_client()
    first = client.get("/healthz").get_json()
    assert poller.running
    touch(
        folder / "leads.yaml",
        (folder / "leads.yaml").read_text().replace("Signed Up", "Registered"),
    )
    # Two more polls: one may have started before the edit; the next one surely saw it.
    assert poller.wait_ticks(poller.ticks + 2, timeout=30)
    second = client.get("/healthz").get_json()
    assert second["version"] != first["version"] and second["lastError"] is None
    touch(folder / "leads.yaml", "not: [valid\n")
    assert poller.wait_ticks(poller.ticks + 2, timeout=30)
    health = client.get("/healthz").get_json()
    assert health["version"] == second["version"]
    assert health["mappings"] == 2 and "YAML" in health["lastError"]
    service.close()
    assert not poller.running  # stopped with the service

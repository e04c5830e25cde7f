"""The README's local-run recipe works as written, and `bridge sign` signs as Segment does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner

from bridge.cli import main
from bridge.web.app import create_app
from tests.conftest import DUB, body_of, make_settings, order, sale_ok
from tests.helpers.procs import REPO, clean_env, free_port

SECRET = "local-secret"


def test_bridge_sign_makes_the_signature_the_webhook_checks(
    tmp_path: Path, dub: responses.RequestsMock
) -> None:
    """`bridge sign FILE` prints an X-Signature the webhook accepts for exactly those bytes;
    another secret's is refused (401)."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    body = body_of(order("signed-by-hand")) + b"\n"  # the exact bytes, newline included
    (tmp_path / "event.json").write_bytes(body)
    runner = CliRunner()

    def signature(secret: str) -> str:
        done = runner.invoke(
            main, ["sign", str(tmp_path / "event.json")], env={"SEGMENT_SHARED_SECRET": secret}
        )
        assert done.exit_code == 0, done.output
        return str(done.stdout.strip())

    app = create_app(make_settings(tmp_path, segment_shared_secret=SECRET))
    try:
        client = app.test_client()

        def post(sig: str) -> Any:
            headers = {"Content-Type": "application/json", "X-Signature": sig}
            return client.post("/segment", data=body, headers=headers)

        assert post(signature("another-secret")).status_code == 401
        answer = post(signature(SECRET))
        assert answer.status_code == 200 and answer.get_json()["counts"] == {"delivered": 1}
    finally:
        app.extensions["bridge"].close()
    stdin = runner.invoke(main, ["sign", "-"], input=body, env={"SEGMENT_SHARED_SECRET": SECRET})
    assert stdin.stdout.strip() == signature(SECRET)


def test_bridge_sign_without_a_secret_says_so(tmp_path: Path) -> None:
    """Without SEGMENT_SHARED_SECRET `bridge sign` exits 2 with one line saying what is missing."""
    (tmp_path / "event.json").write_bytes(b"{}")
    done = CliRunner().invoke(
        main, ["sign", str(tmp_path / "event.json")], env={"SEGMENT_SHARED_SECRET": ""}
    )
    assert done.exit_code == 2
    assert done.stderr == (
        "error: SEGMENT_SHARED_SECRET is not set: there is no secret to sign with\n"
    )


def recipe() -> str:
    """The shell block of the README's *Running it locally*."""
    section = (REPO / "README.md").read_text().split("### Running it locally", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow  # real processes: the fake Dub, `bridge serve`, curl
def test_the_readme_recipe_runs_as_written(tmp_path: Path) -> None:
    """The recipe, run by bash from the clone (its ports and files moved aside; the venv
    already made), gets its signed event delivered through the fake Dub."""
    script = recipe()
    lines = script.splitlines()
    assert lines[0].startswith("python3 -m venv .venv")
    script = "\n".join(lines[1:])  # this test runs inside the venv already
    moved = {
        "9001": str(free_port()),
        "8000": str(free_port()),
        "local-ledger.sqlite3": str(tmp_path / "ledger.sqlite3"),
        "bridge.log": str(tmp_path / "bridge.log"),
        "event.json": str(tmp_path / "event.json"),
    }
    for old, new in moved.items():
        assert old in script, f"the recipe no longer mentions {old}"
        script = script.replace(old, new)
    proc = subprocess.Popen(
        ["bash", "-ec", script],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        # Whatever the script left running (it stops its own jobs when it gets that far).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, err.decode()
    answers = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert [json.loads(a) for a in answers] == [
        {"counts": {"delivered": 1}, "results": [], "omitted": 0}
    ]
    text = (tmp_path / "bridge.log").read_text()
    log = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(x.get("outcome") == "delivered" and x["messageId"] == "local-1" for x in log)

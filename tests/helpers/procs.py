"""The service as a platform runs it: the Procfile's ``web:`` line, a real process group.

Used by every test that needs real gunicorn processes (a SIGKILL mid-batch, Segment's
own client over real HTTP, several instances sharing one database). Waiting for a
process to come up polls with a deadline; nothing else here waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
# Variables a test environment must not inherit from the developer's shell.
OWN_PREFIXES = (
    "DUB_",
    "BRIDGE_",
    "SEGMENT_",
    "WEB_CONCURRENCY",
    "GUNICORN",
    "PORT",
    "DATABASE_URL",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile_web() -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("Procfile has no web: line")


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without the bridge's variables, plus ``values``; gunicorn
    comes from this interpreter's environment, as a deploy installs it. Unsigned requests
    are allowed unless ``values`` say otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if "SEGMENT_SHARED_SECRET" not in values and "BRIDGE_ALLOW_UNSIGNED" not in values:
        # Most process tests post unsigned requests; the ones about signing say so.
        env["BRIDGE_ALLOW_UNSIGNED"] = "1"
    env.update(values)
    return env


class ProcfileWeb:
    """The Procfile's ``web:`` command run through bash (it expands ``$PORT`` and defaults)."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str = "web"):
        self.env = env
        self.workdir = workdir
        self.name = name
        self.port = 0
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}-{self.runs}.log"

    def start(self, *, wait: bool = True) -> None:
        self.port = free_port()
        self.runs += 1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec {procfile_web()}"],
                cwd=REPO,
                env={**self.env, "PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)  # polling for the server to come up
        pytest.fail(f"{self.name} did not answer /healthz within {timeout} s:\n{self.tail()}")

    def wait_workers(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` workers said they are ready (their services are built)."""
        deadline = time.monotonic() + timeout
        while self.tail_all().count('"msg":"bridge ready"') < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: fewer than {count} workers ready:\n{self.tail()}")
            time.sleep(0.05)  # polling for the workers to come up

    def tail_all(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), SIGKILL if it is still there after a deadline."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(25)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the master and its workers at once: no graceful anything."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextlib.contextmanager
def instances(env: dict[str, str], workdir: Path, count: int) -> Iterator[list[ProcfileWeb]]:
    """``count`` Procfile instances with one environment (several instances of one deploy),
    started together (their masters migrate at the same moment), killed afterwards."""
    webs = [ProcfileWeb(env, workdir, name=f"web{i}") for i in range(count)]
    try:
        for web in webs:
            web.start(wait=False)
        for web in webs:
            web.wait_ready()
        yield webs
    finally:
        for web in webs:
            web.kill()


def json_lines(web: ProcfileWeb) -> list[dict[str, Any]]:
    """Every line the process wrote; each must be JSON."""
    lines = web.log.read_text().splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line that is not JSON: {line!r}")
    return parsed

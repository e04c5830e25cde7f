"""Start, watch and stop the benchmark's servers: gunicorn (as the Procfile runs it) and fake Dub.

Everything binds to 127.0.0.1. Each server runs in its own session (process group), so
``stop`` can end the master and, should one linger, its own workers, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BRIDGE_APP = "bridge.web.app:create_app()"
BARE_APP = "bench.bare_app:create_app()"
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile_command(app: str, port: int, env: dict[str, str]) -> list[str]:
    """The Procfile's ``web`` command with its own flags, bound to 127.0.0.1:port."""
    line = next(
        raw.split(":", 1)[1]
        for raw in (ROOT / "Procfile").read_text().splitlines()
        if raw.startswith("web:")
    )
    scope = {**env, "PORT": str(port)}

    def expand(match: re.Match[str]) -> str:
        name = match[1] or match[3]
        return scope.get(name) or (match[2] or "")

    args = shlex.split(_VAR.sub(expand, line))
    launcher = ["python", "-m", "bridge.web.gunicorn_main"]  # gunicorn, behind its checks
    if args[: len(launcher)] != launcher or BRIDGE_APP not in args:
        raise RuntimeError(f"unexpected Procfile web command: {line.strip()}")
    bind = args.index("--bind") + 1
    args[bind] = f"127.0.0.1:{port}"  # the Procfile binds 0.0.0.0; the bench stays local
    args[args.index(BRIDGE_APP)] = app
    return [sys.executable, *args[1:]]


class Server:
    """One child process tree, its log file, and the URL that says it is up."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if name == "fakedub" else self._log,
            stderr=self._log,
            start_new_session=True,
        )

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (loopback)
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer {url} in {timeout:.0f} s")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the master's children."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # gunicorn: graceful; fakedub: clean exit
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own group, started by us
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        # A worker that outlived its master would still be in the group: end it too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start_fakedub(log: Path) -> tuple[Server, int]:
    cmd = [sys.executable, str(ROOT / "bench" / "fakedub.py"), "--port", "0"]
    server = Server("fakedub", cmd, dict(os.environ), log)
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline().decode()
    if not line.startswith("listening 127.0.0.1:"):
        server.stop()
        raise RuntimeError(f"fakedub did not start: {line!r}; see {log}")
    return server, int(line.rsplit(":", 1)[1])


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmHWM: peak RSS), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks

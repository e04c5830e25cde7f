"""`bridge replay` streams and plans on several processes: same lines, order, summary, exit code.

Through the real entry point: in-process (click's runner; forked workers inherit the
test's patches) for what the output says, as a real process for what only a process
shows (output appearing while a pipe is still being written, Ctrl-C).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from bridge.cli import replay_jobs
from bridge.cli.replay import SEND_IN_ONE
from bridge.core.jsoncodec import dumps
from bridge.core.outcomes import Outcome
from bridge.mapping.batch import plan_all
from bridge.mapping.engine import Engine
from tests.conftest import DUB, MAPPINGS, order, sale_ok, signup
from tests.test_cli import run
from tests.test_reader import ODD_INPUTS, read_whole

BRIDGE = Path(sys.executable).with_name("bridge")


def corpus(count: int) -> bytes:
    """NDJSON of orders, sign-ups, other events and bad lines, in a known order."""
    lines = []
    for n in range(count):
        kind = n % 5
        if kind == 0:
            lines.append(json.dumps(order(f"o{n}", revenue=n / 100)))
        elif kind == 1:
            lines.append(json.dumps(signup(f"s{n}")))
        elif kind == 2:
            lines.append(json.dumps(order(f"x{n}") | {"event": f"Other {n % 7}"}))
        elif kind == 3:
            lines.append(json.dumps(order(f"g{n}") | {"userId": None}))  # invalid: no customer
        else:
            lines.append("not JSON" if n % 10 == 4 else json.dumps(signup(f"n{n}", click=None)))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of about 2 KB, so a few hundred events make many chunks and start workers."""
    monkeypatch.setattr(replay_jobs, "CHUNK_BYTES", 2048)
    monkeypatch.setattr("bridge.reader.lines.BLOCK", 1024)


@pytest.mark.usefixtures("small_chunks")
def test_jobs_keep_output_order_summary_and_exit_code(tmp_path: Path) -> None:
    """--jobs 2 and 3 print the very bytes, summary and exit code --jobs 1 prints."""
    path = tmp_path / "events.ndjson"
    path.write_bytes(corpus(400))
    one = run("replay", "--jobs", "1", str(path))
    assert one.returncode == 1  # invalid events are in the corpus on purpose
    assert len(one.stdout.splitlines()) == 400
    for jobs in ("2", "3"):
        many = run("replay", "--jobs", jobs, str(path))
        assert (many.returncode, many.stdout, many.stderr) == (
            one.returncode,
            one.stdout,
            one.stderr,
        )


def expected_lines(engine: Engine, path: Path) -> str:
    """What replay printed when it read the file whole: the reference for the stream."""
    results, _ = plan_all(engine, list(read_whole(path)))
    done = [r.finish(Outcome.DRY_RUN) if r.outcome is Outcome.READY else r for r in results]
    return "".join(dumps(r.to_line()).decode() + "\n" for r in done)


@pytest.mark.usefixtures("small_chunks")
def test_replay_prints_what_the_whole_file_reading_printed(tmp_path: Path, engine: Engine) -> None:
    """For every odd input, replay's stdout is byte for byte what it printed
    when it read files whole."""
    paths = []
    for name, data in ODD_INPUTS.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_bytes(data)
    done = run("replay", "--jobs", "1", *map(str, paths))
    assert done.stdout == "".join(expected_lines(engine, path) for path in paths)


def _die(records: Any, accept_dub_source: bool) -> Any:
    os._exit(9)  # as the kernel's OOM killer would end it: no exception, no goodbye


def _fail(records: Any, accept_dub_source: bool) -> Any:
    raise ValueError("no good")


@pytest.mark.usefixtures("small_chunks")
def test_a_worker_that_dies_ends_the_replay_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-replay: one error line naming it, exit 1, no hang."""
    monkeypatch.setattr(replay_jobs, "_work", _die)
    path = tmp_path / "events.ndjson"
    path.write_bytes(corpus(200))
    done = run("replay", "--jobs", "2", str(path))
    assert done.returncode == 1
    assert "error: a replay worker process stopped unexpectedly" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.usefixtures("small_chunks")
def test_a_worker_that_fails_ends_the_replay_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker raising: one error line with the exception, exit 1; earlier lines are whole."""

    monkeypatch.setattr(replay_jobs, "_work", _fail)
    path = tmp_path / "events.ndjson"
    path.write_bytes(corpus(200))
    done = run("replay", "--jobs", "2", str(path))
    assert done.returncode == 1
    assert "error: a replay worker failed: ValueError: no good" in done.stderr
    assert all(json.loads(line) for line in done.stdout.splitlines())  # the first chunk, whole


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    """--jobs 0 is a usage error: exit 2."""
    path = tmp_path / "e.json"
    path.write_text(json.dumps(order()))
    assert run("replay", "--jobs", "0", str(path)).returncode == 2


def test_send_with_jobs_says_it_sends_from_one_process(
    tmp_path: Path, dub: responses.RequestsMock
) -> None:
    """--send --jobs 2 notes that sending stays in one process, and sends."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    path = tmp_path / "e.ndjson"
    path.write_text(json.dumps(order("sent")) + "\n")
    env = {"DUB_API_KEY": "k", "DUB_API_URL": DUB, "BRIDGE_DB": str(tmp_path / "l.db")}
    done = run("replay", "--send", "--accept-old", "--jobs", "2", str(path), env=env)
    assert done.returncode == 0 and SEND_IN_ONE in done.stderr
    assert json.loads(done.stdout)["outcome"] == "delivered" and len(dub.calls) == 1


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "events.fifo"
    os.mkfifo(path)
    return path


# A shell starts a background job (`pytest ... &`, two suites at once) with Ctrl-C ignored,
# and a child inherits that: its Ctrl-C would do nothing, as a background job's should. The
# replay is started as a terminal's foreground command is, with Ctrl-C's default action.
AS_IN_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def replay_process(source: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUB_", "BRIDGE_"))}
    command = [str(BRIDGE), "replay", "--mappings", str(MAPPINGS), *args, str(source)]
    return subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env | {"PYTHONFAULTHANDLER": "1"},  # SIGABRT prints every thread's stack
        start_new_session=True,  # so a stuck replay and its workers go together
    )


def ended(child: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The child's exit code; when it has not ended in time, fail with its threads' stacks
    (and end it, with its workers)."""
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGABRT)
        child.wait(timeout=30)
        os.killpg(child.pid, signal.SIGKILL)  # orphaned workers hold stderr open
        assert child.stderr is not None
        stacks = child.stderr.read().decode(errors="replace")[-6000:]
        pytest.fail(f"the replay did not end within {timeout} s; its stacks:\n{stacks}")


def output_lines(child: subprocess.Popen[bytes], timeout: float = 30) -> Iterator[bytes]:
    """The child's stdout lines as they come (each read waited for at most ``timeout``)."""
    assert child.stdout is not None
    fd, pending = child.stdout.fileno(), b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, "no output in time"
        data = os.read(fd, 1 << 16)
        if not data:
            return
        *lines, pending = (pending + data).split(b"\n")
        yield from lines


@pytest.mark.slow  # real processes
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_output_appears_while_the_input_is_still_being_written(fifo: Path, jobs: str) -> None:
    """From a pipe, an event's line is printed before the writer has sent the next one."""
    child = replay_process(fifo, "--jobs", jobs)
    with open(fifo, "wb", buffering=0) as pipe:
        lines = output_lines(child)
        for n in range(3):
            pipe.write(json.dumps(order(f"live-{n}")).encode() + b"\n")
            assert json.loads(next(lines))["messageId"] == f"live-{n}"
    assert list(lines) == [] and child.wait(timeout=30) == 0


@pytest.mark.slow  # real processes
def test_ctrl_c_stops_a_replay_on_workers_cleanly(fifo: Path) -> None:
    """Ctrl-C while workers run: the replay ends at once with click's "Aborted!", no traceback."""
    child = replay_process(fifo, "--jobs", "2")
    with open(fifo, "wb", buffering=0) as pipe:
        block = b"".join(json.dumps(order(f"c{n}")).encode() + b"\n" for n in range(3000))
        # Several chunks, so the workers start; written from a thread while the output is read.
        writer = threading.Thread(target=pipe.write, args=(block,))
        writer.start()
        lines = output_lines(child)
        assert sum(1 for _ in zip(range(3000), lines, strict=False)) == 3000
        writer.join(timeout=30)
        child.send_signal(signal.SIGINT)  # the replay waits for more input: stop it
        assert ended(child) == 1
    assert child.stderr is not None
    stderr = child.stderr.read().decode()
    assert "Aborted!" in stderr and "Traceback" not in stderr

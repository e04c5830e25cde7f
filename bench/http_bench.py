"""Items 2-4: the bridge and the bare app under gunicorn, loaded from another process.

The apps run side by side for the whole benchmark (idle while another is measured),
against one fake Dub, so runs can rotate (A B C, B C A, ...) without restarts:
``bridge`` (ledger on, as deployed), ``bridge-noledger`` (when the bridge has a setting
that turns the ledger off) and ``bare``.
Besides events/s and latency, each run records the CPU time the gunicorn workers used
(from /proc): CPU per event does not depend on what else the 2 cores were doing.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.handwritten import plan
from bench.loadgen import ID_NEEDLE, Connection
from bench.servers import (
    BARE_APP,
    BRIDGE_APP,
    ROOT,
    Server,
    cpu_seconds,
    free_port,
    proc_status,
    procfile_command,
    start_fakedub,
)

BRIDGE, NO_LEDGER, BARE = "bridge", "bridge-noledger", "bare"
POSTGRES = "bridge-postgres"  # the ledger in PostgreSQL (DATABASE_URL), when a server is given
WRITE_KEY = "bench_write_key"  # the SDK API's key (BRIDGE_WRITE_KEYS) for item 2b


def ledger_switch() -> str | None:
    """The environment variable that turns the bridge's ledger off, if the bridge has one."""
    from bridge.core.settings import ENV  # read at run time: the setting may come and go

    return ENV.get("ledger")


@dataclass
class Stack:
    tmp: Path
    fakedub: Server
    dub_port: int
    servers: dict[str, Server]
    ports: dict[str, int]
    database: str | None = None  # the benchmark's own PostgreSQL database, dropped at stop

    def url(self, target: str, path: str = "/segment") -> str:
        return f"http://127.0.0.1:{self.ports[target]}{path}"

    def dub(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.dub_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 (loopback)
            return json.loads(answer.read())

    @property
    def targets(self) -> list[str]:
        return list(self.servers)

    def stop(self) -> None:
        for server in [*self.servers.values(), self.fakedub]:
            server.stop()
        if self.database is not None:
            drop_database(self.database)


def create_database(server_url: str) -> str:
    """A fresh database on the given PostgreSQL server, for this run only; its URL."""
    import psycopg

    name = f"bridge_bench_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_env(ledger_dir: Path, dub_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DUB_API_KEY": "dub_bench_key",
            "DUB_API_URL": f"http://127.0.0.1:{dub_port}",
            "BRIDGE_DB": str(ledger_dir / "ledger.sqlite3"),  # a file on disk, as deployed
            "BRIDGE_MAPPINGS_DIR": str(ROOT / "mappings"),
            # The load generator posts unsigned bodies, as the bare Flask app it is compared
            # with receives them.
            "BRIDGE_ALLOW_UNSIGNED": "1",
            # The default (1200/min per key, split over the workers) would cap the bridge at
            # 20 calls/s and measure the limiter; fake Dub has no limit.
            "DUB_RATE_LIMIT_PER_MINUTE": "1000000000",
            # Item 2b posts to /v1/batch as the server SDKs do.
            "BRIDGE_WRITE_KEYS": f"bench:{WRITE_KEY}",
        }
    )
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "BRIDGE_CONCURRENCY", "BRIDGE_LOG_LEVEL"):
        env.pop(name, None)  # the Procfile's and the bridge's defaults, not the caller's
    return env


def start_stack(tmp: Path, ledger_dir: Path, postgres: str | None = None) -> Stack:
    """Every app side by side; ``postgres`` (a server URL) adds the PostgreSQL ledger."""
    fakedub, dub_port = start_fakedub(tmp / "fakedub.log")
    servers: dict[str, Server] = {}
    ports: dict[str, int] = {}
    stack = Stack(tmp, fakedub, dub_port, servers, ports)
    try:
        env = bench_env(ledger_dir, dub_port)
        apps = [(BRIDGE, BRIDGE_APP, env)]
        if postgres is not None:
            stack.database = create_database(postgres)
            apps.append((POSTGRES, BRIDGE_APP, {**env, "DATABASE_URL": stack.database}))
        switch = ledger_switch()
        if switch is not None:
            apps.append((NO_LEDGER, BRIDGE_APP, {**env, switch: "false"}))
        apps.append((BARE, BARE_APP, env))
        for target, app, app_env in apps:
            ports[target] = free_port()
            cmd = procfile_command(app, ports[target], app_env)
            servers[target] = Server(target, cmd, app_env, tmp / f"{target}.log")
        for target in stack.targets:
            servers[target].wait_http(stack.url(target, "/healthz"))
    except BaseException:
        stack.stop()
        raise
    return stack


def _worker_cpu(server: Server) -> tuple[list[int], float]:
    pids = server.worker_pids()
    try:
        return pids, cpu_seconds(pids)
    except OSError:  # a worker restarted in between: CPU for this run is unknown
        return pids, float("nan")


def load_run(
    stack: Stack,
    target: str,
    corpus: Path,
    *,
    batch: int,
    connections: int,
    procs: int,
    seconds: float,
    warmup: float,
    tag: str,
    path: str = "/segment",
    write_key: str | None = None,
) -> dict[str, Any]:
    """One loadgen run against one app, plus its workers' CPU time and Dub calls."""
    server = stack.servers[target]
    pids, cpu_before = _worker_cpu(server)
    calls_before = stack.dub("/_bench/stats")
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        stack.url(target, path),
        "--corpus",
        str(corpus),
        "--batch",
        str(batch),
        "--connections",
        str(connections),
        "--procs",
        str(procs),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--tag",
        tag,
        *(["--write-key", write_key] if write_key else []),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    pids_after, cpu_after = _worker_cpu(server)
    calls_after = stack.dub("/_bench/stats")
    # CPU covers warm-up and the tail too: per event, divide by every event sent, estimated
    # from the counted window's rate over the whole run.
    total_events = result["events_per_second"] * (seconds + warmup)
    cpu = cpu_after - cpu_before if pids_after == pids else float("nan")
    result["target"] = target
    result["worker_cpu_seconds"] = cpu
    result["cpu_us_per_event"] = cpu / total_events * 1e6 if total_events else float("nan")
    result["dub_calls"] = sum(calls_after.values()) - sum(calls_before.values())
    return result


def compare(stack: Stack, corpus: Path, *, rounds: int, label: str, **load: Any) -> dict[str, Any]:
    """Every app, in rotating order, ``rounds`` times; medians, and ratios to bare."""
    targets = stack.targets
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for index in range(rounds):
        shift = index % len(targets)  # rotate: A B C, B C A, C A B
        for target in targets[shift:] + targets[:shift]:
            run = load_run(stack, target, corpus, tag=f"{label}{index}{target}", **load)
            runs[target].append(run)
            # The ledger's dirty pages would be written back during the next run and
            # steal a core from it: flush them now, between runs.
            os.sync()
            time.sleep(0.3)
            print(
                f"  {label} round {index + 1}/{rounds} {target:15}: "
                f"{run['events_per_second']:7,.0f} ev/s  p50 {run['p50_ms']:.2f} ms"
                f"  p99 {run['p99_ms']:.2f} ms  CPU {run['cpu_us_per_event']:.0f} us/ev"
                f"  statuses {run['statuses']}",
                flush=True,
            )
    med = statistics.median

    def side(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "events_per_second": med(r["events_per_second"] for r in rs),
            "p50_ms": med(r["p50_ms"] for r in rs),
            "p99_ms": med(r["p99_ms"] for r in rs),
            "conv_p50_ms": med(r["conv_p50_ms"] or 0 for r in rs),
            "conv_p99_ms": med(r["conv_p99_ms"] or 0 for r in rs),
            "cpu_us_per_event": med(r["cpu_us_per_event"] for r in rs),
            "non_200": sum(n for r in rs for s, n in r["statuses"].items() if s != "200"),
            "errors": sum(r["errors"] for r in rs),
            "dub_calls": sum(r["dub_calls"] for r in rs),
            "events": sum(r["events"] for r in rs),
        }

    def versus_bare(rs: list[dict[str, Any]]) -> dict[str, float]:
        # Per round (the two measured within seconds of each other), then the median.
        pairs = list(zip(rs, runs[BARE], strict=True))
        return {
            "throughput_ratio": med(
                a["events_per_second"] / b["events_per_second"] for a, b in pairs
            ),
            "cpu_ratio": med(b["cpu_us_per_event"] / a["cpu_us_per_event"] for a, b in pairs),
            "p50_added_ms": med(a["p50_ms"] - b["p50_ms"] for a, b in pairs),
            "p99_added_ms": med(a["p99_ms"] - b["p99_ms"] for a, b in pairs),
            "p99_ratio": med(a["p99_ms"] / b["p99_ms"] for a, b in pairs),
        }

    return {
        "sides": {t: side(runs[t]) for t in targets},
        "vs_bare": {t: versus_bare(runs[t]) for t in targets if t != BARE},
        "runs": runs,
    }


def sdk_compare(stack: Stack, corpus: Path, *, rounds: int, **load: Any) -> dict[str, Any]:
    """Item 2b: 100-event batches to the bridge (ledger on) through POST /v1/batch, as the
    server SDKs post them, beside POST /segment; alternating, medians, and their ratio."""
    ways = {"/segment": {}, "/v1/batch": {"path": "/v1/batch", "write_key": WRITE_KEY}}
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    for index in range(rounds):
        order = list(ways) if index % 2 == 0 else list(reversed(ways))
        for way in order:
            tag = f"sdk{index}{'v' if way != '/segment' else 's'}"
            run = load_run(stack, BRIDGE, corpus, batch=100, tag=tag, **load, **ways[way])
            runs[way].append(run)
            os.sync()
            time.sleep(0.3)
            print(
                f"  sdk round {index + 1}/{rounds} {way:10}: {run['events_per_second']:7,.0f} ev/s"
                f"  p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms"
                f"  CPU {run['cpu_us_per_event']:.0f} us/ev  statuses {run['statuses']}",
                flush=True,
            )
    med = statistics.median
    sides = {
        way: {
            "events_per_second": med(r["events_per_second"] for r in rs),
            "p50_ms": med(r["p50_ms"] for r in rs),
            "p99_ms": med(r["p99_ms"] for r in rs),
            "cpu_us_per_event": med(r["cpu_us_per_event"] for r in rs),
            "non_200": sum(n for r in rs for s, n in r["statuses"].items() if s != "200"),
            "dub_calls": sum(r["dub_calls"] for r in rs),
        }
        for way, rs in runs.items()
    }
    pairs = list(zip(runs["/v1/batch"], runs["/segment"], strict=True))
    ratio = med(a["events_per_second"] / b["events_per_second"] for a, b in pairs)
    return {"sides": sides, "v1_over_segment": ratio}


def memory(stack: Stack) -> dict[str, Any]:
    """Peak RSS (VmHWM) of each gunicorn worker, in MB."""
    out: dict[str, Any] = {}
    for target, server in stack.servers.items():
        pids = server.worker_pids()
        out[target] = {
            "workers": len(pids),
            "vmhwm_mb": [round(proc_status(pid, "VmHWM") / 1024, 1) for pid in pids],
            "vmrss_mb": [round(proc_status(pid, "VmRSS") / 1024, 1) for pid in pids],
        }
        out[target]["peak_mb"] = max(out[target]["vmhwm_mb"], default=0.0)
    return out


def big_batch_body(lines: list[bytes], size: int = 1000, conversions: int = 200) -> bytes:
    """``size`` corpus events as one JSON array, exactly ``conversions`` of them Dub calls."""
    converting = [line for line in lines if plan(orjson.loads(line))]
    others = [line for line in lines if not plan(orjson.loads(line))]
    if len(converting) < conversions or len(others) < size - conversions:
        raise RuntimeError("the corpus is too small for the 1000-event batch")
    chosen = converting[:conversions] + others[: size - conversions]
    random.Random(4).shuffle(chosen)
    return b"[" + b",".join(chosen) + b"]"


def big_batch(
    stack: Stack, lines: list[bytes], *, repeats: int, delay_ms: int = 20
) -> dict[str, Any]:
    """Item 4: a 1000-event batch, 200 conversions, Dub answering in ``delay_ms``."""
    body = big_batch_body(lines)
    stack.dub(f"/_bench/delay/{delay_ms}", "POST")
    targets = stack.targets
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    try:
        for index in range(repeats):
            for target in targets if index % 2 == 0 else targets[::-1]:
                conn = Connection("127.0.0.1", stack.ports[target], "/segment")
                fresh = body.replace(ID_NEEDLE, f'"messageId":"big{index}{target}-'.encode())
                calls_before = sum(stack.dub("/_bench/stats").values())
                started = time.monotonic()
                status, answer = conn.post(fresh, timeout=60)
                seconds = time.monotonic() - started
                conn.close()
                calls = sum(stack.dub("/_bench/stats").values()) - calls_before
                parsed = orjson.loads(answer)
                delivered = (
                    parsed.get("counts", {}).get("delivered", 0)
                    if target != BARE
                    else parsed.get("calls")
                )
                runs[target].append(
                    {
                        "seconds": seconds,
                        "status": status,
                        "delivered": delivered,
                        "dub_calls": calls,
                    }
                )
                print(
                    f"  1000-event batch {target:15}: {seconds:.3f} s, HTTP {status}, "
                    f"{delivered} delivered, {calls} Dub calls",
                    flush=True,
                )
    finally:
        stack.dub("/_bench/delay/0", "POST")
    return {
        target: {
            "max_seconds": max(r["seconds"] for r in rs),
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "all_200": all(r["status"] == 200 for r in rs),
            "all_delivered": all(r["delivered"] == 200 for r in rs),
            "runs": rs,
        }
        for target, rs in runs.items()
    }


def log_problems(stack: Stack) -> dict[str, dict[str, Any]]:
    """Error-level lines in each server's log (a clean run has none), with a few samples."""
    out = {}
    for target, server in stack.servers.items():
        text = server.log_path.read_text(errors="replace")
        bad = [
            line
            for line in text.splitlines()
            if '"level":"error"' in line or "[CRITICAL]" in line or "[ERROR]" in line
        ]
        out[target] = {"count": len(bad), "samples": [line[:400] for line in bad[:3]]}
    return out

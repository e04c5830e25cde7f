"""Slow clients, idle sockets and half-sent bodies against the Procfile's service, and how
long a normal signed request takes beside them (issues 22 and 23).

    .venv/bin/python bench/attacks.py                       # every scenario, the Procfile's worker
    .venv/bin/python bench/attacks.py --worker gthread slow # plain gunicorn gthread instead

Scenarios: ``slow`` (30 connections sending their headers a byte every 1.5 s), ``idle``
(4,000 connections that send nothing), ``bodies`` (250 connections each sending 3.9 MB of
a 4 MB body, then stalling). Each prints the slowest and median normal request made
while the attack holds (a request not answered in 30 s counts as 30 s, "timed out"), and
the peak RSS of each worker (VmHWM). Figures from a shared 2-core machine: compare runs made
side by side, not with another machine's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import (
    BRIDGE_APP,
    Server,
    free_port,
    proc_status,
    procfile_command,
    start_fakedub,
)
from bridge.web.signing import sign

SECRET = "bench-secret"  # noqa: S105 (signs the bench's own requests)
GTHREAD = ["--worker-class", "gthread", "--limit-request-line", "4094",
           "--limit-request-fields", "100", "--limit-request-field_size", "8190"]  # fmt: skip
PROBE_TIMEOUT = 30.0


def normal_request(port: int, n: int) -> float:
    """Seconds a signed single-sale request took (PROBE_TIMEOUT when it was not answered)."""
    event = {
        "type": "track", "event": "Order Completed", "messageId": f"bench-{n}-{time.time_ns()}",
        "userId": f"u{n}", "timestamp": datetime.now(UTC).isoformat(),
        "context": {"traits": {"email": f"b{n}@example.com", "clickId": f"cl_{n}"}},
        "properties": {"order_id": f"O-{n}-{time.time_ns()}", "revenue": 9.5, "currency": "USD"},
    }  # fmt: skip
    body = json.dumps(event).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/segment",
        data=body,
        headers={"Content-Type": "application/json", "X-Signature": sign(body, SECRET)},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as answer:  # noqa: S310
            answer.read()
    except urllib.error.HTTPError as answer:
        answer.read()
    except OSError:
        return PROBE_TIMEOUT
    return time.monotonic() - started


def probe_during(port: int, attack: Callable[[threading.Event], None], probes: int) -> list[float]:
    """Run ``attack`` (until the event is set), make ``probes`` normal requests beside it."""
    stop = threading.Event()
    attacker = threading.Thread(target=attack, args=(stop,), daemon=True)
    attacker.start()
    time.sleep(3.0)  # the attack in place before the first probe
    taken = []
    for n in range(probes):
        taken.append(normal_request(port, n))
        time.sleep(0.2)
    stop.set()
    attacker.join(60)
    return taken


def slow(port: int) -> Callable[[threading.Event], None]:
    def attack(stop: threading.Event) -> None:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
        head = b"POST /segment HTTP/1.1\r\nHost: b\r\nX-A: " + b"a" * 1000
        for byte in head:
            if stop.wait(1.5):
                break
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
        for sock in socks:
            sock.close()

    return attack


def idle(port: int, count: int = 4000) -> Callable[[threading.Event], None]:
    def attack(stop: threading.Event) -> None:
        socks = []
        for _ in range(count):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        stop.wait()
        for sock in socks:
            sock.close()

    return attack


def bodies(port: int, count: int = 250) -> Callable[[threading.Event], None]:
    head = b"POST /segment HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 4194304\r\n\r\n"
    part = b" " * (3_900_000)

    def one(stop: threading.Event) -> socket.socket | None:
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            with contextlib.suppress(OSError):
                sock.sendall(head + part)
            return sock
        return None

    def attack(stop: threading.Event) -> None:
        with ThreadPoolExecutor(50) as pool:
            socks = list(pool.map(one, [stop] * count))
        stop.wait()
        for sock in socks:
            if sock is not None:
                sock.close()

    return attack


SCENARIOS = {"slow": (slow, 10), "idle": (idle, 20), "bodies": (bodies, 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=" ".join(SCENARIOS))
    parser.add_argument("--worker", choices=["procfile", "gthread"], default="procfile")
    args = parser.parse_args()
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"no scenario {sorted(unknown)}: one of {', '.join(SCENARIOS)}")
    # A SIGTERM (a timeout) still runs the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))  # 4,000 sockets
    tmp = Path(tempfile.mkdtemp(prefix="bench-attacks-"))
    dub, dub_port = start_fakedub(tmp / "fakedub.log")
    try:
        for name in args.scenarios:
            port = free_port()
            env = {
                **os.environ,
                "DUB_API_KEY": "k",
                "DUB_API_URL": f"http://127.0.0.1:{dub_port}",
                "SEGMENT_SHARED_SECRET": SECRET,
                "BRIDGE_DB": str(tmp / f"{name}.sqlite3"),
                "BRIDGE_MAPPINGS_DIR": "mappings",
                "DUB_RATE_LIMIT_PER_MINUTE": "1000000",
            }
            cmd = procfile_command(BRIDGE_APP, port, env)
            if args.worker == "gthread":
                at = cmd.index("--worker-class")
                cmd[at : at + 2] = GTHREAD
            web = Server(name, cmd, env, tmp / f"{name}.log")
            try:
                web.wait_http(f"http://127.0.0.1:{port}/healthz")
                make, probes = SCENARIOS[name]
                taken = probe_during(port, make(port), probes)
                rss = [proc_status(pid, "VmHWM") // 1024 for pid in web.worker_pids()]
            finally:
                web.stop(30)
            slowest = max(taken)
            shown = "timed out" if slowest >= PROBE_TIMEOUT else f"{slowest * 1000:.0f} ms"
            print(f"{args.worker:8} {name:7} normal request: slowest {shown}, median "
                  f"{statistics.median(taken) * 1000:.0f} ms over {len(taken)};"
                  f" worker peak RSS {rss} MB", flush=True)  # fmt: skip
    finally:
        dub.stop()


if __name__ == "__main__":
    main()

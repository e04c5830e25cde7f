"""The burst of issue 24, in one command: ``python bench/burst.py [--postgres URL]``.

1,500 sales arrive as Segment sends them: 15 batches of 100 at once, each retried
Segment's way (growing pauses) until it is answered 200, against a fake Dub that allows
``--limit`` calls a minute (a sliding minute, as Dub's) and answers what goes past it 429
with Dub's millisecond ``Retry-After``. Measured: the requests Segment had to make per
batch, the time until the last sale reached Dub against 1,500 / limit, the most calls Dub
saw in any minute and its 429s, and whether each sale reached it once. With ``--postgres``
the same burst is run again against three instances on one PostgreSQL database, the
batches spread over them, and the scale-out curve is measured: webhook events a second with
1, 2 and 3 instances on that one database. Prints one JSON line per setup.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

if __package__ in (None, ""):  # `python bench/burst.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus
from bench.http_bench import bench_env, create_database, drop_database
from bench.servers import BRIDGE_APP, ROOT, Server, free_port, procfile_command, start_fakedub

SALES, BATCH = 1500, 100
WINDOW = 60.0  # Dub's limit: calls in any sliding minute
SEGMENT_FIRST_RETRY = 1.0  # Segment's retries: a pause that doubles, up to a cap
SEGMENT_RETRY_CAP = 30.0


class LimitedDub:
    """A fake Dub with a per-minute limit, recording every sale it accepted."""

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.accepted: deque[float] = deque()  # calls in the last minute
        self.log: list[tuple[float, str]] = []  # (time, invoiceId) of every accepted sale
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Dub's API serves it

            def log_message(self, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, answer = outer.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        now = time.time()
        with self.lock:
            while self.accepted and self.accepted[0] <= now - WINDOW:
                self.accepted.popleft()
            if len(self.accepted) >= self.limit:
                self.refused += 1
                free_at_ms = int((self.accepted[0] + WINDOW) * 1000) + 1
                error = {"code": "rate_limit_exceeded", "message": "Too many requests"}
                return 429, {"Retry-After": str(free_at_ms)}, {"error": error}
            self.accepted.append(now)
            self.log.append((now, str(body.get("invoiceId"))))
        sale = {"amount": 1, "currency": "usd", "paymentProcessor": "custom", "invoiceId": None}
        return 200, {}, {"eventName": "Purchase", "customer": {"id": "cus"}, "sale": sale}

    def most_in_a_minute(self) -> int:
        times = sorted(t for t, _ in self.log)
        most, start = 0, 0
        for end, at in enumerate(times):
            while times[start] <= at - WINDOW:
                start += 1
            most = max(most, end - start + 1)
        return most

    def close(self) -> None:
        self.server.shutdown()


def batches(run: str) -> list[bytes]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    out = []
    for b in range(SALES // BATCH):
        events = [
            {
                "type": "track",
                "event": "Order Completed",
                "messageId": f"{run}-{b}-{i}",
                "userId": f"user-{run}-{b}-{i}",
                "timestamp": now,
                "properties": {"order_id": f"{run}-{b}-{i}", "revenue": 10, "currency": "USD"},
            }
            for i in range(BATCH)
        ]
        out.append(json.dumps({"batch": events}).encode())
    return out


def segment(url: str, body: bytes) -> tuple[int, Counter[int]]:
    """Post one batch until it is answered 200, as Segment retries; the requests made."""
    made, statuses, pause = 0, Counter[int](), SEGMENT_FIRST_RETRY
    with requests.Session() as session:
        while True:
            made += 1
            try:
                answer = session.post(
                    url, data=body, headers={"Content-Type": "application/json"}, timeout=5
                )
                statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    return made, statuses
            except requests.RequestException:
                statuses[0] += 1  # no answer within Segment's 5 s
            time.sleep(pause)
            pause = min(pause * 2, SEGMENT_RETRY_CAP)


def burst(urls: list[str], dub: LimitedDub, run: str, wait: float) -> dict[str, Any]:
    bodies = batches(run)
    started = time.time()
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(segment, urls[i % len(urls)], b) for i, b in enumerate(bodies)]
        answered = [f.result() for f in futures]
    all_answered = time.time() - started
    while time.time() - started < wait:
        with dub.lock:
            seen = {inv for _, inv in dub.log if inv.startswith(f"{run}-")}
        if len(seen) >= SALES:
            break
        time.sleep(0.5)
    with dub.lock:
        mine = [(t, inv) for t, inv in dub.log if inv.startswith(f"{run}-")]
    counts = Counter(inv for _, inv in mine)
    last = max((t for t, _ in mine), default=started) - started
    ideal = SALES / dub.limit * 60
    requests = [made for made, _ in answered]
    statuses: Counter[int] = sum((s for _, s in answered), Counter())
    return {
        "instances": len(urls),
        "requests_per_batch_max": max(requests),
        "requests_per_batch_mean": sum(requests) / len(requests),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "all_batches_answered_200_s": round(all_answered, 1),
        "last_sale_s": round(last, 1),
        "ideal_s": ideal,
        "last_sale_vs_ideal": round(last / ideal, 3),
        "sales_recorded": len(counts),
        "sales_recorded_twice": sum(1 for n in counts.values() if n > 1),
        "dub_most_in_a_minute": dub.most_in_a_minute(),
        "dub_limit": dub.limit,
        "dub_429s": dub.refused,
    }


def instances(count: int, env: dict[str, str], tmp: Path, tag: str) -> list[Server]:
    servers = []
    for i in range(count):
        port = free_port()
        server = Server(f"{tag}{i}", procfile_command(BRIDGE_APP, port, env), env,
                        tmp / f"{tag}{i}.log")  # fmt: skip
        server.port = port  # type: ignore[attr-defined]
        servers.append(server)
    for server in servers:
        server.wait_http(f"http://127.0.0.1:{server.port}/healthz")  # type: ignore[attr-defined]
    return servers


def run_setup(name: str, count: int, env: dict[str, str], limit: int, tmp: Path) -> dict[str, Any]:
    dub = LimitedDub(limit)
    env = env | {"DUB_API_URL": f"http://127.0.0.1:{dub.port}"}
    servers = instances(count, env, tmp, name)
    try:
        urls = [f"http://127.0.0.1:{s.port}/segment" for s in servers]  # type: ignore[attr-defined]
        result = {"setup": name, **burst(urls, dub, name, wait=SALES / limit * 60 * 3)}
    finally:
        for server in servers:
            server.stop()
        dub.close()
    print(json.dumps(result), flush=True)
    return result


def scale_out(postgres: str, tmp: Path, seconds: float) -> dict[str, Any]:
    """Webhook events a second (single events, the benchmark's corpus, fake Dub without a
    limit) with 1, 2 and 3 instances on one PostgreSQL database, each with its own load."""
    corpus_path = corpus.write(tmp / "corpus.jsonl", 5000)
    fakedub, dub_port = start_fakedub(tmp / "fakedub.log")
    database = create_database(postgres)
    servers: list[Server] = []
    curve: dict[str, float] = {}
    try:
        env = bench_env(tmp, dub_port) | {"DATABASE_URL": database}
        servers = instances(3, env, tmp, "scale")
        for count in (1, 2, 3):
            loads = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.loadgen",
                        "--url",
                        f"http://127.0.0.1:{server.port}/segment",  # type: ignore[attr-defined]
                        "--corpus",
                        str(corpus_path),
                        "--batch",
                        "1",
                        "--connections",
                        "8",
                        "--procs",
                        "1",
                        "--seconds",
                        str(seconds),
                        "--warmup",
                        "0.5",
                        "--tag",
                        f"scale{count}-{i}",
                    ],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for i, server in enumerate(servers[:count])
            ]
            rates = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in loads]
            curve[f"{count} instances"] = round(sum(r["events_per_second"] for r in rates))
    finally:
        for server in servers:
            server.stop()
        fakedub.stop()
        drop_database(database)
    result = {"setup": "scale-out, one PostgreSQL", "events_per_second": curve}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="the burst of issue 24")
    parser.add_argument("--limit", type=int, default=1200, help="Dub's calls a minute")
    parser.add_argument("--postgres", help="a PostgreSQL server URL (postgresql://.../postgres)")
    parser.add_argument("--queue", default="1", help="BRIDGE_QUEUE_WHEN_LIMITED (1 or 0)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--scale-seconds", type=float, default=5.0, help="each point of the scale-out curve"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bridge-burst-"))
    env = bench_env(tmp, 0) | {
        "DUB_RATE_LIMIT_PER_MINUTE": str(args.limit),
        "BRIDGE_QUEUE_WHEN_LIMITED": args.queue,
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    results = []
    try:
        results.append(run_setup("sqlite", 1, env, args.limit, tmp))
        if args.postgres:
            database = create_database(args.postgres)
            try:
                pg = env | {"DATABASE_URL": database}
                results.append(run_setup("postgres-x3", 3, pg, args.limit, tmp))
            finally:
                drop_database(database)
            results.append(scale_out(args.postgres, tmp, args.scale_seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

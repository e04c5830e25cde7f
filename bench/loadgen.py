"""Closed-loop HTTP load from separate processes: keep-alive sockets, fresh messageIds.

Each of ``--procs`` processes runs ``connections / procs`` threads; each thread owns one
keep-alive connection and sends the next request as soon as the last answer is read.
The client is a few lines of raw HTTP/1.1 over a socket (http.client costs several
times more CPU per request, and this client shares the 2 cores with the servers).

Every request gets new messageIds (one ``bytes.replace`` of the common id prefix), so
the bridge's ledger never answers "duplicate" and every conversion reaches Dub.
Requests that finish during ``--warmup`` are not counted.

    python bench/loadgen.py --url http://127.0.0.1:8000/segment --corpus c.jsonl \
        --batch 1 --connections 8 --seconds 10

With ``--write-key KEY`` it posts as Segment's server SDKs do (point ``--url`` at
``/v1/batch``): ``{"batch": [...]}`` bodies, the key as the HTTP Basic user.

Prints one JSON line: events/s, requests/s, latency percentiles (ms), statuses.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.corpus import MESSAGE_ID_PREFIX, read_lines
from bench.handwritten import plan

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
ID_NEEDLE = b'"messageId":"' + MESSAGE_ID_PREFIX.encode()


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects after the server closes it."""

    def __init__(self, host: str, port: int, path: str, write_key: str | None = None):
        self.address = (host, port)
        auth = ""
        if write_key is not None:
            auth = f"Authorization: Basic {base64.b64encode(f'{write_key}:'.encode()).decode()}\r\n"
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def post(self, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        sock.sendall(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv(sock)
        header = buffer[:end]
        found = _CONTENT_LENGTH.search(header)
        if found is None:
            self.close()
            raise ConnectionError("answer without Content-Length")
        start, length = end + 4, int(found[1])
        while len(buffer) < start + length:
            buffer += self._recv(sock)
        answer, self.buffer = buffer[start : start + length], buffer[start + length :]
        if _CLOSE.search(header):
            self.close()
        return int(header[9:12]), answer

    def _recv(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(262144)
        if not chunk:
            self.close()
            raise ConnectionError("server closed the connection")
        return chunk


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, every counted request
    conv_latencies: list[float] = field(default_factory=list)  # requests with a Dub call
    events: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    error_sample: str = ""


def templates(lines: list[bytes], batch: int, sdk: bool = False) -> list[tuple[bytes, bool]]:
    """Request bodies (one event, or a JSON array of ``batch``; ``sdk``: always
    ``{"batch": [...]}``) and whether Dub is called."""
    out = []
    for start in range(0, len(lines), batch):
        group = [lines[(start + i) % len(lines)] for i in range(batch)]
        body = group[0] if batch == 1 else b"[" + b",".join(group) + b"]"
        if sdk:
            body = b'{"batch":[' + b",".join(group) + b"]}"
        converts = any(plan(orjson.loads(line)) for line in group)
        out.append((body, converts))
    return out


def run_thread(
    url: str,
    bodies: list[tuple[bytes, bool]],
    batch: int,
    stamp: str,
    offset: int,
    counted_from: float,
    end: float,
    tally: Tally,
    write_key: str | None = None,
) -> None:
    parts = urlsplit(url)
    conn = Connection(parts.hostname or "127.0.0.1", parts.port or 80, parts.path, write_key)
    n = len(bodies)
    i = offset
    while True:
        body, converts = bodies[i % n]
        fresh = b'"messageId":"' + f"{stamp}-{i}-".encode()
        body = body.replace(ID_NEEDLE, fresh)
        i += 1
        started = time.monotonic()
        if started >= end:
            break
        try:
            status, _ = conn.post(body)
        except OSError as exc:
            conn.close()
            if started >= counted_from:
                tally.errors += 1
                tally.error_sample = tally.error_sample or repr(exc)
            time.sleep(0.01)
            continue
        done = time.monotonic()
        if counted_from <= started and done <= end:
            tally.latencies.append(done - started)
            if converts:
                tally.conv_latencies.append(done - started)
            tally.events += batch
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
    conn.close()


def run_process(args: dict[str, Any], proc: int, out: Any) -> None:
    lines = read_lines(Path(args["corpus"]))
    bodies = templates(lines, args["batch"], sdk=args["write_key"] is not None)
    tallies = []
    threads = []
    for k in range(args["threads"]):
        tally = Tally()
        tallies.append(tally)
        slot = proc * args["threads"] + k
        thread = threading.Thread(
            target=run_thread,
            args=(
                args["url"],
                bodies,
                args["batch"],
                f"{args['tag']}{slot}",
                slot * 997,  # spread the threads over the corpus
                args["counted_from"],
                args["end"],
                tally,
                args["write_key"],
            ),
        )
        threads.append(thread)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = Tally()
    for tally in tallies:
        merged.latencies += tally.latencies
        merged.conv_latencies += tally.conv_latencies
        merged.events += tally.events
        merged.errors += tally.errors
        merged.error_sample = merged.error_sample or tally.error_sample
        for status, count in tally.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
    out.send(merged)
    out.close()


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize(merged: Tally, seconds: float, batch: int) -> dict[str, Any]:
    lat = sorted(merged.latencies)
    conv = sorted(merged.conv_latencies)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "batch": batch,
        "requests": len(lat),
        "events": merged.events,
        "seconds": seconds,
        "events_per_second": merged.events / seconds,
        "requests_per_second": len(lat) / seconds,
        "p50_ms": ms(percentile(lat, 0.50)),
        "p90_ms": ms(percentile(lat, 0.90)),
        "p99_ms": ms(percentile(lat, 0.99)),
        "max_ms": ms(lat[-1] if lat else None),
        "conv_requests": len(conv),
        "conv_p50_ms": ms(percentile(conv, 0.50)),
        "conv_p99_ms": ms(percentile(conv, 0.99)),
        "statuses": {str(k): v for k, v in sorted(merged.statuses.items())},
        "errors": merged.errors,
        "error_sample": merged.error_sample,
    }


def load(
    url: str,
    corpus: Path,
    *,
    batch: int = 1,
    connections: int = 8,
    procs: int = 2,
    seconds: float = 10.0,
    warmup: float = 1.0,
    tag: str = "lg",
    write_key: str | None = None,
) -> dict[str, Any]:
    procs = max(1, min(procs, connections))
    ctx = mp.get_context("fork")
    start = time.monotonic() + 0.5  # time for the processes to read the corpus
    params = {
        "url": url,
        "corpus": str(corpus),
        "batch": batch,
        "threads": connections // procs,
        "tag": tag,
        "write_key": write_key,
        "counted_from": start + warmup,
        "end": start + warmup + seconds,
    }
    pipes, workers = [], []
    for proc in range(procs):
        receive, send = ctx.Pipe(duplex=False)
        worker = ctx.Process(target=run_process, args=(params, proc, send), daemon=True)
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    merged = Tally()
    for receive in pipes:
        part: Tally = receive.recv()
        merged.latencies += part.latencies
        merged.conv_latencies += part.conv_latencies
        merged.events += part.events
        merged.errors += part.errors
        merged.error_sample = merged.error_sample or part.error_sample
        for status, count in part.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
    for worker in workers:
        worker.join()
    return summarize(merged, seconds, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop keep-alive load for POST /segment")
    parser.add_argument("--url", required=True)
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--tag", default="lg", help="messageId prefix; unique per run")
    parser.add_argument("--write-key", help="post as the SDKs do, with this write key")
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost"):
        sys.exit("loadgen: the benchmark only loads servers on 127.0.0.1")
    result = load(
        args.url,
        args.corpus,
        batch=args.batch,
        connections=args.connections,
        procs=args.procs,
        seconds=args.seconds,
        warmup=args.warmup,
        tag=args.tag,
        write_key=args.write_key,
    )
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()

"""Two apps in one process, the same requests in alternating blocks: worker CPU per event.

    python bench/inprocess.py --a bare --b off            # the bridge, ledger off, vs bare
    python bench/inprocess.py --a off --b sqlite --select calls
    python bench/inprocess.py --a sqlite --b postgres --postgres postgresql://127.0.0.1/postgres

The HTTP figures (``run.py`` item 2, ``pg_ratio.py``) share two cores with the load, the
fake Dub and the database, and move by up to about ±0.1 from run to run on this machine.
This one calls each app's WSGI callable directly from one thread, against the same fast
fake Dub (its own process), and alternates blocks of requests between the two apps (A B, then
B A), so a neighbour's burst of load or the machine's drift falls on both alike; repeated
runs agree within about 2 to 5%. It reads this thread's CPU time only: the bridge's background
threads (housekeeping, the outbox, SQLite's checkpoints) are not counted, nor the
database server's work. Metrics are this process's own (gunicorn's workers write
prometheus_client's multiprocess files, somewhat dearer). What it says is where the
request path's own CPU goes; the HTTP figures stay the ones the targets are read on.

Apps: ``bare`` (``bench/bare_app.py``), ``off`` (the bridge, BRIDGE_LEDGER=false),
``sqlite`` (a fresh file on disk) and ``postgres`` (a fresh database on the server given).
``--select``: every corpus event (``all``), only those that call Dub (``calls``), or only
those that do not (``no-calls``). Each request is one event with a fresh messageId. Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/inprocess.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench import corpus
from bench.bare_app import _dub_call
from bench.http_bench import bench_env, create_database, drop_database
from bench.servers import start_fakedub

APPS = ("bare", "off", "sqlite", "postgres")
WARMUP_BLOCKS = 4  # not counted: imports, connections, caches
WSGI = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_app(kind: str, env: dict[str, str], tmp: Path, database: str | None) -> WSGI:
    """One app, built under its own environment (the bridge reads its settings at start)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    if kind == "off":
        os.environ["BRIDGE_LEDGER"] = "false"
    elif kind == "sqlite":
        os.environ["BRIDGE_DB"] = str(Path(tempfile.mkdtemp(dir=tmp)) / "ledger.sqlite3")
    elif kind == "postgres":
        assert database is not None
        os.environ["DATABASE_URL"] = database
    try:
        if kind == "bare":
            from bench.bare_app import create_app as bare

            return bare()  # type: ignore[return-value]
        from bridge.web.app import create_app

        return create_app()  # type: ignore[return-value]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def environ(body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/segment", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }  # fmt: skip


def selected(lines: list[bytes], select: str) -> list[dict[str, Any]]:
    events = [orjson.loads(line) for line in lines]
    if select == "all":
        return events
    calls = select == "calls"
    return [e for e in events if (_dub_call(e) is not None) == calls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", choices=APPS, required=True)
    parser.add_argument("--b", choices=APPS, required=True)
    parser.add_argument("--postgres", help="a PostgreSQL server URL, for the postgres app")
    parser.add_argument("--select", choices=("all", "calls", "no-calls"), default="all")
    parser.add_argument("--events", type=int, default=6000, help="per app, counted")
    parser.add_argument("--block", type=int, default=100)
    args = parser.parse_args()
    if "postgres" in (args.a, args.b) and not args.postgres:
        parser.error("the postgres app needs --postgres URL")

    with tempfile.TemporaryDirectory(prefix="bridge-inprocess-") as name:
        tmp = Path(name)
        fakedub, dub_port = start_fakedub(tmp / "fakedub.log")
        database = create_database(args.postgres) if args.postgres else None
        # The bridge's log lines (one per event) go to a file, as gunicorn's would.
        real_stderr, sys.stderr = sys.stderr, (tmp / "apps.log").open("w")
        apps: dict[str, WSGI] = {}
        try:
            env = bench_env(tmp, dub_port)
            apps["a"] = make_app(args.a, env, tmp, database)
            apps["b"] = make_app(args.b, env, tmp, database)
            path = corpus.write(tmp / "corpus.jsonl", corpus.DEFAULT_EVENTS)
            events = selected(corpus.read_lines(path), args.select)
            figures = run(apps, events, args.events, args.block)
        finally:
            for app in apps.values():  # the bridge's threads and ledger, before the database
                service = getattr(app, "extensions", {}).get("bridge")
                if service is not None:
                    service.close()
            sys.stderr.close()
            sys.stderr = real_stderr
            fakedub.stop()
            if database is not None:
                drop_database(database)
    a, b = figures["a"], figures["b"]
    report = {
        "a": args.a, "b": args.b, "select": args.select,
        "cpu_us_per_event": {args.a: round(a, 1), args.b: round(b, 1)},
        "b_over_a": round(b / a, 3),
        "statuses": figures["statuses"],
    }  # fmt: skip
    print(json.dumps(report))


def run(apps: dict[str, WSGI], events: list[dict[str, Any]], count: int, block: int) -> Any:
    """CPU seconds per event of each app, over ``count`` counted events each."""
    cpu = {"a": 0.0, "b": 0.0}
    done = {"a": 0, "b": 0}
    statuses: dict[str, int] = {}

    def answered(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses[status] = statuses.get(status, 0) + 1

    number = 0
    blocks = count // block + WARMUP_BLOCKS
    for n in range(blocks):
        for side in ("a", "b") if n % 2 == 0 else ("b", "a"):
            bodies = []
            for _ in range(block):
                event = dict(events[number % len(events)])
                event["messageId"] = f"inproc-{number}-{uuid.uuid4().hex}"
                bodies.append(orjson.dumps(event))
                number += 1
            app = apps[side]
            started = time.thread_time()
            for body in bodies:
                answer = app(environ(body), answered)
                for _ in answer:
                    pass
                close = getattr(answer, "close", None)
                if close is not None:
                    close()
            if n >= WARMUP_BLOCKS:
                cpu[side] += time.thread_time() - started
                done[side] += block
    per = {side: cpu[side] / done[side] * 1e6 for side in cpu}
    return {**per, "statuses": statuses}


if __name__ == "__main__":
    main()

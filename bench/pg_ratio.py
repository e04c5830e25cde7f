"""PostgreSQL against SQLite, side by side: ``python bench/pg_ratio.py --postgres URL``.

Item 2 of ``bench/run.py`` (the webhook under load: single events, then 100-event
batches, 8 connections from 2 load processes) for the bridge with its SQLite ledger, the
bridge with its PostgreSQL ledger (a fresh database on that server) and the bare Flask app,
against the same fast fake Dub, the same gunicorn workers and threads, in rotating order.
Each round's PostgreSQL figure is divided by the SQLite figure measured seconds before or
after it; the median of those ratios is the figure to read (absolute numbers move with
whatever else the machine runs). Prints one JSON line per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/pg_ratio.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus, http_bench
from bench.http_bench import BARE, BRIDGE, NO_LEDGER, POSTGRES
from bench.run import CONNECTIONS, LOAD_PROCS
from bench.servers import cpu_seconds


def server_cpu(database: str) -> float | None:
    """CPU seconds used so far by the PostgreSQL server processes serving ``database``
    (its pooled connections stay open for the run); None when the server is not on this
    machine or its processes cannot be read."""
    import psycopg

    server, name = database.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        pids = [
            pid
            for (pid,) in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchall()
        ]
    try:
        return cpu_seconds(pids)
    except OSError:
        return None


def phase(stack: http_bench.Stack, corpus_path: Path, batch: int, rounds: int,
          seconds: float) -> dict[str, Any]:  # fmt: skip
    label = "single" if batch == 1 else f"batch{batch}"
    load = {"warmup": 0.5, "procs": LOAD_PROCS, "connections": CONNECTIONS}
    assert stack.database is not None
    before = server_cpu(stack.database)
    done = http_bench.compare(
        stack, corpus_path, rounds=rounds, label=label, batch=batch, seconds=seconds, **load
    )
    after = server_cpu(stack.database)
    runs, sides = done["runs"], done["sides"]
    # Every event sent to it, warm-up and tail included (as the workers' CPU per event).
    sent = sum(r["events_per_second"] * (seconds + load["warmup"]) for r in runs[POSTGRES])
    pairs = list(zip(runs[POSTGRES], runs[BRIDGE], strict=True))
    med = statistics.median
    return {
        "phase": label,
        "events_per_second": {t: round(sides[t]["events_per_second"]) for t in sides},
        "postgres_vs_sqlite": round(
            med(p["events_per_second"] / s["events_per_second"] for p, s in pairs), 3
        ),
        "postgres_vs_sqlite_each_round": [
            round(p["events_per_second"] / s["events_per_second"], 3) for p, s in pairs
        ],
        "postgres_vs_bare": round(done["vs_bare"][POSTGRES]["throughput_ratio"], 3),
        "sqlite_vs_bare": round(done["vs_bare"][BRIDGE]["throughput_ratio"], 3),
        "cpu_per_event_us": {t: round(sides[t]["cpu_us_per_event"]) for t in sides},
        # The PostgreSQL server's own processes, per event the PostgreSQL bridge took (the
        # gunicorn workers' CPU above leaves it out; SQLite's work is in the workers').
        "postgres_server_cpu_per_event_us": (
            round((after - before) / sent * 1e6)
            if before is not None and after is not None
            else None
        ),
        "non_200": {t: sides[t]["non_200"] for t in sides},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BRIDGE_BENCH_POSTGRES"),
        help="a PostgreSQL server URL (postgresql://user@127.0.0.1:5432/db)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="each measured run")
    args = parser.parse_args()
    if not args.postgres:
        parser.error("--postgres (or BRIDGE_BENCH_POSTGRES) is needed")
    tmp = Path(tempfile.mkdtemp(prefix="bridge-pg-ratio-"))
    corpus_path = corpus.write(tmp / "corpus.jsonl", 5000)
    (tmp / "ledger").mkdir()
    stack = http_bench.start_stack(tmp, tmp / "ledger", args.postgres)
    try:
        if NO_LEDGER in stack.servers:  # not compared here
            stack.servers.pop(NO_LEDGER).stop()
        assert set(stack.servers) == {BRIDGE, POSTGRES, BARE}
        for batch in (1, 100):
            print(json.dumps(phase(stack, corpus_path, batch, args.rounds, args.seconds)),
                  flush=True)  # fmt: skip
    finally:
        stack.stop()


if __name__ == "__main__":
    main()

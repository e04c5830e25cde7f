"""The console's events list with a big ledger: how long each page takes to answer.

Fills a ledger with ``--rows`` rows (default 1,000,000: mostly delivered, 1% dead letters,
two mappings, 50,000 customers, a week of first sightings), then asks the app (Flask's
test client: the whole request, the ledger's queries and the HTML) for the list with each
filter, and a page deep in it, ``--repeat`` times; prints the median and the slowest.

    .venv/bin/python bench/console_list.py                       # SQLite, in a temp dir
    .venv/bin/python bench/console_list.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import re
import secrets
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bridge.core.settings import Settings
from bridge.ledger import Access, open_ledger
from bridge.web.app import create_app
from bridge.web.console.blueprint import COUNT_CAP

TOKEN = secrets.token_urlsafe(24)  # a fresh one each run: the bench logs in with it
WEEK = 7 * 86400
STATES = ["delivered"] * 97 + ["pending", "invalid", "rejected"]
MAPPINGS = ["order-sale", "signup-lead"]
TARGET_MS = 300.0


def rows(count: int, now: float) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(7)
    for i in range(count):
        created = now - WEEK + WEEK * i / count
        state = rng.choice(STATES)
        mapping = MAPPINGS[i % 2]
        body = '{"amount":1999,"currency":"usd"}'
        error = '["amount: refused"]' if state in ("invalid", "rejected") else None
        payload = '{"event":"Order Completed"}' if state != "delivered" else None
        yield (
            f"msg-{i:07d}", mapping, "sale" if mapping == "order-sale" else "lead",
            "Order Completed", f"user-{rng.randrange(50_000)}", state, 1, body, payload,
            200 if state == "delivered" else 422, error, created, created,
        )  # fmt: skip


COLUMNS = (
    "message_id, mapping, action, event, customer, state, attempts, request_body, payload,"
    " status, error, created_at, updated_at"
)


def fill_sqlite(path: Path, count: int, now: float) -> None:
    # The column list is this file's constant, not input.
    insert = f"INSERT INTO deliveries ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany(
            insert,
            rows(count, now),
        )
        db.commit()
        db.execute("ANALYZE")
        db.commit()


def fill_postgres(url: str, count: int, now: float) -> None:
    copying = f"COPY deliveries ({COLUMNS}) FROM STDIN"
    with psycopg.connect(url) as db, db.cursor() as cur, cur.copy(copying) as copy:
        for row in rows(count, now):
            copy.write_row(row)
    # What autovacuum does to a table this size soon after: statistics, the visibility map.
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE deliveries")


def timed(client: Any, url: str, repeat: int) -> tuple[float, float, str]:
    spent = []
    page = ""
    for _ in range(repeat):
        start = time.perf_counter()
        answer = client.get(url)
        spent.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, (url, answer.status_code)
        page = answer.get_data(as_text=True)
    return statistics.median(spent), max(spent), page


def measure(settings: Settings, repeat: int) -> list[tuple[str, float, float, int]]:
    app = create_app(settings)
    try:
        client = app.test_client()
        login = client.get("/console/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf" value="([^"]+)"', login)
        assert csrf
        client.post("/console/login", data={"token": TOKEN, "csrf": csrf[1]})
        queries = {
            "all": "/console/events",
            "state=dead": "/console/events?state=dead",
            "state=delivered": "/console/events?state=delivered",
            "mapping": "/console/events?mapping=signup-lead",
            "since=1h": "/console/events?since=1h",
            "q=messageId": "/console/events?q=msg-0500000",
            "q=customer": "/console/events?q=user-4242",
        }
        client.get("/console/events")  # warm: templates compiled, connections open
        out = []
        ledger = app.extensions["bridge"].ledger
        spent = []
        for _ in range(repeat):
            start = time.perf_counter()
            counted = ledger.counts(cap=COUNT_CAP)
            spent.append((time.perf_counter() - start) * 1000)
        out.append(("counts (capped)", statistics.median(spent), max(spent), len(counted)))
        for name, url in queries.items():
            median, worst, page = timed(client, url, repeat)
            out.append((name, median, worst, page.count("<tr data-message-id")))
        # Twenty pages deep into the dead letters, by the pages' own links.
        url, depth = "/console/events?state=dead", 1
        while depth <= 20:
            page = client.get(url).get_data(as_text=True)
            found = re.search(r'id="next-page" href="([^"]+)"', page)
            if not found:  # a small ledger has fewer pages
                break
            url, depth = found[1].replace("&amp;", "&"), depth + 1
        median, worst, page = timed(client, url, repeat)
        out.append((f"state=dead, page {depth}", median, worst, page.count("<tr data-message-id")))
        return out
    finally:
        app.extensions["bridge"].close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--postgres", help="a server database URL: a database is made there")
    parser.add_argument(
        "--sqlite", type=Path, help="keep the SQLite ledger in this file (reused when it exists)"
    )
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        base: dict[str, Any] = {
            "dub_api_key": "bench", "dub_api_url": "http://127.0.0.1:9", "reload_seconds": 0,
            "console_token": TOKEN, "db_path": args.sqlite or Path(tmp) / "ledger.sqlite3",
        }  # fmt: skip
        reuse = args.sqlite is not None and args.sqlite.exists()
        admin = None
        if args.postgres:
            name = f"console_bench_{uuid.uuid4().hex[:8]}"
            admin = psycopg.connect(args.postgres, autocommit=True)
            admin.execute(f'CREATE DATABASE "{name}"')
            base["database_url"] = args.postgres.rsplit("/", 1)[0] + "/" + name
        try:
            settings = Settings.from_env({}, **base)
            ledger = open_ledger(settings, Access.CREATE)  # the schema, with migration 9
            assert ledger is not None
            ledger.close()
            started = time.perf_counter()
            kind = "postgres" if args.postgres else "sqlite"
            if args.postgres:
                fill_postgres(base["database_url"], args.rows, now)
            elif not reuse:
                fill_sqlite(base["db_path"], args.rows, now)
            print(f"{kind}: {args.rows:,} rows loaded in {time.perf_counter() - started:.0f} s")
            with contextlib.redirect_stderr(io.StringIO()):  # the app's JSON log lines
                results = measure(settings, args.repeat)
            print(f"{'page':<22} {'median ms':>10} {'slowest ms':>11} {'rows':>5}")
            for name, median, worst, shown in results:
                flag = "" if median < TARGET_MS else f"  over {TARGET_MS:g} ms"
                print(f"{name:<22} {median:>10.1f} {worst:>11.1f} {shown:>5}{flag}")
        finally:
            if admin is not None:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.close()


if __name__ == "__main__":
    main()

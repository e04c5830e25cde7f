"""The console's events list with a big ledger: how long each page takes to answer.

Fills a ledger with ``--rows`` rows (default 1,000,000: mostly delivered, 1% invalid, 1%
rejected, 1% pending, and the oldest 3% given up in one outage at the start of the week; two
mappings, 50,000 customers, a week of first sightings), then asks the app (Flask's test
client: the whole request, the ledger's queries and the HTML) for the list with each filter,
a state with no rows, and a page deep in it, ``--repeat`` times; prints the median and the
slowest. With ``--postgres``, SQLite and PostgreSQL are measured side by side in one run
(each request asked of one, then of the other), so both see the same load.

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


OUTAGE = 0.03  # the oldest 3% of rows: given up in one outage, a week ago


def rows(count: int, now: float) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(7)
    for i in range(count):
        created = now - WEEK + WEEK * i / count
        state = rng.choice(STATES) if i >= count * OUTAGE else "gave_up"
        mapping = MAPPINGS[i % 2]
        body = '{"amount":1999,"currency":"usd"}'
        error = '["amount: refused"]' if state in ("invalid", "rejected", "gave_up") else None
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


QUERIES = {
    "all": "/console/events",
    "state=dead": "/console/events?state=dead",
    "state=delivered": "/console/events?state=delivered",
    "state=gave_up (old)": "/console/events?state=gave_up",
    "state=superseded (0)": "/console/events?state=superseded",
    "mapping": "/console/events?mapping=signup-lead",
    "dead + mapping": "/console/events?state=dead&mapping=signup-lead",
    "since=1h": "/console/events?since=1h",
    "q=messageId": "/console/events?q=msg-0500000",
    "q=customer": "/console/events?q=user-4242",
}


class Console:
    """One backend's app, logged in."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.client = self.app.test_client()
        login = self.client.get("/console/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf" value="([^"]+)"', login)
        assert csrf
        self.client.post("/console/login", data={"token": TOKEN, "csrf": csrf[1]})
        self.client.get("/console/events")  # warm: templates compiled, connections open
        self.ledger = self.app.extensions["bridge"].ledger

    def get(self, url: str) -> tuple[float, str]:
        start = time.perf_counter()
        answer = self.client.get(url)
        spent = (time.perf_counter() - start) * 1000
        assert answer.status_code == 200, (url, answer.status_code)
        return spent, answer.get_data(as_text=True)

    def deep(self, depth: int) -> str:
        """The URL of the dead letters' page ``depth``, by the pages' own links."""
        url, at = "/console/events?state=dead", 1
        while at < depth:
            found = re.search(r'id="next-page" href="([^"]+)"', self.get(url)[1])
            if not found:  # a small ledger has fewer pages
                break
            url, at = found[1].replace("&amp;", "&"), at + 1
        return url

    def close(self) -> None:
        self.app.extensions["bridge"].close()


Figures = list[tuple[float, float, int]]  # per backend: median ms, slowest ms, rows shown


def measure(consoles: list[Console], repeat: int) -> list[tuple[str, Figures]]:
    """Each page asked ``repeat`` times of every backend in turn (side by side: one load)."""
    out: list[tuple[str, Figures]] = []
    spent: list[list[float]] = [[] for _ in consoles]
    counted = [0] * len(consoles)
    for _ in range(repeat):
        for i, console in enumerate(consoles):
            start = time.perf_counter()
            counted[i] = len(console.ledger.counts(cap=COUNT_CAP))
            spent[i].append((time.perf_counter() - start) * 1000)
    out.append(("counts (capped)", _figures(spent, counted)))
    urls = dict(QUERIES)
    urls["state=dead, page 21"] = consoles[0].deep(21)
    for name, url in urls.items():
        spent = [[] for _ in consoles]
        shown = [0] * len(consoles)
        for _ in range(repeat):
            for i, console in enumerate(consoles):
                ms, page = console.get(url)
                spent[i].append(ms)
                shown[i] = page.count("<tr data-message-id")
        out.append((name, _figures(spent, shown)))
    return out


def _figures(spent: list[list[float]], shown: list[int]) -> Figures:
    return [(statistics.median(s), max(s), n) for s, n in zip(spent, shown, strict=True)]


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
        kinds = [("sqlite", Settings.from_env({}, **base), "")]
        if args.postgres:
            name = f"console_bench_{uuid.uuid4().hex[:8]}"
            admin = psycopg.connect(args.postgres, autocommit=True)
            admin.execute(f'CREATE DATABASE "{name}"')
            url = args.postgres.rsplit("/", 1)[0] + "/" + name
            kinds.append(("postgres", Settings.from_env({}, **base, database_url=url), url))
        consoles: list[Console] = []
        try:
            for kind, settings, url in kinds:
                ledger = open_ledger(settings, Access.CREATE)  # the schema, every migration
                assert ledger is not None
                ledger.close()
                started = time.perf_counter()
                if kind == "postgres":
                    fill_postgres(url, args.rows, now)
                elif not reuse:
                    fill_sqlite(base["db_path"], args.rows, now)
                print(f"{kind}: {args.rows:,} rows loaded in {time.perf_counter() - started:.0f} s")
            with contextlib.redirect_stderr(io.StringIO()):  # the app's JSON log lines
                consoles = [Console(settings) for _, settings, _ in kinds]
                results = measure(consoles, args.repeat)
            head = "".join(f" {k + ' median':>16} {'slowest':>8} {'rows':>5}" for k, _, _ in kinds)
            print(f"{'page (ms)':<22}{head}")
            worst = 0.0
            for page, figures in results:
                cells = "".join(f" {m:>16.1f} {w:>8.1f} {n:>5}" for m, w, n in figures)
                worst = max([worst, *(w for _, w, _ in figures)])
                flag = "" if all(m < TARGET_MS for m, _, _ in figures) else f"  over {TARGET_MS:g}"
                print(f"{page:<22}{cells}{flag}")
            print(f"slowest single request: {worst:.0f} ms (target {TARGET_MS:g} ms)")
        finally:
            for console in consoles:
                console.close()
            if admin is not None:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.close()


if __name__ == "__main__":
    main()

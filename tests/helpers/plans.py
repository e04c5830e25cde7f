"""The ledger's statements as it sends them, and their query plans."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bridge.ledger import postgres
from bridge.ledger.base import Ledger
from bridge.ledger.sqlite import SQLiteLedger

Statement = tuple[str, dict[str, Any]]  # SQL with ``:name`` parameters, and its parameters


class _Recording:
    """A SQLite connection that keeps each statement sent through it."""

    def __init__(self, db: sqlite3.Connection, sent: list[Statement]):
        self._db = db
        self._sent = sent

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._sent.append((sql, dict(params or {})))
        return self._db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@contextlib.contextmanager
def recording(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Statement]]:
    """Every statement ``ledger`` (SQLite or PostgreSQL) sends inside the block, in order."""
    sent: list[Statement] = []
    if isinstance(ledger, SQLiteLedger):
        writer, reader = ledger._db(), ledger._db(write=False)
        monkeypatch.setattr(ledger, "_writer", _Recording(writer, sent))
        monkeypatch.setattr(ledger._local, "db", _Recording(reader, sent))
    else:
        execute = postgres._Connection.execute

        def capture(self: Any, sql: str, params: Any = None) -> Any:
            sent.append((sql, dict(params or {})))
            return execute(self, sql, params)

        monkeypatch.setattr(postgres._Connection, "execute", capture)
    try:
        yield sent
    finally:
        monkeypatch.undo()


def sqlite_plans(path: str, statements: list[Statement]) -> Iterator[list[str]]:
    """SQLite's plan of each statement, one line per step (EXPLAIN QUERY PLAN's detail)."""
    db = sqlite3.connect(path)
    try:
        for sql, params in statements:
            yield [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        db.close()


def pg_plans(url: str, statements: list[Statement]) -> Iterator[Any]:
    """PostgreSQL's JSON plan of each statement (``:name`` parameters), with sequential scans
    off: on a test's small table, the plan then shows which index the planner would choose."""
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")
        for sql, params in statements:
            (plan,) = conn.execute(
                "EXPLAIN (FORMAT JSON) " + postgres._pyformat(sql), params
            ).fetchone()
            yield json.loads(plan) if isinstance(plan, str) else plan
        conn.rollback()


def plan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan, at any depth."""
    if isinstance(plan, dict):
        if "Node Type" in plan:
            yield plan
        for value in plan.values():
            yield from plan_nodes(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from plan_nodes(value)

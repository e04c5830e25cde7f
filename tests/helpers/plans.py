"""Query plans of the ledger's statements, as the ledger sends them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg

from bridge.ledger import postgres


def pg_plans(url: str, statements: list[tuple[str, dict[str, Any]]]) -> Iterator[Any]:
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

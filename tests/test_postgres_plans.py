"""PostgreSQL's plans for the statements that find a row by its key.

A finish, a release, a defer, a pin and a supersede name the row by its primary key and
check its state. The console's index by mapping and state (migration 13) holds the state too, and the planner
took it for ``key AND state = 'in_flight'``: it then walked the entries of every row that had
passed through that state since the last vacuum, and a 100-event batch's finish took 20 to
30 ms after a minute of load (the benchmark's PostgreSQL figure fell round after round).
Each statement is captured as the ledger sends it and explained on a table of settled rows
(the planner's statistics then make any row in flight look rare): the row must be found by
the primary key alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from bridge.core.outcomes import State
from bridge.ledger.base import Attempt, ClaimRequest, Finish
from bridge.ledger.postgres import PostgresLedger
from tests.helpers.plans import pg_plans, plan_nodes, recording

MAPPINGS = ("order-sale", "signup-lead")


def _request(message_id: str, mapping: str) -> ClaimRequest:
    return ClaimRequest(message_id, mapping, "sale", "Order Completed", "u-1", {"amount": 1})


@pytest.fixture
def ledger(pg_url: str) -> Iterator[PostgresLedger]:
    made = PostgresLedger(pg_url)
    made.upgrade()
    # Settled rows in both mappings, as after some load: none is in flight, so the planner
    # takes an index on the state for the most selective way to a row in flight.
    for start in range(0, 3000, 500):
        wanted = [_request(f"old-{i}", MAPPINGS[i % 2]) for i in range(start, start + 500)]
        made.claim_many(wanted)
        states = (State.DELIVERED, State.PENDING, State.REJECTED)
        made.finish_many([Finish(w.message_id, w.mapping, states[i % 3], calls=1)
                          for i, w in enumerate(wanted)])  # fmt: skip
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ANALYZE deliveries")
        conn.execute("ANALYZE dub_attempts")
    yield made
    made.close()


def test_keyed_updates_find_their_row_by_the_primary_key(
    ledger: PostgresLedger, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement that changes a row found by its key (finish with and without Dub's
    answers, release, defer, pin, supersede) reads deliveries through its primary key, never
    through an index that holds the state."""
    with recording(ledger, monkeypatch) as statements:
        ledger.claim_many([_request(f"new-{i}", m) for i in range(3) for m in MAPPINGS])
        ledger.finish("new-0", MAPPINGS[0], State.DELIVERED, calls=1)
        answer = Attempt(1.0, "POST", "/track/sale", 200, '{"ok":true}')
        ledger.finish_many([Finish("new-0", MAPPINGS[1], State.DELIVERED, calls=1,
                                   answers=(answer,)),
                            Finish("new-1", MAPPINGS[0], State.PENDING, calls=1)])  # fmt: skip
        ledger.pin("new-1", MAPPINGS[1], {"amount": 2})
        ledger.release("new-1", MAPPINGS[1])
        ledger.defer("new-1", MAPPINGS[0], 5.0)
        ledger.claim_many([_request("new-2", MAPPINGS[0])])
        ledger.finish("new-2", MAPPINGS[0], State.REJECTED, calls=1)
        ledger.supersede("new-2", MAPPINGS[0])
    sent = [(sql, p) for sql, p in statements if sql.lstrip().startswith(("UPDATE", "WITH v"))]
    assert len(sent) == 7, [s for s, _ in sent]

    for (sql, _), plan in zip(sent, pg_plans(pg_url, sent), strict=True):
        read = {node["Index Name"] for node in plan_nodes(plan) if "Index Name" in node}
        assert {name for name in read if not name.startswith("dub_attempts")} == {
            "deliveries_pkey"
        }, (sql, read)

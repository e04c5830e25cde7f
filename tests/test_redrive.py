"""Dead letters and redrive, through the `bridge` command, with the ledger in a SQLite file or
in PostgreSQL: a one-off command sees what the service wrote."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import responses

from bridge.core.inputs import Item
from bridge.core.settings import Settings
from bridge.ledger import Access, open_ledger
from bridge.mapping.batch import plan_all
from bridge.service.mapping_files import load_directory
from bridge.service.wiring import build_deliverer
from tests.conftest import DUB, MAPPINGS, lead_ok, order, sale_ok, signup


@pytest.fixture
def maps(tmp_path: Path) -> Path:
    folder = tmp_path / "maps"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("samples"))
    return folder


@dataclass(frozen=True)
class Where:
    """Where the ledger is: a SQLite file, or a PostgreSQL database."""

    db: Path
    url: str | None = None

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.url} if self.url else {"BRIDGE_DB": str(self.db)}


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return Where(tmp_path / "l.db", url)


def settings_for(where: Where, maps: Path) -> Settings:
    return Settings.from_env(
        {}, db_path=where.db, database_url=where.url, mappings_dir=maps, dub_api_key="k",
        dub_api_url=DUB,
    )  # fmt: skip


def deliver(where: Where, maps: Path, events: list[Any]) -> list[Any]:
    settings = settings_for(where, maps)
    engine = load_directory(maps).engine
    ledger = open_ledger(settings, Access.CREATE)
    deliverer = build_deliverer(settings, ledger)
    try:
        results, payloads = plan_all(engine, [Item(e) for e in events])
        return deliverer.deliver(results, 2.0, payloads)
    finally:
        deliverer.close()
        assert ledger is not None
        ledger.close()


def cli(*args: str, where: Where, maps: Path) -> Any:
    """Run the CLI in-process (so `responses` sees its HTTP) through its click entry point."""
    from click.testing import CliRunner

    from bridge.cli import main

    env = {
        **where.env(),
        "BRIDGE_MAPPINGS_DIR": str(maps),
        "DUB_API_KEY": "k",
        "DUB_API_URL": DUB,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_fixed_mapping_redrives_an_invalid_event_once(
    where: Where, maps: Path, dub: responses.RequestsMock
) -> None:
    """An event invalid under a broken mapping is delivered by redrive after the fix, once."""
    sales = maps / "sales.yaml"
    good = sales.read_text()
    sales.write_text(good.replace("$.properties.revenue, $.properties.total", "$.properties.amt"))
    (result,) = deliver(where, maps, [order("x1")])
    assert result.outcome == "invalid"

    listed = cli("deadletters", "--json", where=where, maps=maps)
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["messageId"], row["state"], row["payload"]["messageId"]) == ("x1", "invalid", "x1")

    sales.write_text(good)  # ops fix the mapping
    dry = cli("redrive", "--dry-run", where=where, maps=maps)
    (line,) = [json.loads(x) for x in dry.stdout.splitlines()]
    assert (line["outcome"], line["before"]) == ("dry_run", "invalid")
    assert len(dub.calls) == 0

    dub.post(f"{DUB}/track/sale", json=sale_ok())
    done = cli("redrive", where=where, maps=maps)
    assert done.exit_code == 0, done.output
    (line,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert (line["outcome"], line["before"]) == ("delivered", "invalid")

    again = cli("redrive", where=where, maps=maps)
    assert again.stdout == "" and len(dub.calls) == 1  # nothing left, nothing sent twice
    assert cli("deadletters", where=where, maps=maps).stdout == ""


def test_redrive_rejected_with_filters_leads_first(
    where: Where, maps: Path, dub: responses.RequestsMock
) -> None:
    """Rejected events are redriven by mapping filter, leads before sales, and reported."""
    dub.post(
        f"{DUB}/track/lead", status=403, json={"error": {"code": "forbidden", "message": "plan"}}
    )
    dub.post(
        f"{DUB}/track/sale", status=403, json={"error": {"code": "forbidden", "message": "plan"}}
    )
    outcomes = [
        r.outcome
        for r in deliver(
            where, maps, [order("o1") | {"userId": "u9"}, signup("s1") | {"userId": "u9"}]
        )
    ]
    assert outcomes == ["rejected", "rejected"]

    listed = cli("deadletters", "--mapping", "signup-lead", where=where, maps=maps)
    assert "signup-lead" in listed.output and "order-sale" not in listed.output
    as_json = cli("deadletters", "--json", "--mapping", "signup-lead", where=where, maps=maps)
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    (call,) = row["calls"]  # each call and Dub's answer to it
    assert (call["number"], call["status"], call["path"]) == (1, 403, "/track/lead")
    assert json.loads(call["answer"])["error"]["code"] == "forbidden"

    dub.replace(responses.POST, f"{DUB}/track/lead", json=lead_ok())
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    done = cli("redrive", "--since", "1h", where=where, maps=maps)
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [(x["mapping"], x["outcome"]) for x in lines] == [
        ("signup-lead", "delivered"),
        ("order-sale", "delivered"),
    ]
    assert [c.request.url.rsplit("/", 1)[-1] for c in dub.calls[2:]] == ["lead", "sale"]
    ledger = open_ledger(settings_for(where, maps), Access.READ)
    assert ledger is not None
    try:  # the redrive's call is kept after the first one's, with Dub's answers
        calls = [(c.number, c.status) for c in ledger.attempts_of("s1")]
    finally:
        ledger.close()
    assert calls == [(1, 403), (2, 200)]


def test_removed_mapping_supersedes_its_dead_letters(where: Where, maps: Path) -> None:
    """A dead letter no current mapping sends is marked superseded and leaves the list."""
    sales = maps / "sales.yaml"
    sales.write_text(sales.read_text().replace("$.properties.revenue, $.properties.total", "$.x"))
    deliver(where, maps, [order("z1")])
    sales.unlink()
    (maps / "leads.yaml").exists()
    done = cli("redrive", where=where, maps=maps)
    (line,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert line["outcome"] == "superseded"
    ledger = open_ledger(settings_for(where, maps), Access.READ)
    assert ledger is not None and ledger.dead_letters() == []


def test_since_must_be_a_time(tmp_path: Path, maps: Path) -> None:
    """A bad --since is a usage error with the accepted forms."""
    result = cli("deadletters", "--since", "yesterday", where=Where(tmp_path / "l.db"), maps=maps)
    assert result.exit_code == 2 and "30m, 12h, 7d" in result.output


def test_settings_reach_redrive(tmp_path: Path) -> None:
    """Redrive uses the same settings model as the service."""
    assert Settings.from_env({"BRIDGE_DB": str(tmp_path / "x.db")}).db_path == tmp_path / "x.db"


def test_redrive_sends_in_chunks_and_prints_the_replay_line_shape(
    tmp_path: Path, maps: Path, dub: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """250 dead letters are redriven in chunks of 100 events, each chunk delivered within a
    budget of its own and its ledger rows looked up once, and every line is replay's line
    shape plus `before`."""
    from bridge.core.results import LINE_KEYS
    from bridge.delivery.deliverer import Deliverer
    from bridge.service.redrive import CHUNK
    from bridge.service.redrive import redrive as run_redrive

    where = Where(tmp_path / "l.db")
    dub.post(f"{DUB}/track/sale", status=400, json={"error": {"code": "bad", "message": "no"}})
    deliver(where, maps, [order(f"r{i}") for i in range(250)])  # 250 rejected dead letters
    dub.replace(responses.POST, f"{DUB}/track/sale", json=sale_ok())
    calls: list[int] = []
    real = Deliverer.deliver

    def counted(self: Deliverer, results: Any, *args: Any, **kw: Any) -> Any:
        calls.append(len({r.message_id for r in results}))
        return real(self, results, *args, **kw)

    monkeypatch.setattr(Deliverer, "deliver", counted)
    settings = settings_for(where, maps)
    ledger = open_ledger(settings, Access.WRITE)
    assert ledger is not None
    looked_up: list[int] = []
    many = ledger.rows_of_many

    def one_look_up(message_ids: Any) -> Any:
        looked_up.append(len(message_ids))
        return many(message_ids)

    monkeypatch.setattr(ledger, "rows_of_many", one_look_up)
    monkeypatch.setattr(ledger, "rows_of", lambda _: pytest.fail("a look-up per event"))
    deliverer = build_deliverer(settings, ledger)
    try:
        lines = run_redrive(
            load_directory(maps).engine, ledger, deliverer, mapping=None, since=None, budget=60
        )
    finally:
        deliverer.close()
        ledger.close()
    assert calls == [CHUNK, CHUNK, 50]
    assert looked_up == [CHUNK, CHUNK, 50]
    assert all(list(line) == [*LINE_KEYS, "before"] for line in lines)
    assert {line["outcome"] for line in lines} == {"delivered"}

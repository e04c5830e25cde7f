"""`bridge explain`, `bridge diff` and `bridge schema`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.mapping.explain import explain
from bridge.sources import load_directory
from tests.conftest import MAPPINGS, SAMPLES, order
from tests.test_cli import lines, run

EXAMPLES = MAPPINGS / "examples"
SAMPLE_FILES = sorted(str(p) for p in SAMPLES.glob("*json"))


def test_explain_text_shows_conditions_fields_and_outcome() -> None:
    """Each candidate mapping: conditions with value and verdict, each field's steps, outcome."""
    done = run("explain", *SAMPLE_FILES)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "  mapping order-sale (sale, " in out
    assert (
        "    field amount: from $.properties.revenue; raw 19.99; minor_units -> 1999; value 1999"
    ) in out
    assert "    field customerEmail: from $.context.traits.email; raw 'j***@example.com'" in out
    assert "jane.doe" not in out
    assert "not_empty: value absent: FAILED (organic sign-up" in out
    assert "    -> ready (POST /track/sale)" in out
    assert "  skipped: no mapping for event 'Product Viewed'" in out


def test_explain_json_agrees_with_the_engine() -> None:
    """The traced final value of every sent field is the value the engine put in the body."""
    done = run("explain", "--json", *SAMPLE_FILES, str(SAMPLES / "problems" / "bad-events.ndjson"))
    assert done.returncode == 0, done.stderr
    checked = 0
    for report in lines(done.stdout):
        for step in report["mappings"]:
            for field in step["fields"]:
                if step["body"] is not None and field["field"] in step["body"]:
                    assert field["value"] == step["body"][field["field"]], field
                    checked += 1
    assert checked > 20


def test_explain_covers_every_new_construct() -> None:
    """Combinators, templates, sums and query parameters are traced step by step."""
    engine = load_directory(EXAMPLES).engine
    event = {
        "type": "track",
        "event": "Order Placed",
        "messageId": "m",
        "userId": "u",
        "properties": {"products": [{"price": "1.5", "quantity": 2}]},
    }
    (step,) = explain(engine, event)["mappings"]
    amount = next(f for f in step["fields"] if f["field"] == "amount")
    assert amount["from"] == "sum of price * quantity over $.properties.products"
    assert (amount["raw"], amount["steps"], amount["value"]) == (
        "3.0",
        [{"transform": "minor_units", "value": 300}],
        300,
    )
    event = {
        "type": "track",
        "event": "Purchase",
        "messageId": "m",
        "properties": {"order_id": "TEST-1"},
    }
    (step,) = explain(engine, event)["mappings"]
    assert step["outcome"] == "skipped" and step["fields"] == []
    inner = step["conditions"][1]["conditions"][0]["conditions"][0]
    assert inner == {
        "test": "matches '^TEST-'",
        "held": True,
        "path": "$.properties.order_id",
        "value": "TEST-1",
        "absent": False,
    }


def write_events(tmp_path: Path) -> Path:
    path = tmp_path / "events.ndjson"
    events = [
        order("o1", revenue=1.005, currency="EUR"),
        order("o2", revenue=5),
        order("o3", revenue=0),
        order("o4"),
    ]
    del events[-1]["properties"]["currency"]
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


def changed_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "head"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("examples", "samples"))
    sales = folder / "sales.yaml"
    text = sales.read_text().replace(
        "      event: Order Completed\n",
        "      event: Order Completed\n      conditions: [{path: $.properties.currency, not_in: [EUR]}]\n",
    )
    sales.write_text(text.replace("default: usd", "default: gbp"))
    return folder


def test_diff_shows_only_changed_events_field_by_field(tmp_path: Path) -> None:
    """Changed outcomes and fields are shown, unchanged events are not; exit 1 when any changed."""
    events = write_events(tmp_path)
    same = run("diff", "--base", str(MAPPINGS), "--mappings", str(MAPPINGS), str(events))
    assert (same.returncode, same.stdout) == (0, "0 of 4 event(s) changed\n")
    done = run(
        "diff", "--base", str(MAPPINGS), "--mappings", str(changed_copy(tmp_path)), str(events)
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "o1 'Order Completed'",
        "  order-sale: dry_run -> skipped ($.properties.currency is 'EUR', expected not_in ['EUR'])",
        "    order-sale.currency: 'eur' -> (absent)",
        "    order-sale.customerExternalId: 'user_1' -> (absent)",
        "    order-sale.amount: 101 -> (absent)",
        "    order-sale.invoiceId: 'o-o1' -> (absent)",
        "    order-sale.paymentProcessor: 'custom' -> (absent)",
        "    order-sale.eventName: 'Order Completed' -> (absent)",
        "    order-sale.metadata: {'currency': 'EUR', 'order_id': 'o-o1', 'revenue': 1.005} -> (absent)",
        "o4 'Order Completed'",
        "    order-sale.currency: 'usd' -> 'gbp'",
        "2 of 4 event(s) changed",
    ]


def test_diff_against_a_git_revision(tmp_path: Path) -> None:
    """--base-rev reads the mapping folder as committed at a revision, without checking out."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    shutil.copytree(
        MAPPINGS, repo / "mappings", ignore=shutil.ignore_patterns("examples", "samples")
    )
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def git(*args: str) -> None:
        subprocess.run(
            ["git", *args],
            cwd=repo,
            check=True,
            capture_output=True,
            env=env | {"PATH": "/usr/bin:/bin"},
        )

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "base")
    shutil.copytree(changed_copy(tmp_path), repo / "mappings", dirs_exist_ok=True)
    events = write_events(tmp_path)
    done = run("diff", "--base-rev", "HEAD", "--mappings", str(repo / "mappings"), str(events))
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[-1] == "2 of 4 event(s) changed"
    bad = run(
        "diff", "--base-rev", "no-such-rev", "--mappings", str(repo / "mappings"), str(events)
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: git ls-tree")


@pytest.mark.parametrize(
    "args",
    [
        ["diff", "FILE"],
        ["diff", "--base", "BASE", "--base-rev", "HEAD", "FILE"],
        ["diff", "--base", "MISSING", "FILE"],
        ["diff", "--base", "BASE"],
    ],
)
def test_diff_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    """No base, two bases, a base folder that is not there, or no file: one line, exit 2."""
    events = write_events(tmp_path)
    subst = {"FILE": str(events), "BASE": str(MAPPINGS), "MISSING": str(tmp_path / "nope")}
    done = run(*[subst.get(a, a) for a in args])
    assert done.returncode == 2


def schema() -> dict[str, Any]:
    done = run("schema")
    assert done.returncode == 0
    return dict(json.loads(done.stdout))


def test_shipped_and_example_mappings_validate_against_the_schema() -> None:
    """Every shipped and example mapping file is valid under the printed JSON Schema."""
    validator = jsonschema.Draft202012Validator(schema())
    files = sorted(MAPPINGS.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) == 11
    for path in files:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ((), "verison"),
        (("mappings", 0), "actoin"),
        (("mappings", 0, "trigger"), "conditon"),
        (("mappings", 0, "fields", "amount"), "trasform"),
        (("tests", 0), "expcet"),
    ],
)
def test_the_schema_refuses_unknown_keys_at_every_level(where: tuple[Any, ...], key: str) -> None:
    """An unknown key anywhere makes the schema refuse the file, as the loader does."""
    data = yaml.safe_load((MAPPINGS / "sales.yaml").read_text())
    node = data
    for part in where:
        node = node[part]
    node[key] = 1
    errors = list(jsonschema.Draft202012Validator(schema()).iter_errors(data))
    assert errors, f"{key} was accepted"


def test_every_object_is_closed_and_every_key_described() -> None:
    """additionalProperties is false on every object with properties; every key has a text."""
    seen = 0

    def walk(node: Any) -> None:
        nonlocal seen
        if isinstance(node, dict):
            if "properties" in node and node.get("type") == "object":
                assert node.get("additionalProperties") is False, node.get("description")
                for key, sub in node["properties"].items():
                    assert sub.get("description"), key
                    seen += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema())
    assert seen > 60


def test_the_committed_schema_is_current() -> None:
    """mappings/mapping.schema.json (the editors' copy) is what `bridge schema` prints."""
    assert json.loads((MAPPINGS / "mapping.schema.json").read_text()) == schema()

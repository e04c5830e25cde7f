"""Golden tests inside mapping files, and `bridge test` that runs them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MAPPINGS
from tests.mapkit import errors, sale
from tests.test_cli import run, run_script

EXAMPLES = MAPPINGS / "examples"


@pytest.mark.parametrize("runner", [run, pytest.param(run_script, marks=pytest.mark.slow)])
def test_shipped_mappings_pass_their_golden_tests(runner: Any) -> None:
    """`bridge test mappings` passes every shipped test: in-process, and as the real script."""
    done = runner("test", "mappings")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("13 test(s) in mappings: 13 ok, 0 failed")
    assert all(line.startswith("ok   ") for line in lines[:-1])
    assert any("organic sign-up" in line for line in lines)


def test_every_recipe_passes_its_golden_tests() -> None:
    """Each README recipe is a file under mappings/examples whose tests pass."""
    done = run("test", str(EXAMPLES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout.splitlines()[-1]
    assert len(sorted(EXAMPLES.glob("*.yaml"))) == 9


def broken_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "maps"
    shutil.copytree(MAPPINGS, folder, ignore=shutil.ignore_patterns("examples"))
    sales = folder / "sales.yaml"
    sales.write_text(sales.read_text().replace("amount: 101", "amount: 100"))
    return folder


def test_a_failing_test_names_the_test_the_file_line_and_the_field(tmp_path: Path) -> None:
    """A failure is one FAIL line with file:line, then a diff naming the test and the field; exit 1."""
    folder = broken_copy(tmp_path)
    done = run("test", str(folder))
    assert done.returncode == 1
    name = "EUR 1.005 rounds half away from zero; PayPal becomes custom; no order_id, the messageId"
    fail = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    line = (folder / "sales.yaml").read_text().splitlines().index(f"  - name: {name}") + 1
    assert fail == [f"FAIL {name} ({folder / 'sales.yaml'}:{line})"]
    assert f"  {name}: order-sale.amount: expected 100, got 101" in done.stdout
    assert done.stdout.splitlines()[-1].endswith("12 ok, 1 failed")


def test_missing_request_and_invalid_expectations_are_explained(tmp_path: Path) -> None:
    """A request that is not sent says why (the skip reason); an unexpected invalid names errors."""
    (tmp_path / "m.yaml").write_text(
        sale(
            "amount: {path: $.properties.revenue, transform: minor_units}",
            trigger="{event: E, conditions: [{path: $.properties.ok, equals: true, reason: not ok}]}",
        )
        + """\
tests:
  - name: skipped but expected
    event: {type: track, event: E, messageId: m1, userId: u, properties: {revenue: 1}}
    expect: [{mapping: s, body: {customerExternalId: u, amount: 100}}]
  - name: invalid but not expected
    event: {type: track, event: E, messageId: m2, properties: {ok: true, revenue: 1}}
    expect: []
  - name: sent but not expected
    event: {type: track, event: E, messageId: m3, userId: u, properties: {ok: true, revenue: 2}}
    expect: []
    invalid: [s]
"""
    )
    done = run("test", str(tmp_path))
    assert done.returncode == 1
    out = done.stdout
    assert "skipped but expected: s: expected a request, none was sent (skipped: not ok)" in out
    assert (
        "invalid but not expected: s: invalid, the test does not expect it: customerExternalId"
        in out
    )
    assert (
        'sent but not expected: s: sent a request the test does not expect: {"customerExternalId"'
        in out
    )
    assert "sent but not expected: s: expected invalid, it was not" in out


def test_event_file_is_read_relative_to_the_mapping_file(tmp_path: Path) -> None:
    """event_file names a file beside the mapping file; a missing one fails that test only."""
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "e.ndjson").write_text(
        '{"type":"track","event":"Order Completed","messageId":"m","userId":"u","properties":{"revenue":1}}\n'
    )
    (tmp_path / "m.yaml").write_text(
        sale("amount: {path: $.properties.revenue, transform: minor_units}")
        + """\
tests:
  - {name: from a file, event_file: events/e.ndjson, expect: [{mapping: s, body: {customerExternalId: u, amount: 100}}]}
  - {name: missing file, event_file: events/none.json, expect: []}
"""
    )
    done = run("test", str(tmp_path))
    assert done.returncode == 1
    assert f"ok   from a file ({tmp_path / 'm.yaml'}:9)" in done.stdout
    assert "missing file: event_file events/none.json: no such file" in done.stdout


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        (
            "- {name: t, event: {a: 1}, expect: [{mapping: nope, body: {}}]}",
            "t.expect[0].mapping: no mapping named 'nope'",
        ),
        (
            "- {name: t, event: {a: 1}, expect: [], invalid: [sx]}",
            "no mapping named 'sx' (did you mean 's'?)",
        ),
        (
            "- {name: t, event: {a: 1}, event_file: x.json, expect: []}",
            "exactly one of `event` or `event_file`",
        ),
        (
            "- {name: t, event: {at: 2026-01-01}, expect: []}",
            "at event.at: a YAML date is not a JSON value",
        ),
        ("- {name: t, event: {a: 1}}", "t.expect: Field required"),
        (
            "- {name: t, event: {a: 1}, expect: [], expcet: []}",
            "unknown key (did you mean 'expect'?)",
        ),
        ("- {name: t, event_file: /etc/passwd, expect: []}", "relative to the mapping file"),
        (
            "- {name: t, event: {}, expect: []}\n  - {name: t, event: {}, expect: []}",
            "test name already used",
        ),
    ],
)
def test_bad_tests_are_load_errors(tests: str, message: str) -> None:
    """A test that names no mapping, has no event, or is not JSON is an error at its line."""
    found = errors(sale("amount: $.a") + "tests:\n  " + tests + "\n")
    assert any(message in e and e.startswith("m.yaml:") for e in found), found


def test_usage_and_mapping_errors(tmp_path: Path) -> None:
    """A folder that is not there is a usage error (2); broken mappings run no test (1)."""
    assert run("test", str(tmp_path / "nope")).returncode == 2
    (tmp_path / "m.yaml").write_text("mappings: [{name: x}]\n")
    done = run("test", str(tmp_path))
    assert done.returncode == 1 and "no test was run" in done.stderr


def readme_blocks() -> list[str]:
    text = (MAPPINGS.parent / "README.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


def test_readme_recipes_are_the_example_files() -> None:
    """Every recipe excerpt in the README appears, as it is, in the example file it names."""
    recipes = [b for b in readme_blocks() if b.startswith("# mappings/examples/")]
    assert len(recipes) == 11
    for block in recipes:
        name, excerpt = block.split("\n", 1)
        assert excerpt in (MAPPINGS.parent / name.removeprefix("# ")).read_text(), name


def test_readme_mapping_example_passes_its_own_test(tmp_path: Path) -> None:
    """The README's annotated mapping file loads clean and its golden test passes."""
    (tmp_path / "readme.yaml").write_text(readme_blocks()[0])
    done = run("test", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr

"""Mapping files: every problem reported at once, as file:line: mapping.key: message (hint)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.core.errors import MappingFileError
from bridge.service.mapping_files import load_directory
from tests.conftest import MAPPINGS

GOOD_SALE = """\
  - name: sale
    trigger: {event: Order Completed}
    action: sale
    fields:
      customerExternalId: {path: $.userId, transform: string}
      amount: {path: $.properties.revenue, transform: minor_units}
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def messages(tmp_path: Path) -> list[str]:
    result = load_directory(tmp_path, strict=False)
    return [str(issue) for issue in result.issues]


def test_default_mappings_load_clean() -> None:
    """The shipped mappings load with no error and no warning."""
    result = load_directory(MAPPINGS, strict=False)
    assert result.issues == []
    assert sorted(m.name for m in result.engine.mappings) == ["order-sale", "signup-lead"]


def test_every_error_of_a_file_is_reported_with_its_line(tmp_path: Path) -> None:
    """Unknown keys, wrong types, unknown Dub fields, bad paths and transforms: all at once."""
    write(
        tmp_path,
        """\
        version: 1
        mappings:
          - name: lead
            trigger:
              event: Sign Up
              conditon: []
            action: lead
            fields:
              clickId: $.context.traits.clickId
              eventName: $.event[
              customerExternalId: {path: $.userId, transform: lowr}
              customerEmial: $.context.traits.email
          - name: sale
            trigger: {event: 42}
            action: payout
            fields: {}
        """,
    )
    lines = messages(tmp_path)
    file = tmp_path / "m.yaml"
    assert f"{file}:6: lead.trigger.conditon: unknown key (did you mean 'conditions'?)" in lines
    assert any(
        line.startswith(f"{file}:10: lead.fields.eventName") and "bad JSONPath" in line
        for line in lines
    )
    assert any(
        line.startswith(f"{file}:11: lead.fields.customerExternalId.transform")
        and "unknown transform 'lowr'" in line
        for line in lines
    )
    assert any(line.startswith(f"{file}:14: sale.trigger.event") for line in lines)
    assert any(line.startswith(f"{file}:15: sale.action") for line in lines)
    # The semantic check of 'lead' runs only once its shape is valid; here the shape failed.
    assert len([line for line in lines if not line.startswith("warning")]) >= 5


def test_unknown_dub_field_and_missing_required_field(tmp_path: Path) -> None:
    """A field Dub does not have, and a field Dub needs but the mapping lacks, are errors."""
    write(
        tmp_path,
        """\
        mappings:
          - name: lead
            trigger: {event: Sign Up}
            action: lead
            fields:
              clickId: $.context.traits.clickId
              eventName: $.event
              customerEmial: $.context.traits.email
        """,
    )
    lines = messages(tmp_path)
    file = tmp_path / "m.yaml"
    assert (
        f"{file}:8: lead.fields.customerEmial: not a field of Dub's lead request "
        "(did you mean 'customerEmail'?)"
    ) in lines
    assert any(
        "lead.fields: Dub's lead request needs 'customerExternalId'" in line for line in lines
    )


def test_bad_literal_is_caught_at_load(tmp_path: Path) -> None:
    """A literal value Dub would refuse (mode: wiat) is an error before any event arrives."""
    write(
        tmp_path,
        """\
        mappings:
          - name: lead
            trigger: {event: Sign Up}
            action: lead
            fields:
              clickId: $.c
              eventName: $.event
              customerExternalId: $.userId
              mode: {value: wiat}
        """,
    )
    assert any(
        "lead.fields.mode.value: 'wiat' must be one of async, wait, deferred" in line
        for line in messages(tmp_path)
    )


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """Broken YAML is reported with its file and line, not a traceback."""
    write(tmp_path, "mappings:\n  - name: x\n    trigger: [unclosed\n")
    (line,) = messages(tmp_path)
    assert line.startswith(f"{tmp_path / 'm.yaml'}:") and "YAML" in line


def test_duplicate_keys_and_names_are_errors(tmp_path: Path) -> None:
    """A key given twice, or a mapping name used twice across files, is an error."""
    write(tmp_path, "mappings:\n" + GOOD_SALE, "a.yaml")
    write(
        tmp_path,
        "mappings:\n" + GOOD_SALE.replace("action: sale", "action: sale\n    action: sale"),
        "b.yaml",
    )
    lines = messages(tmp_path)
    assert any("b.yaml:5: action: key given twice" in line for line in lines)
    write(tmp_path, "mappings:\n" + GOOD_SALE, "b.yaml")
    lines = messages(tmp_path)
    assert any("b.yaml:2: sale: name already used at" in line for line in lines)


def test_two_mappings_same_action_same_event_warn(tmp_path: Path) -> None:
    """Two mappings sending a sale for one event is a warning, not an error."""
    write(tmp_path, "mappings:\n" + GOOD_SALE + GOOD_SALE.replace("name: sale", "name: sale2"))
    result = load_directory(tmp_path, strict=False)
    assert result.errors == []
    assert any("also makes a sale through 'sale'" in str(w) for w in result.warnings)


def test_amount_without_minor_units_warns(tmp_path: Path) -> None:
    """An amount taken as is (no minor_units) is allowed but warned about."""
    write(tmp_path, "mappings:\n" + GOOD_SALE.replace(", transform: minor_units", ""))
    result = load_directory(tmp_path, strict=False)
    assert result.errors == []
    assert any("no minor_units transform" in str(w) for w in result.warnings)


def test_strict_load_raises_with_all_issues(tmp_path: Path) -> None:
    """The service refuses to start on bad mappings, listing every error."""
    write(tmp_path, "mappings:\n  - name: x\n    action: nope\n")
    with pytest.raises(MappingFileError) as info:
        load_directory(tmp_path)
    assert len(info.value.issues) >= 3  # trigger missing, fields missing, action invalid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "Input should be a valid dictionary"),
        ("mappings: []\n", "List should have at least 1 item"),
        ("version: 2\nmappings: [1]\n", "version"),
        (
            "mappings:\n  - name: x\n    trigger: {event: E}\n    action: sale\n    fields:\n"
            "      amount: {path: $.a, value: 1}\n",
            "give exactly one of `path`, `paths` or `value`",
        ),
    ],
)
def test_shapes_that_are_not_mapping_files(tmp_path: Path, text: str, expected: str) -> None:
    """Empty files, empty lists, unknown versions and contradictory fields get clear errors."""
    write(tmp_path, text)
    lines = messages(tmp_path)
    assert any(expected in line for line in lines), lines


def test_missing_directory(tmp_path: Path) -> None:
    """A mapping directory that does not exist is one clear error."""
    assert messages(tmp_path / "nope") == [
        f"{tmp_path / 'nope'}: is not a directory of mapping files"
    ]

"""Small helpers for tests that build a mapping set from YAML text, in memory."""

from __future__ import annotations

import textwrap
from typing import Any

from bridge.core.results import Result
from bridge.mapping.engine import Engine
from bridge.mapping.loader import LoadResult, MappingText, load_texts

SALE_FIELDS = (
    "customerExternalId: $.userId\n  amount: {path: $.properties.revenue, transform: minor_units}"
)


def load(text: str, name: str = "m.yaml") -> LoadResult:
    """Load one mapping file given as (indented) YAML text; never raises."""
    return load_texts([MappingText(name, textwrap.dedent(text).encode())], strict=False)


def engine(text: str) -> Engine:
    result = load(text)
    assert result.errors == [], [str(e) for e in result.errors]
    return result.engine


def errors(text: str) -> list[str]:
    return [str(issue) for issue in load(text).errors]


def sale(fields: str, trigger: str = "{event: Order Completed}") -> str:
    """A file with one sale mapping, `s`, with these extra fields (YAML, one per line)."""
    extra = textwrap.indent(textwrap.dedent(fields).rstrip("\n") + "\n", "      ")
    return (
        "mappings:\n  - name: s\n"
        f"    trigger: {trigger}\n"
        "    action: sale\n"
        "    fields:\n"
        "      customerExternalId: $.userId\n" + extra
    )


def event(name: str = "Order Completed", **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "messageId": "m-1",
        "userId": "u1",
        "properties": properties,
    }


def one(engine: Engine, data: Any) -> Result:
    (result,) = engine.plan(data)
    return result

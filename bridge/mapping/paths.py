"""JSONPath, compiled once when the mapping files load.

Every path is parsed by jsonpath-ng at load time, so its syntax and errors are
jsonpath-ng's. Simple paths (``$.a.b``, ``$.a['b c']``, ``$.a[0].b``) are also
compiled to a tuple of plain key and index steps, walked with dict and list
look-ups on the hot path; anything else (filters, wildcards, slices, negative
indexes) is evaluated by jsonpath-ng. A property test holds the two to the same
answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext.parser import parse as jsonpath_parse

# One step of a simple path: .name | ['quoted'] | ["quoted"] | [123]
_STEP_RE = re.compile(
    r"""\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | \[\s*'(?P<sq>[^'\\]*)'\s*\]
      | \[\s*"(?P<dq>[^"\\]*)"\s*\]
      | \[\s*(?P<index>\d+)\s*\]""",
    re.VERBOSE,
)
# jsonpath-ng's grammar gives these words meaning; leave such paths to it.
_KEYWORDS = frozenset(
    {"where", "wherenot", "and", "or", "not", "in", "sorted", "len", "keys", "id"}
)


class PathSyntaxError(ValueError):
    """The text is not a JSONPath jsonpath-ng can parse."""


Step = str | int


def simple_steps(text: str) -> tuple[Step, ...] | None:
    """The key/index steps of a simple path, or None when jsonpath-ng must evaluate it."""
    if not text.startswith("$"):
        return None
    steps: list[Step] = []
    pos = 1
    while pos < len(text):
        match = _STEP_RE.match(text, pos)
        if match is None:
            return None
        if match["name"] is not None:
            if match["name"] in _KEYWORDS:
                return None
            steps.append(match["name"])
        elif match["index"] is not None:
            steps.append(int(match["index"]))
        else:
            steps.append(match["sq"] if match["sq"] is not None else match["dq"])
        pos = match.end()
    return tuple(steps)


def _walker(steps: tuple[Step, ...]) -> Callable[[Any], list[Any]]:
    def find(doc: Any) -> list[Any]:
        node = doc
        for step in steps:
            if isinstance(step, int):
                if type(node) is not list or step >= len(node):
                    return []
            elif type(node) is not dict or step not in node:
                return []
            node = node[step]
        return [node]

    return find


class CompiledPath:
    """A JSONPath ready to evaluate: ``find`` returns every value it selects."""

    __slots__ = ("fast", "find", "text")

    def __init__(self, text: str):
        self.text = text
        try:
            parsed = jsonpath_parse(text)
        except (JsonPathLexerError, JsonPathParserError, Exception) as exc:
            # jsonpath-ng raises plain Exception subclasses from its lexer/parser.
            raise PathSyntaxError(str(exc).strip() or "cannot parse JSONPath") from exc
        steps = simple_steps(text)
        self.fast = steps is not None
        if steps is not None:
            self.find: Callable[[Any], list[Any]] = _walker(steps)
        else:
            self.find = lambda doc: [match.value for match in parsed.find(doc)]

    def __repr__(self) -> str:
        return f"CompiledPath({self.text!r}, fast={self.fast})"


def compile_path(text: str) -> CompiledPath:
    """Compile a JSONPath, raising ``PathSyntaxError`` with jsonpath-ng's reason."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathSyntaxError("a JSONPath starts with '$'")
    return CompiledPath(text)

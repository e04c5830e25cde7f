"""JSONPath, compiled once when the mapping files load.

Every path is parsed by jsonpath-ng at load time, so its syntax and errors are
jsonpath-ng's. Simple paths (``$.a.b``, ``$.a['b c']``, ``$.a[0].b``) are also
compiled to a tuple of plain key and index steps, walked with dict and list
look-ups on the hot path; anything else (filters, wildcards, slices, negative
indexes) is evaluated by jsonpath-ng. A property test holds the two to the same
answers.

Only jsonpath-ng's selecting syntax is accepted: its extension operators (``sub()``,
``str()``, arithmetic, ``len``, ``sorted``...) compute values, can raise on a value
of the wrong type, and have safer spellings in the mapping language (``template``,
``sum``, transforms), so they are refused at load. What a path costs per event is
bounded at load too, since the event is the sender's: one recursive descent (``..``)
walks the event once, but a second one (``$..a..b``, or a filter's ``@..x`` under a
``..``) walks it again below every match of the first, quadratic in the event's depth
(10 s for an 11 KB event), so a path holds at most ``MAX_DESCENTS``. A filter's regular
expression (``=~``) would run in Python's backtracking ``re``, which jsonpath-ng calls
directly; it is refused for the ``matches`` condition, which runs RE2. Whatever still
goes wrong while jsonpath-ng evaluates a path on an odd event raises ``PathEvalError``,
which costs that event, never the batch.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext.parser import parse as jsonpath_parse

from .values import MISSING

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


MAX_DESCENTS = 1

# jsonpath-ng node classes a mapping may use: they select, they never compute.
_SELECTING = frozenset(
    {"Root", "This", "Child", "Fields", "Wildcard", "Index", "Slice", "Descendants"}
    | {"Filter", "Expression", "And", "Or", "Where", "WhereNot"}
)
# What each refused jsonpath-ng construct is called, and what to write instead.
_REFUSED = {
    "Sub": ("`sub()`", "use a transform or a `template`"),
    "Split": ("`split()`", "use a `template` or a transform"),
    "Str": ("`str()`", "use `transform: string` or a `template`"),
    "Operation": (
        "arithmetic (+ - * /)",
        "use `add: [...]` and `subtract: [...]` (total - discount), or `sum: {items, value}`",
    ),
    "Len": ("`len`", "use a condition such as `not_empty: true`"),
    "Keys": ("`keys`", "select the values by name"),
    "SortedThis": ("sorting (`sorted`, [/key], [\\key])", "select by index or filter"),
    "Path": ("`path`", "select the values by name"),
    "Parent": ("`parent`", "select from the top of the event"),
    "_Union": ("union (|)", "list the alternatives under `paths: [...]`"),
    "_Intersect": ("intersection (&)", "use a filter [?(...)] or conditions"),
}
_FILTER_OPS = frozenset({None, "!", "==", "=", "!=", "<", "<=", ">", ">="})


class PathSyntaxError(ValueError):
    """The text is not a JSONPath a mapping may use (the message says why)."""


class PathEvalError(ValueError):
    """jsonpath-ng failed on this event (a value of an unexpected type, nesting too deep)."""

    def __init__(self, path: str, exc: BaseException):
        super().__init__(f"path {path} could not be evaluated: {type(exc).__name__}: {exc}")
        self.path = path


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


def _first_walker(steps: tuple[Step, ...]) -> Callable[[Any], Any]:
    """The value a simple path selects, or MISSING: ``_walker`` without the list.

    Paths of up to three names (most of a mapping's) get a closure of their own: this
    runs for every field of every mapped event.
    """
    if len(steps) == 1 and isinstance(steps[0], str):
        (key,) = steps

        def first1(doc: Any) -> Any:
            return doc.get(key, MISSING) if type(doc) is dict else MISSING

        return first1
    if len(steps) == 2 and isinstance(steps[0], str) and isinstance(steps[1], str):
        outer, inner = steps

        def first2(doc: Any) -> Any:
            node = doc.get(outer) if type(doc) is dict else None
            return node.get(inner, MISSING) if type(node) is dict else MISSING

        return first2
    if len(steps) == 3 and all(isinstance(step, str) for step in steps):
        one, two, three = steps

        def first3(doc: Any) -> Any:
            node = doc.get(one) if type(doc) is dict else None
            node = node.get(two) if type(node) is dict else None
            return node.get(three, MISSING) if type(node) is dict else MISSING

        return first3
    find = _walker(steps)

    def first(doc: Any) -> Any:
        found = find(doc)
        return found[0] if found else MISSING

    return first


def _first_of(find: Callable[[Any], list[Any]]) -> Callable[[Any], Any]:
    def first(doc: Any) -> Any:
        found = find(doc)
        if not found:
            return MISSING
        return found[0] if len(found) == 1 else found

    return first


def _nodes(node: Any) -> list[Any]:
    """The sub-expressions of a jsonpath-ng node (a filter's paths included)."""
    found = [getattr(node, name, None) for name in ("left", "right", "target", "value")]
    found += list(getattr(node, "expressions", ()) or ()) + list(
        getattr(node, "operands", ()) or ()
    )
    return [n for n in found if isinstance(n, JSONPath)]


def check_selecting(parsed: Any) -> None:
    """Refuse what computes instead of selecting, and chains of recursive descent."""
    descents = 0
    pending = [parsed]
    while pending:
        node = pending.pop()
        kind = type(node).__name__
        if kind not in _SELECTING:
            what, hint = _REFUSED.get(kind, (kind, "only selecting JSONPath is supported"))
            raise PathSyntaxError(f"jsonpath-ng's {what} is not supported (hint: {hint})")
        if kind == "Descendants":
            descents += 1
        if kind == "Expression" and node.op not in _FILTER_OPS:
            if node.op == "=~":
                raise PathSyntaxError(
                    "a filter's regular expression (=~) is not supported: it would run in "
                    "Python's backtracking engine on the sender's text (hint: select the "
                    "value and test it with a `matches` condition, which runs RE2)"
                )
            raise PathSyntaxError(f"filter operator {node.op!r} is not supported")
        pending += _nodes(node)
    if descents > MAX_DESCENTS:
        raise PathSyntaxError(
            f"{descents} recursive descents (..), counting filters': at most {MAX_DESCENTS} "
            "is allowed, since each one more walks the event again below every match, a "
            "cost the sender controls (hint: spell out the steps, $..a.b or $.properties.a.b)"
        )


def _evaluator(text: str, parsed: Any) -> Callable[[Any], list[Any]]:
    def find(doc: Any) -> list[Any]:
        try:
            return [match.value for match in parsed.find(doc)]
        except Exception as exc:  # RecursionError included: jsonpath-ng recurses per level
            raise PathEvalError(text, exc) from exc

    return find


class CompiledPath:
    """A JSONPath ready to evaluate: ``find`` returns every value it selects."""

    __slots__ = ("fast", "find", "first", "text")

    def __init__(self, text: str):
        self.text = text
        try:
            with warnings.catch_warnings():
                # jsonpath-ng warns about syntax it will drop in 2.0 (`|`, `&`): the mapping
                # author hears about `|` from check_selecting; `&` keeps working.
                warnings.simplefilter("ignore", DeprecationWarning)
                parsed = jsonpath_parse(text)
        except (JsonPathLexerError, JsonPathParserError, Exception) as exc:
            # jsonpath-ng raises plain Exception subclasses from its lexer/parser.
            raise PathSyntaxError(str(exc).strip() or "cannot parse JSONPath") from exc
        steps = simple_steps(text)
        self.fast = steps is not None
        if steps is not None:
            self.find: Callable[[Any], list[Any]] = _walker(steps)
            # The value as a field reads it: the one match, all matches as a list, or MISSING.
            self.first: Callable[[Any], Any] = _first_walker(steps)
        else:
            check_selecting(parsed)
            self.find = _evaluator(text, parsed)
            self.first = _first_of(self.find)

    def __repr__(self) -> str:
        return f"CompiledPath({self.text!r}, fast={self.fast})"


def compile_path(text: str) -> CompiledPath:
    """Compile a JSONPath, raising ``PathSyntaxError`` with jsonpath-ng's reason."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathSyntaxError("a JSONPath starts with '$'")
    return CompiledPath(text)


@lru_cache(maxsize=4096)
def cached_path(text: str) -> CompiledPath:
    """Compile each distinct path text once, however many mappings use it."""
    return compile_path(text)


def check_path(text: Any) -> str:
    """``text`` if it is a JSONPath a mapping may use; ``ValueError`` saying why not."""
    if not isinstance(text, str):
        raise ValueError("a JSONPath must be text")
    try:
        cached_path(text)
    except PathSyntaxError as exc:
        hint = " (hint: a literal goes under `value:`)" if not text.startswith("$") else ""
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"bad JSONPath {shown!r}: {exc}{hint}") from exc
    return text

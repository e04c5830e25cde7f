"""YAML read with the line of every key and list item kept beside it.

pydantic reports where an error is as a path of keys and indexes; these helpers
turn that path back into the line an ops person should look at. Duplicate keys,
which YAML would silently merge, are collected instead. Aliases (``*name``) are refused:
each stands for a whole anchored value, so a kilobyte of nested ones stands for billions
of values, which every later step (validation, copies, golden tests) would walk.
"""

from __future__ import annotations

from typing import Any

import yaml


class LineDict(dict[Any, Any]):
    lines: dict[Any, int]
    line: int


class LineList(list[Any]):
    lines: list[int]
    line: int


# libyaml's parser (C) when PyYAML has it, several times faster than the pure one; the
# constructors below (Python either way) keep the lines.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineLoader(_Base):  # type: ignore[misc]
    """A safe YAML loader that remembers lines and refuses duplicate keys."""

    duplicates: list[tuple[int, Any]]


def _mapping(loader: LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.lines, result.line = {}, node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in result:
                loader.duplicates.append((key_node.start_mark.line + 1, key))
            result[key] = loader.construct_object(value_node, deep=True)
        except TypeError:  # a list or map used as a key
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be plain text", key_node.start_mark
            ) from None
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _sequence(loader: LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.lines, result.line = (
        [c.start_mark.line + 1 for c in node.value],
        node.start_mark.line + 1,
    )
    return result


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def locate(data: Any, loc: tuple[Any, ...]) -> tuple[int | None, tuple[Any, ...]]:
    """The line of the deepest part of ``loc`` present in the YAML, and the parts present.

    Shorthands are expanded before validation (``path`` becomes ``paths``, a
    transform name becomes ``{name: ...}``); parts the author never wrote are
    left out of the location shown.
    """
    line = getattr(data, "line", None)
    node = data
    shown: list[Any] = []
    for part in loc:
        key = "path" if part == "paths" and isinstance(node, LineDict) and "path" in node else part
        if isinstance(part, int) and isinstance(node, LineDict):
            continue  # one item written where a list goes (`transform: {...}`): no index
        found, child_line, child = _child(node, key)
        if found:
            line, node = child_line, child
            shown.append(key)
        elif isinstance(node, (LineDict, LineList)):
            shown.append(part)  # a missing key: worth naming
            break
    return line, tuple(shown)


def _child(node: Any, key: Any) -> tuple[bool, int | None, Any]:
    if isinstance(node, LineDict) and key in node:
        return True, node.lines[key], node[key]
    if isinstance(node, LineList) and isinstance(key, int) and 0 <= key < len(node):
        return True, node.lines[key], node[key]
    return False, None, None


def line_of(data: Any, loc: tuple[Any, ...]) -> int | None:
    return locate(data, loc)[0]


class YAMLProblem(ValueError):
    """The text is not YAML; ``line`` is where the reader gave up (or None)."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.line = line


ALIAS_REFUSED = (
    "YAML: an alias (*{anchor}) repeats an anchored value: mapping files take no aliases, "
    "since a few lines of them can stand for billions of values (hint: write the value out)"
)


def _shares_a_node(root: yaml.Node) -> bool:
    """Whether a node is reached twice: what an alias makes (the composer hands out the
    anchored node again). Linear in the text, however many values the aliases stand for."""
    seen: set[int] = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            return True
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                pending += (key, value)
        elif isinstance(node, yaml.SequenceNode):
            pending += node.value
    return False


def _first_alias(text: bytes) -> YAMLProblem:
    """The refusal, at the first alias of the text (read again: only on this error)."""
    for event in yaml.parse(text, Loader=_Base):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else None
            return YAMLProblem(ALIAS_REFUSED.format(anchor=event.anchor), line)
    return YAMLProblem(ALIAS_REFUSED.format(anchor="..."), None)  # pragma: no cover


def read_yaml(text: bytes) -> tuple[Any, list[tuple[int, Any]]]:
    """(the document with lines kept, duplicate keys as (line, key)); ``YAMLProblem`` if bad."""
    loader = LineLoader(text)
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        if node is None:
            return None, loader.duplicates
        if _shares_a_node(node):
            raise _first_alias(text)
        return loader.construct_document(node), loader.duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YAMLProblem(f"YAML: {exc.problem or exc}", mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise YAMLProblem(f"YAML: {exc}", None) from exc
    finally:
        loader.dispose()

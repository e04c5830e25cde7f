"""Text templates: ``"Trial: {{ $.properties.plan }}"``, parsed once at load.

Each ``{{ JSONPath }}`` renders the value it finds: text as is, numbers as written,
``true``/``false``, and nothing for a missing value or null (lists and objects as
compact JSON). The result is stripped of surrounding blanks; an empty result counts
as absent, so the field's ``default`` applies.
"""

from __future__ import annotations

import re
from typing import Any

from .paths import CompiledPath, cached_path, check_path
from .values import MISSING, render

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def parse(text: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(literal parts, path texts): ``len(literals) == len(paths) + 1``; ValueError if bad."""
    if not isinstance(text, str):
        raise ValueError("a template is text with {{ JSONPath }} placeholders")
    literals: list[str] = []
    paths: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        literals.append(text[pos : match.start()])
        path = match[1].strip()
        if not path:
            raise ValueError(f"empty placeholder at character {match.start() + 1}")
        paths.append(check_path(path))
        pos = match.end()
    rest = text[pos:]
    if "{{" in rest:
        raise ValueError("a `{{` is never closed with `}}`")
    literals.append(rest)
    if not paths:
        raise ValueError("no {{ JSONPath }} placeholder (hint: a fixed text goes under `value:`)")
    return tuple(literals), tuple(paths)


def _value(found: list[Any]) -> Any:
    if not found:
        return MISSING
    return found[0] if len(found) == 1 else found


class Template:
    """A parsed template: ``render(event)`` is its text, or MISSING when it is empty."""

    __slots__ = ("label", "literals", "paths", "text")

    def __init__(self, text: str):
        self.text = text
        self.label = f"template {text!r}"  # how messages name where a value came from
        self.literals, path_texts = parse(text)
        self.paths: tuple[CompiledPath, ...] = tuple(cached_path(p) for p in path_texts)

    def render(self, event: Any) -> Any:
        literals = self.literals
        parts = [literals[0]]
        for index, path in enumerate(self.paths):
            parts.append(render(_value(path.find(event))))
            parts.append(literals[index + 1])
        text = "".join(parts).strip()
        return text if text else MISSING

    def steps(self, event: Any) -> list[tuple[str, Any]]:
        """(path, value found) for each placeholder: what ``bridge explain`` shows."""
        return [(path.text, _value(path.find(event))) for path in self.paths]

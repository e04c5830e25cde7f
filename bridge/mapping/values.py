"""JSON values as the mapping language sees them: equality, literals, numbers, display.

Python's ``==`` says ``True == 1`` and ``"1" != 1``; JSON has no such overlap between
booleans and numbers, so conditions and golden tests compare with ``json_equal``
(booleans only equal booleans, numbers compare by value, text is case-sensitive).
Literals written in YAML are checked to be JSON here too: YAML reads ``2026-01-01``
as a date and ``null`` as nothing, neither of which an event can hold.
"""

from __future__ import annotations

import math
import re as _re  # fixed patterns of our own; a mapping file's go through RE2
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any

import re2
from pydantic import AfterValidator

from ..core.jsoncodec import JSONEncodeFailure, dumps_str
from ..core.masking import mask_value
from .amounts import AmountError, to_decimal


class _Missing:
    """No value: the path found nothing, or only an empty value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: a boolean is never a number; 1 and 1.0 are the same number."""
    if type(a) is bool or type(b) is bool:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is str and type(b) is str and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return a is None and b is None


def json_key(value: Any) -> tuple[str, Any] | None:
    """A hashable key equal for ``json_equal`` scalars; None for lists and objects."""
    kind = type(value)
    if kind is str:
        return ("s", value)
    if kind is bool:
        return ("b", value)
    if kind is int or kind is float:
        return ("n", value)  # hash(1) == hash(1.0), and 1 == 1.0: one key, as in JSON
    if value is None:
        return ("z", None)
    return None


def as_number(value: Any) -> Decimal | None:
    """The exact decimal of a number or numeric text ("12.50"); None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return to_decimal(value)
    except AmountError:
        return None


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is a load error, not a line on stderr
# Python's `re` has these and RE2 has not: named in the load error, since `re` users expect them.
_RE2_HINT = (
    "hint: mapping files use RE2 syntax, which runs in linear time: no backreferences "
    "(\\1, (?P=name)), no lookahead or lookbehind ((?=, (?!, (?<=, (?<!), no possessive "
    "or atomic groups"
)


class Regex:
    """A mapping file's regular expression, compiled by RE2.

    Patterns run on the sender's text (event names, properties any visitor can set):
    RE2 answers in time linear in that text whatever the pattern, where Python's
    backtracking ``re`` can take years on ``^(a+)+$``.
    """

    __slots__ = ("_compiled", "_search", "pattern")

    def __init__(self, pattern: str):
        try:
            compiled = re2.compile(pattern, _RE2_OPTIONS)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise ValueError(
                f"bad regular expression {pattern!r}: RE2 refuses it: {reason} ({_RE2_HINT})"
            ) from None
        except UnicodeEncodeError:
            raise ValueError(
                f"bad regular expression {pattern!r}: a lone surrogate is not text"
            ) from None
        self._compiled = compiled
        self._search = compiled.search
        self.pattern = pattern

    def search(self, text: str) -> bool:
        """Whether the pattern is found anywhere in ``text``."""
        try:
            return self._search(text) is not None
        except UnicodeEncodeError:
            # A lone surrogate, which RE2's UTF-8 cannot hold: searched as the codec
            # repairs it, a replacement character.
            repaired = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self._search(repaired) is not None

    @property
    def groups(self) -> int:
        """How many capture groups the pattern has."""
        return int(self._compiled.groups)

    def first(self, text: str) -> str | None:
        """The first match's first capture group (the whole match when the pattern has no
        group); None when nothing matches, or the group took part in no match."""
        match = self._compiled.search(_repaired(text))
        if match is None:
            return None
        found = match[1] if self._compiled.groups else match[0]
        return None if found is None else str(found)

    def sub(self, replacement: str, text: str) -> str:
        """Every match replaced by ``replacement`` (``\\1`` names a group)."""
        return str(self._compiled.sub(replacement, _repaired(text)))

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def _repaired(text: str) -> str:
    """Text RE2's UTF-8 can hold: a lone surrogate becomes a replacement character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Regex:
    """The one compiled form of a mapping file's pattern; ``ValueError`` naming why not."""
    return Regex(pattern)


def check_pattern(pattern: str) -> str:
    """A regular expression of a mapping file, or the load error that names it."""
    compile_pattern(pattern)
    return pattern


# A group named in a replacement text: \1 .. \99.
_GROUP_REFERENCE = _re.compile(r"\\(\d{1,2})")


def check_replacement(pattern: str, replacement: str) -> str:
    """A ``replace`` transform's text, or the load error (a ``\\2`` the pattern lacks)."""
    groups = compile_pattern(pattern).groups
    for reference in _GROUP_REFERENCE.findall(replacement):
        if int(reference) > groups:
            raise ValueError(
                f"bad replacement {replacement!r} for {pattern!r}: \\{reference} names a group"
                f" the pattern does not have (it has {groups})"
            )
    return replacement


# A mapping file's regular expression (a trigger's or a condition's), checked at load.
Pattern = Annotated[str, AfterValidator(check_pattern)]


def check_json(value: Any, *, allow_null: bool = False, where: str = "") -> Any:
    """``value`` as plain JSON data (YAML's line-keeping dicts and lists become plain ones).

    Raises ``ValueError`` naming what is not JSON and where: a YAML date, a non-text
    key, NaN; and null itself unless ``allow_null`` (inside lists and objects it is data).
    """
    at = f"at {where}: " if where else ""
    if value is None:
        if allow_null:
            return None
        raise ValueError(
            "null never matches: an empty value counts as absent "
            "(hint: `exists: false` or `not_empty: false` test for absence)"
        )
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{at}{value} is not a JSON number")
        return value
    if isinstance(value, list):
        return [
            check_json(item, allow_null=True, where=f"{where}[{index}]")
            for index, item in enumerate(value)
        ]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{at}key {key!r} is not text (hint: quote it)")
            out[key] = check_json(item, allow_null=True, where=f"{where}.{key}" if where else key)
        return out
    raise ValueError(
        f"{at}a YAML {type(value).__name__} is not a JSON value (hint: quote it: '{value}')"
    )


def shown(where: str, value: Any) -> str:
    """A value for a message: short, emails masked; ``absent`` for no value."""
    if value is MISSING:
        return "absent"
    return mask_value(where, value)


def render(value: Any) -> str:
    """A value as template text: text as is, numbers as written, true/false, null as nothing."""
    if type(value) is str:
        return value
    if value is None or value is MISSING:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same number: the sender's text.
        return repr(value) if math.isfinite(value) else ""
    # Lists and objects: compact JSON, keys in the event's order.
    try:
        return dumps_str(value)
    except JSONEncodeFailure:
        return ""

"""JSON in and out: orjson on the hot path, the standard library for what orjson refuses.

orjson is several times faster than ``json`` on Segment-sized events, but it
refuses a few texts a lenient sender may produce (``NaN``, ``1e400``, integers
past 64 bits on output), and reads an integer past 64 bits as a float. Those fall
back to ``json`` so that one odd value makes one event invalid rather than the
whole request unreadable, and every integer is read exactly. What the bridge
writes is always valid JSON: a number that is not finite is refused on output.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Any

import orjson


class JSONDecodeFailure(ValueError):
    """The bytes are not JSON (or not UTF-8); the message says where."""


# A lone UTF-16 surrogate, as JavaScript's JSON.stringify writes text cut inside a
# character ("\\ud800"); also what an invalid UTF-8 byte decodes to (surrogateescape).
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# orjson reads an integer past 64 bits as a float, so two order ids differing past the 16th
# digit would read the same. Such an integer has 19 digits or more: a text holding that many
# in a row (found by translating every digit to "0", far faster than a regular expression)
# and whose reading holds such a float is read again by the standard library, exactly.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"0" * 19
_INEXACT_FROM = 2.0**63  # orjson's integers run from -2**63 to 2**64 - 1
# Python refuses to convert integer text longer than this (sys.int_info.default_max_str_digits):
# such a number is kept as a RawNumber (infinite, its text as written) like 1e400.
_MAX_INT_DIGITS = 4300
Repair = tuple[Any, ...]  # the path (keys and indexes) of a text that was repaired


def loads(data: bytes | str) -> Any:
    return loads_repaired(data)[0]


def loads_repaired(data: bytes | str) -> tuple[Any, list[Repair]]:
    """Parse JSON; text orjson refuses for one odd character is repaired, not refused.

    A lone surrogate escape or an invalid UTF-8 byte becomes U+FFFD, and its path is
    returned, so that it costs at most a warning on its own event, never the whole body.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as first:
        try:
            return loads_lenient(data)
        except (ValueError, RecursionError) as exc:
            raise JSONDecodeFailure(str(first)) from exc
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if _LONG_DIGITS not in raw.translate(_DIGITS_AS_ZERO) or not _holds_large_float(value):
        return value, []
    try:
        return loads_lenient(data)
    except (ValueError, RecursionError):
        return value, []  # deeper than the standard library reads: orjson's reading stands


def _holds_large_float(value: Any) -> bool:
    """Does the value hold a float that may be an integer orjson could not keep exact?"""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack += node.values()
        elif isinstance(node, list):
            stack += node
        elif type(node) is float and abs(node) >= _INEXACT_FROM:
            return True
    return False


def loads_lenient(data: bytes | str) -> tuple[Any, list[Repair]]:
    """The standard library's reading that ``loads_repaired`` falls back to, alone.

    A file streamed in parts must read every part this way when the whole document
    needs it (orjson reads integers past 64 bits as floats, this reading keeps them
    exact). Raises ``ValueError`` or ``RecursionError`` when the text is not JSON.
    """
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    value = json.loads(text, parse_constant=RawNumber, parse_float=_float, parse_int=_int)
    repairs: list[Repair] = []
    return _repair(value, (), repairs), repairs


class RawNumber(float):
    """A number a lenient sender wrote that a float cannot hold as written (``NaN``,
    ``Infinity``, ``1e400``): its value for the engine (which refuses it, by name), its
    text for a dead letter, kept as received."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> RawNumber:
        number = super().__new__(cls, float(text))
        number.text = text
        return number


def _float(text: str) -> float:
    number = float(text)
    return number if math.isfinite(number) else RawNumber(text)


def _int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else RawNumber(text)


def dumps_exact(value: Any) -> str:
    """JSON text that keeps every ``RawNumber`` as it was written (for dead letters)."""
    try:  # the usual value: orjson refuses a RawNumber (a float subclass), never rounds it
        return orjson.dumps(value).decode()
    except TypeError:
        pass  # a RawNumber, an integer past 64 bits or deep nesting: the careful way
    raws: list[str] = []
    nonce = secrets.token_hex(6)  # no text of the sender's can look like the marks

    def mark(node: Any) -> Any:
        if isinstance(node, RawNumber):
            raws.append(node.text)
            return f"\0{nonce}{len(raws) - 1}\0"
        if isinstance(node, list):
            return [mark(item) for item in node]
        if isinstance(node, dict):
            return {key: mark(item) for key, item in node.items()}
        return node

    marked = mark(value)
    if not raws:
        return dumps_str(value)
    text = json.dumps(marked, separators=(",", ":"), ensure_ascii=False)
    for index, raw in enumerate(raws):
        text = text.replace(f'"\\u0000{nonce}{index}\\u0000"', raw, 1)
    return text


def _repair(value: Any, path: Repair, repairs: list[Repair]) -> Any:
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value
        repairs.append(path)
        return _SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, list):
        return [_repair(item, (*path, index), repairs) for index, item in enumerate(value)]
    if isinstance(value, dict):
        fixed = {}
        for key, item in value.items():
            if _SURROGATE.search(key) is not None:
                key = _SURROGATE.sub(REPLACEMENT, key)
                repairs.append((*path, key))
            fixed[key] = _repair(item, (*path, key), repairs)
        return fixed
    return value


class JSONEncodeFailure(ValueError):
    """The value cannot be written as JSON (nested too deeply, or not JSON data)."""


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as Dub measures it; ``JSONEncodeFailure`` for what JSON cannot hold.

    A number that is not finite (a ``RawNumber`` NaN, Infinity or 1e400) is refused rather
    than written as ``NaN``, which no JSON reader (Dub's included) accepts.
    """
    try:
        return orjson.dumps(obj)
    except TypeError:  # a RawNumber, past 64-bit integers or 255 levels of nesting
        try:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError as exc:
            reason = "a number that is not finite" if "not JSON compliant" in str(exc) else exc
            raise JSONEncodeFailure(f"cannot write as JSON: {reason}") from exc
        except (TypeError, RecursionError) as exc:
            raise JSONEncodeFailure(f"cannot write as JSON: {type(exc).__name__}") from exc
        return text.encode()


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()

"""JSON in and out: orjson on the hot path, the standard library for what orjson refuses.

orjson is several times faster than ``json`` on Segment-sized events, but it
refuses a few texts a lenient sender may produce (``NaN``, ``1e400``, integers
past 64 bits on output). Those fall back to ``json`` so that one odd value makes
one event invalid rather than the whole request unreadable.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class JSONDecodeFailure(ValueError):
    """The bytes are not JSON (or not UTF-8); the message says where."""


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as first:
        try:
            value = json.loads(data)
            # json reads lone surrogates ("\ud800"), which orjson refuses and nothing here
            # can write back (UTF-8, SQLite): refuse them as orjson does.
            json.dumps(value, ensure_ascii=False).encode()
            return value
        except (ValueError, RecursionError) as exc:  # Unicode{De,En}codeError are ValueErrors
            raise JSONDecodeFailure(str(first)) from exc


class JSONEncodeFailure(ValueError):
    """The value cannot be written as JSON (nested too deeply, or not JSON data)."""


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as Dub measures it."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # past 64-bit integers or 255 levels of nesting, which orjson refuses
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        except (ValueError, TypeError, RecursionError) as exc:
            raise JSONEncodeFailure(f"cannot write as JSON: {type(exc).__name__}") from exc


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()

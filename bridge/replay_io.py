"""Reading saved Segment events for ``bridge replay``.

A file holds one JSON event, a JSON array, ``{"batch": [...]}``, or newline-delimited
JSON; any of them may be gzip-compressed (``.gz``). A line that is not JSON becomes
an invalid result naming the file and line; the other lines still run.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .jsoncodec import JSONDecodeFailure, loads
from .results import Unreadable


def read_events(path: Path) -> Iterator[Any]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        yield Unreadable(str(path), f"cannot read: {exc}")
        return
    if not raw.strip():
        yield Unreadable(str(path), "the file is empty")
        return
    try:
        data = loads(raw)
    except JSONDecodeFailure:
        yield from _lines(path, raw)
        return
    if isinstance(data, dict) and isinstance(data.get("batch"), list):
        yield from data["batch"]
    elif isinstance(data, list):
        yield from data
    else:
        yield data


def _lines(path: Path, raw: bytes) -> Iterator[Any]:
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield loads(line)
        except JSONDecodeFailure as exc:
            yield Unreadable(f"{path}:{number}", f"not JSON: {exc}")

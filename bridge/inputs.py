"""The one reader of Segment events, for the webhook, replay and redrive alike.

A body or file holds one JSON event, a JSON array of events, or ``{"batch": [...]}``;
a file may also be newline-delimited JSON, and any file may be gzip-compressed
(``.gz``). Text that orjson refuses for one odd character (a lone UTF-16 surrogate
escape, which JavaScript writes for text cut inside an emoji, or a byte that is not
UTF-8) is repaired to U+FFFD and noted on that event alone. A line that is not JSON
becomes an ``Unreadable`` naming the file and line; the other lines still run.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidJSON, NoEvents
from .items import Item, Unreadable
from .jsoncodec import JSONDecodeFailure, Repair, loads_repaired

__all__ = ["Item", "Unreadable", "events_in", "parse_body", "read_file"]

NO_EVENTS = 'no events: send a Segment event, an array of events or {"batch": [...]}'


def parse_body(raw: bytes) -> list[Item]:
    """A webhook body's events; ``InvalidJSON`` or ``NoEvents`` when it holds none."""
    if not raw.strip():
        raise NoEvents("the body is empty; " + NO_EVENTS.removeprefix("no events: "))
    try:
        data, repairs = loads_repaired(raw)
    except JSONDecodeFailure as exc:
        raise InvalidJSON(f"the body is not JSON: {exc}") from exc
    return events_in(data, repairs)


def events_in(data: Any, repairs: Sequence[Repair] = ()) -> list[Item]:
    """The events of a parsed document: an object, an array, or ``{"batch": [...]}``."""
    batched = isinstance(data, dict) and "batch" in data
    if batched:
        data = data["batch"]
        if not isinstance(data, list):
            raise NoEvents("`batch` must be an array of events")
    if isinstance(data, list):
        events = data
    elif isinstance(data, dict):
        events = [data]
    else:
        raise NoEvents(NO_EVENTS)
    if not events:
        raise NoEvents(NO_EVENTS)
    notes = _notes(repairs, batched, isinstance(data, list))
    return [Item(event, notes.get(index, ())) for index, event in enumerate(events)]


def _notes(repairs: Sequence[Repair], batched: bool, array: bool) -> dict[int, tuple[str, ...]]:
    notes: dict[int, tuple[str, ...]] = {}
    for path in repairs:
        inner = path[1:] if batched else path
        index, inner = (inner[0], inner[1:]) if array and inner else (0, inner)
        if isinstance(index, int):
            notes[index] = (*notes.get(index, ()), repair_note(inner))
    return notes


def repair_note(path: Repair) -> str:
    where = ".".join(str(part) for part in path) or "event"
    return f"{where}: invalid text (a lone UTF-16 surrogate or a bad byte) replaced with U+FFFD"


def read_file(path: Path) -> Iterator[Item]:
    """Every event of a saved file, in order; problems become ``Unreadable`` items."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        yield Item(Unreadable(str(path), f"cannot read: {exc}"))
        return
    if not raw.strip():
        yield Item(Unreadable(str(path), "the file is empty"))
        return
    try:
        data, repairs = loads_repaired(raw)
    except JSONDecodeFailure:
        yield from _lines(path, raw)
        return
    try:
        yield from events_in(data, repairs)
    except NoEvents as exc:
        yield Item(Unreadable(str(path), exc.message))


def _lines(path: Path, raw: bytes) -> Iterator[Item]:
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data, repairs = loads_repaired(line)
        except JSONDecodeFailure as exc:
            yield Item(Unreadable(f"{path}:{number}", f"not JSON: {exc}"))
            continue
        notes = tuple(repair_note(r) for r in repairs)
        yield Item(data, notes)

"""What a body of Segment events holds, for the webhook (files: ``bridge.reader``).

A body holds one JSON event, a JSON array of events, or ``{"batch": [...]}``. Text
that orjson refuses for one odd character (a lone UTF-16 surrogate escape, which
JavaScript writes for text cut inside an emoji, or a byte that is not UTF-8) is
repaired to U+FFFD and noted on that event alone. Saved files (also newline-delimited
JSON, and gzip) are streamed by ``bridge.reader``, which gives the same events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidJSON, NoEvents
from .items import Item, Unreadable
from .jsoncodec import JSONDecodeFailure, Repair, loads_repaired

__all__ = ["Item", "Unreadable", "events_in", "parse_body"]

NO_EVENTS = 'no events: send a Segment event, an array of events or {"batch": [...]}'
BATCH_NOT_ARRAY = "`batch` must be an array of events"


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
            raise NoEvents(BATCH_NOT_ARRAY)
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
        if batched and path[:1] != ("batch",):
            continue  # text around the batch (sentAt, context) is no event's
        inner = path[1:] if batched else path
        index, inner = (inner[0], inner[1:]) if array and inner else (0, inner)
        if isinstance(index, int):
            notes[index] = (*notes.get(index, ()), repair_note(inner))
    return notes


def repair_note(path: Repair) -> str:
    where = ".".join(str(part) for part in path) or "event"
    return f"{where}: invalid text (a lone UTF-16 surrogate or a bad byte) replaced with U+FFFD"

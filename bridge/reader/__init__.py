"""Saved files of Segment events, streamed: memory stays flat whatever the file's size.

A file holds one JSON event, a JSON array of events, ``{"batch": [...]}``, or
newline-delimited JSON; any of them may be gzip-compressed (``.gz``). It gives the
events it gave when it was read whole, in order, with the same repairs and notes: a
line that is not JSON becomes an ``Unreadable`` naming ``file:line`` and the other
lines still run; a file that cannot be read, is empty or holds no events becomes one
``Unreadable`` naming the file. Three things differ, past what fits in memory:

* a ``.gz`` file damaged part-way gives the events before the damage, then the
  ``cannot read`` result (reading it whole gave that result alone);
* a line, or an event of a document, longer than ``MAX_EVENT_BYTES`` is reported, not
  read (a document whose one event is that long is read as lines);
* a document (not NDJSON) is checked whole before its first event is given (see
  ``layout``), so its first result waits for that pass; NDJSON starts at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..core.items import Item
from .layout import LINES, classify, document_parts
from .lines import line_blocks
from .records import MAX_EVENT_BYTES, WAIT, Problem, Record, Wait, decode, weight
from .savedfile import READ_ERRORS, SavedFile
from .scan import Window

__all__ = [
    "MAX_EVENT_BYTES",
    "WAIT",
    "Record",
    "Wait",
    "decode",
    "read_file",
    "read_records",
    "weight",
]


def read_records(path: Path) -> Iterator[Record | Wait]:
    """The file's events as raw records, in order (``decode`` parses them)."""
    name = str(path)
    try:
        saved = SavedFile(path)
    except READ_ERRORS as exc:
        yield Problem(name, f"cannot read: {exc}")
        return
    with saved:
        try:
            layout = classify(Window(saved))
            saved.rewind()
            if layout is LINES:
                yield from line_blocks(saved, name)
            elif layout.form == "problem":
                yield Problem(name, layout.problem)
            else:
                yield from document_parts(Window(saved), name, layout)
        except READ_ERRORS as exc:
            yield Problem(name, f"cannot read: {exc}")


def read_file(path: Path) -> Iterator[Item]:
    """Every event of a saved file, in order, parsed here; problems are ``Unreadable``."""
    for record in read_records(path):
        if not isinstance(record, Wait):
            yield from decode(record)

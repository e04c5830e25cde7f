"""What the reader hands on before any JSON is parsed: blocks of raw text, and problems.

Reading (finding where lines and events begin and end) is cheap and must be done in
order, by one process; parsing is the costly part, so it happens in ``decode``, which
``bridge replay --jobs N`` runs in worker processes. Records are plain data, so they
cross a process boundary as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

from ..core.inputs import repair_note
from ..core.items import Item, Unreadable
from ..core.jsoncodec import JSONDecodeFailure, Repair, loads_lenient, loads_repaired

MAX_EVENT_BYTES = 8 << 20  # one line or one event of a document; Segment's limit is 32 KB
TOO_LONG = f"longer than {MAX_EVENT_BYTES >> 20} MiB: not read (Segment's events are at most 32 KB)"


@dataclass(frozen=True, slots=True)
class Lines:
    """Whole lines of newline-delimited JSON; ``first`` is the number of the first."""

    path: str
    first: int
    block: bytes


@dataclass(frozen=True, slots=True)
class Parts:
    """Events of one JSON document (array elements, or the one object), each its own text.

    ``lenient``: the whole document is one orjson refuses, so today's reading of it (the
    standard library's, which keeps integers past 64 bits exact) is used for every part.
    """

    path: str
    lenient: bool
    parts: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """A file, or a place in it, that gives no event: reported as one invalid result."""

    where: str
    message: str


Record = Lines | Parts | Problem


class Wait:
    """Between records: the input has nothing more for now (a pipe), so write what is done."""


WAIT = Wait()


def weight(record: Record) -> int:
    """About how much work a record is, in bytes of input (to size chunks)."""
    if isinstance(record, Lines):
        return len(record.block)
    if isinstance(record, Parts):
        return sum(len(part) for part in record.parts)
    return 1


def decode(record: Record) -> list[Item]:
    """The events of a record, parsed; text that is not JSON becomes an ``Unreadable``."""
    if isinstance(record, Lines):
        return list(_lines(record))
    if isinstance(record, Parts):
        return [_part(record, part) for part in record.parts]
    return [Item(Unreadable(record.where, record.message))]


def _lines(record: Lines) -> Iterator[Item]:
    for number, line in numbered(record.block, record.first):
        if not line or line.isspace():
            continue
        if len(line) > MAX_EVENT_BYTES:
            yield Item(Unreadable(f"{record.path}:{number}", f"the line is {TOO_LONG}"))
            continue
        try:
            data, repairs = loads_repaired(line)
        except JSONDecodeFailure as exc:
            yield Item(Unreadable(f"{record.path}:{number}", f"not JSON: {exc}"))
            continue
        yield Item(data, _notes(repairs)) if repairs else Item(data)


def _part(record: Parts, text: bytes) -> Item:
    try:
        if record.lenient:
            data, repairs = loads_lenient(text)
        else:
            data, repairs = loads_repaired(text)
    except (ValueError, RecursionError) as exc:  # checked before: the file changed meanwhile
        return Item(Unreadable(record.path, f"not JSON (did the file change while read?): {exc}"))
    return Item(data, _notes(repairs)) if repairs else Item(data)


def _notes(repairs: list[Repair]) -> tuple[str, ...]:
    return tuple(repair_note(r) for r in repairs)


def numbered(block: bytes, first: int) -> Iterator[tuple[int, bytes]]:
    """The lines of a block with their numbers, as ``bytes.splitlines`` of the whole file
    counts them (a lone carriage return ends a line too)."""
    pieces = block.split(b"\n")
    if block.endswith(b"\n"):
        pieces.pop()
    if b"\r" not in block:
        return zip(count(first), pieces, strict=False)
    return zip(count(first), (line for p in pieces for line in _split_cr(p)), strict=False)


def line_count(block: bytes) -> int:
    """How many lines ``numbered`` gives for a block."""
    if b"\r" not in block:
        return block.count(b"\n") + (0 if not block or block.endswith(b"\n") else 1)
    return sum(1 for _ in numbered(block, 0))


def _split_cr(piece: bytes) -> list[bytes]:
    # An empty piece is one empty line; "a\r" is one line, "a\rb" two.
    return piece.splitlines() or [piece]

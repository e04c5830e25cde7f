"""Which form a saved file takes, decided as reading it whole decided it, in constant memory.

Before streaming, a file was parsed whole: if it was one JSON document (an event, an
array, ``{"batch": [...]}``) its events were read from it, and otherwise it was read as
newline-delimited JSON, line by line. ``classify`` gives the same answer without
holding the file:

* a first line that is an object without a ``batch`` key reads the same either way, so
  the file is read as lines at once (the common case: NDJSON starts at once, even from
  a pipe);
* otherwise the first value is checked from end to end with the scanner, each part
  (array element, key, member) parsed by the codec and dropped, and the file is one
  document only if nothing but whitespace follows. A cut-short array, for example, is
  read as lines, exactly as before.

The check also says whether the whole document is one orjson reads (``lenient`` when
not: a lone surrogate or a NaN anywhere), since that decides how every event in it is
parsed (see ``records.Parts``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from ..core.inputs import BATCH_NOT_ARRAY, NO_EVENTS
from ..core.jsoncodec import loads_lenient, loads_repaired
from .records import MAX_EVENT_BYTES, Parts, Problem, Record
from .scan import BLOCK, Malformed, TooLong, Window

_BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*+")  # what bytes.strip() takes: a blank file is empty
_LINE_END = re.compile(rb"[\r\n]")
GROUP = BLOCK  # bytes of events checked or handed on together


@dataclass(frozen=True, slots=True)
class Layout:
    """``lines``; or a document whose events are ``top`` (array, batch, event); or none."""

    form: str  # "lines", "document" or "problem"
    top: str = ""
    lenient: bool = False
    batch_at: int = -1  # where the value of the (last) "batch" key begins
    problem: str = ""


LINES = Layout("lines")
EMPTY = Layout("problem", problem="the file is empty")


def classify(window: Window) -> Layout:
    """The file's form; reads it (all of it only when it is one document)."""
    pos, odd = _first_byte(window)
    first = window.byte(pos)
    if first is None:
        return EMPTY
    if odd:  # \v or \f before the first value: not JSON whitespace, so not one document
        return LINES
    try:
        if first == ord("{") and _plain_first_line(window, pos):
            return LINES
        return _document(window, pos)
    except (Malformed, TooLong):
        return LINES


def _first_byte(window: Window) -> tuple[int, bool]:
    pos, odd = 0, False
    while True:
        window.keep = pos
        found = _BLANK.match(window.data, pos - window.start)
        assert found is not None
        skipped = found.group()
        odd = odd or b"\x0b" in skipped or b"\x0c" in skipped
        pos = window.start + found.end()
        if pos < window.end or not window.more(pos):
            return pos, odd


def _plain_first_line(window: Window, pos: int) -> bool:
    """Is the first line an event without ``batch``? Then it reads the same as a line."""
    end = pos
    while True:
        found = _LINE_END.search(window.data, end - window.start)
        if found is not None:
            end = window.start + found.start()
            break
        end = window.end
        if end - pos > MAX_EVENT_BYTES:
            return False  # a long first line: a document on one line, most likely
        if not window.more(pos):
            break
    try:
        value, _ = loads_repaired(window.text(pos, end))
    except ValueError:
        return False
    return isinstance(value, dict) and "batch" not in value


class _Check:
    """Parses each part of a document once, keeping nothing but the verdict."""

    def __init__(self, window: Window):
        self.window = window
        self.lenient = False

    def valid(self, text: bytes, depth: int) -> None:
        # Wrapped in as many brackets as the part is deep, so nesting limits apply as whole.
        text = b"[" * depth + text + b"]" * depth
        try:
            orjson.loads(text)
            return
        except orjson.JSONDecodeError:
            pass
        try:
            loads_lenient(text)
        except (ValueError, RecursionError) as exc:
            raise Malformed(str(exc)) from exc
        self.lenient = True

    def key(self, text: bytes) -> object:
        self.valid(text, 0)
        return loads_repaired(text)[0]

    def array(self, cursor: Cursor, pos: int, depth: int) -> int:
        """Check every element of the array at ``pos``, a group at a time; their count."""
        begin = end = count = 0
        for start, stop in cursor.array(pos):
            if begin == end:
                begin = self.window.keep = start
            end, count = stop, count + 1
            if end - begin >= GROUP:
                self.valid(self.window.text(begin, end), depth + 1)
                begin = end
        if begin != end:
            self.valid(self.window.text(begin, end), depth + 1)
        return count

    def member(self, cursor: Cursor, pos: int) -> None:
        self.window.keep = pos
        cursor.at = self.window.value_end(pos)
        self.valid(self.window.text(pos, cursor.at), 1)


def _document(window: Window, pos: int) -> Layout:
    check, cursor = _Check(window), Cursor(window)
    first = window.byte(pos)
    top, batch_at, count, batch_array = "", -1, 0, False
    if first == ord("["):
        top, count = "array", check.array(cursor, pos, 0)
    elif first == ord("{"):
        for key_start, key_end, value in cursor.members(pos):
            window.keep = key_start
            if check.key(window.text(key_start, key_end)) != "batch":
                check.member(cursor, value)
                continue
            batch_at, batch_array = value, window.byte(value) == ord("[")
            if batch_array:
                count = check.array(cursor, value, 1)
            else:
                check.member(cursor, value)
        top = "batch" if batch_at >= 0 else "event"
        if top == "event" and cursor.at - pos > MAX_EVENT_BYTES:
            raise TooLong(pos)
    else:
        cursor.at = window.value_end(pos)
        check.valid(window.text(pos, cursor.at), 0)
    if window.byte(window.skip_ws(cursor.at)) is not None:
        return LINES  # something follows the first value: not one document
    if top == "batch" and not batch_array:
        return Layout("problem", problem=BATCH_NOT_ARRAY)
    if top == "" or (top != "event" and count == 0):
        return Layout("problem", problem=NO_EVENTS)
    return Layout("document", top, check.lenient, batch_at)


def document_parts(window: Window, path: str, layout: Layout) -> Iterator[Record]:
    """The events of a checked document, a group of element texts at a time."""
    cursor = Cursor(window)
    pos = window.skip_ws(0)
    try:
        if layout.top == "event":
            window.keep = pos
            end = window.value_end(pos)
            yield Parts(path, layout.lenient, (window.text(pos, end),))
        elif layout.top == "array":
            yield from _groups(cursor, pos, path, layout.lenient)
        else:
            for _, _, value in cursor.members(pos):
                window.keep = value
                if value == layout.batch_at:
                    yield from _groups(cursor, value, path, layout.lenient)
    except (Malformed, TooLong) as exc:
        yield Problem(path, f"the file changed while it was read: {exc}")


def _groups(cursor: Cursor, pos: int, path: str, lenient: bool) -> Iterator[Parts]:
    parts: list[bytes] = []
    size = 0
    for start, end in cursor.array(pos):
        cursor.window.keep = start
        parts.append(cursor.window.text(start, end))
        size += end - start
        if size >= GROUP:
            yield Parts(path, lenient, tuple(parts))
            parts, size = [], 0
    if parts:
        yield Parts(path, lenient, tuple(parts))


class Cursor:
    """Walks the elements of an array or the members of an object; ``at``: where it is."""

    def __init__(self, window: Window):
        self.window = window
        self.at = 0

    def array(self, pos: int) -> Iterator[tuple[int, int]]:
        """(start, end) of each element of the array whose ``[`` is at ``pos``."""
        window = self.window
        at = window.skip_ws(pos + 1)
        if window.byte(at) == ord("]"):
            self.at = at + 1
            return
        while True:
            end = window.value_end(at)
            yield at, end
            at = window.skip_ws(end)
            mark = window.byte(at)
            if mark == ord("]"):
                self.at = at + 1
                return
            if mark != ord(","):
                raise Malformed(f"expected , or ] at byte {at}")
            at = window.skip_ws(at + 1)

    def members(self, pos: int) -> Iterator[tuple[int, int, int]]:
        """(key start, key end, value start) of each member of the object at ``pos``.

        The caller may walk the value itself and set ``at`` to its end; if it leaves
        ``at`` negative, the value is skipped here."""
        window = self.window
        at = window.skip_ws(pos + 1)
        if window.byte(at) == ord("}"):
            self.at = at + 1
            return
        while True:
            if window.byte(at) != ord('"'):
                raise Malformed(f"expected a key at byte {at}")
            key_end = window.value_end(at)
            colon = window.skip_ws(key_end)
            if window.byte(colon) != ord(":"):
                raise Malformed(f"expected : at byte {colon}")
            value = window.skip_ws(colon + 1)
            self.at = -1
            yield at, key_end, value
            if self.at < 0:
                self.at = window.value_end(value)
            at = window.skip_ws(self.at)
            mark = window.byte(at)
            if mark == ord("}"):
                self.at = at + 1
                return
            if mark != ord(","):
                raise Malformed(f"expected , or }} at byte {at}")
            at = window.skip_ws(at + 1)

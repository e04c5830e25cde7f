"""Where JSON values begin and end in a stream of bytes, without parsing them.

A JSON document of a million events cannot be parsed whole without holding it whole,
and an incremental parser turns values into Python differently from the bridge's
codec (ijson's yajl2_c backend refuses integers past 64 bits, NaN and bytes that are
not UTF-8, and writes a lone surrogate as "?": each a value the bridge reads, or
repairs with a note, today). So the reader only finds the boundaries of each event
here, and each event's text is then parsed by the codec, exactly as before.

Finding boundaries needs only the structural bytes outside strings: ``_SKIP`` jumps,
in C, over everything up to the next bracket, whole strings included, so Python runs
once per bracket, not per byte. Whether the text between is valid JSON is the
parser's business; this module only promises to find where a well-formed value ends.
"""

from __future__ import annotations

import re

from .records import MAX_EVENT_BYTES
from .savedfile import SavedFile

BLOCK = 1 << 20
_STRING_TEXT = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_STRING = re.compile(_STRING_TEXT, re.DOTALL)


def _skipping(levels: int) -> bytes:
    """Text, strings and containers nested up to ``levels`` deep, matched whole (in C):
    their brackets are balanced, so only deeper containers' brackets cost a Python step."""
    content = rb"(?:[^\"\[\]{}]++|" + _STRING_TEXT + rb")*+"
    for _ in range(levels):
        content = (
            rb"(?:[^\"\[\]{}]++|"
            + _STRING_TEXT
            + rb"|\{"
            + content
            + rb"\}|\["
            + content
            + rb"\])*+"
        )
    return content


# Up to the next bracket that matters: a Segment event (context, page, products, ...) takes
# a handful of steps rather than one per bracket.
_SKIP = re.compile(_skipping(2), re.DOTALL)
_SCALAR = re.compile(rb'[^\s,\]}\[{":]*+')  # a number or a literal: up to a delimiter
_WS = re.compile(rb"[ \t\n\r]*+")  # JSON's whitespace (not \v or \f, which strip() takes)
OPEN, CLOSE = frozenset(b"[{"), frozenset(b"]}")


class Malformed(ValueError):
    """The bytes are not one well-formed JSON value here."""


class TooLong(ValueError):
    """A value runs past ``MAX_EVENT_BYTES`` (or the text is malformed and never ends)."""

    def __init__(self, at: int):
        super().__init__(at)
        self.at = at


class Window:
    """The bytes of a saved file from ``start`` on; positions are offsets from the file's start.

    Bytes before ``keep`` may be dropped when more are read, so memory holds the value
    being looked at, not the file.
    """

    def __init__(self, saved: SavedFile):
        self.saved = saved
        self.data = b""
        self.start = 0
        self.keep = 0

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def more(self, since: int) -> bool:
        """Read on; False at the end of the file. ``since``: the value being scanned
        began there, and must not grow past ``MAX_EVENT_BYTES``."""
        if self.end - since > MAX_EVENT_BYTES:
            raise TooLong(since)
        chunk = self.saved.read(BLOCK)
        if not chunk:
            return False
        drop = max(0, self.keep - self.start)
        self.data = self.data[drop:] + chunk
        self.start += drop
        return True

    def byte(self, pos: int) -> int | None:
        """The byte at ``pos``, or None past the end of the file."""
        while pos >= self.end:
            if not self.more(pos):
                return None
        return self.data[pos - self.start]

    def text(self, begin: int, end: int) -> bytes:
        return self.data[begin - self.start : end - self.start]

    def skip_ws(self, pos: int) -> int:
        """The position of the next byte that is not JSON whitespace (``end`` at the end)."""
        while True:
            local = _WS.match(self.data, pos - self.start)
            assert local is not None  # the pattern matches the empty string
            pos = self.start + local.end()
            if pos < self.end or not self.more(pos):
                return pos

    def value_end(self, pos: int) -> int:
        """Where the JSON value starting at ``pos`` ends; ``Malformed`` if it does not."""
        first = self.byte(pos)
        if first is None:
            raise Malformed("the file ends where a value was expected")
        if first in OPEN:
            return self._container_end(pos)
        if first == ord('"'):
            return self._match_end(_STRING, pos)
        end = self._match_end(_SCALAR, pos)
        if end == pos:
            raise Malformed(f"unexpected byte {bytes([first])!r}")
        return end

    def _match_end(self, pattern: re.Pattern[bytes], pos: int) -> int:
        """The end of ``pattern`` at ``pos``, read on while the match may go on."""
        while True:
            found = pattern.match(self.data, pos - self.start)
            end = self.start + found.end() if found is not None else -1
            if 0 <= end < self.end:
                return end
            if not self.more(pos):
                if found is None:
                    raise Malformed("the file ends inside a string")
                return end

    def _container_end(self, pos: int) -> int:
        depth = 1  # the bracket at pos: from inside it, _SKIP passes over whole containers
        at = pos + 1
        while True:
            found = _SKIP.match(self.data, at - self.start)
            assert found is not None
            at = self.start + found.end()
            if at >= self.end:  # ran out of bytes: read on from here
                if not self.more(pos):
                    raise Malformed("the file ends inside an array or object")
                continue
            mark = self.data[at - self.start]
            if mark == ord('"'):  # a string not closed yet within the bytes read
                if not self.more(pos):
                    raise Malformed("the file ends inside a string")
                continue
            depth += 1 if mark in OPEN else -1
            at += 1
            if depth == 0:
                return at

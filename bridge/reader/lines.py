"""Newline-delimited JSON read as blocks of whole lines, never the whole file.

Each block is what one read gave, cut after its last newline (the rest waits for the
next read), so a line is never split between two workers. Line numbers are counted as
``bytes.splitlines`` of the whole file counts them, as the file was read before.
"""

from __future__ import annotations

from collections.abc import Iterator

from .records import MAX_EVENT_BYTES, TOO_LONG, WAIT, Lines, Problem, Record, Wait, line_count
from .savedfile import SavedFile
from .scan import BLOCK


def line_blocks(saved: SavedFile, path: str) -> Iterator[Record | Wait]:
    """The file's lines in blocks; a line past ``MAX_EVENT_BYTES`` is skipped, reported."""
    number = 1  # the number of the first line in `carry`
    carry = b""
    skipping = False  # inside a line too long to keep: drop bytes up to its newline
    while True:
        if saved.would_block():
            yield WAIT
        chunk = saved.read(BLOCK)
        if not chunk:
            if carry:
                yield Lines(path, number, carry)
            return
        data = carry + chunk if carry else chunk
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                carry = b""
                continue
            data, skipping, number = data[newline + 1 :], False, number + 1
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            if len(carry) > MAX_EVENT_BYTES:
                yield Problem(f"{path}:{number}", f"the line is {TOO_LONG}")
                carry, skipping = b"", True
            continue
        block, carry = data[:cut], data[cut:]
        yield Lines(path, number, block)
        number += line_count(block)

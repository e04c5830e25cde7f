"""A saved file's bytes, read a piece at a time: plain or gzip, a regular file or a pipe.

The reader goes over a file twice: once to learn its form (newline-delimited JSON, or
one JSON document checked whole), then again to stream its events. A regular file is
simply read again; a pipe cannot be, so what the first pass read of it is kept aside
(in memory up to ``SPOOL_IN_MEMORY``, then in a temporary file) and served first the
second time. For newline-delimited JSON the first pass reads one block, so the spool
stays small.
"""

from __future__ import annotations

import gzip
import os
import select
import stat
import tempfile
import zlib
from pathlib import Path
from typing import IO

# What reading a file may raise, all reported as "cannot read: ..." on that file:
# BadGzipFile is an OSError; a truncated gzip stream raises EOFError, a corrupt one zlib.error.
READ_ERRORS = (OSError, EOFError, zlib.error)
SPOOL_IN_MEMORY = 1 << 20


class SavedFile:
    """One file's (decompressed) bytes, in pieces, with one rewind to the start."""

    def __init__(self, path: Path):
        self.path = path
        self._raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._stream: IO[bytes] | gzip.GzipFile = self._raw
        self._gzip: gzip.GzipFile | None = None
        if path.suffix == ".gz":
            self._gzip = gzip.GzipFile(fileobj=self._raw, mode="rb")
            self._stream = self._gzip
        regular = stat.S_ISREG(os.fstat(self._raw.fileno()).st_mode)
        # Only a plain pipe can tell "nothing yet" (select); a gzip stream's buffer hides it.
        self._pipe = not regular and self._gzip is None
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self._recording = self._replaying = False
        self._spooled = 0  # bytes of the spool not served yet, after the rewind
        if not self._raw.seekable():
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
            self._recording = True

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer from a pipe: what has arrived); b"" at the end."""
        if self._replaying and self._spool is not None:
            data = self._spool.read(size)
            if data:
                self._spooled -= len(data)
                return data
            self._replaying = False
            self._spool.close()
            self._spool = None
        data = self._gzip.read1(size) if self._gzip is not None else self._raw.read(size)
        if data is None:  # a non-blocking descriptor with nothing yet: wait for it
            select.select([self._raw], [], [])
            return self.read(size)
        if self._recording and self._spool is not None:
            self._spool.write(data)
        return data

    def would_block(self) -> bool:
        """True when the next read of a pipe would wait for its writer (so flush first)."""
        if not self._pipe or self._spooled > 0:
            return False
        ready, _, _ = select.select([self._raw], [], [], 0)
        return not ready

    def rewind(self) -> None:
        """Back to the first byte; what follows is read (or replayed from the spool) again."""
        if self._spool is None:
            self._stream.seek(0)
            return
        # The spool is served once, then the pipe is read on; nothing more is recorded.
        self._spooled = self._spool.tell()
        self._spool.seek(0)
        self._replaying, self._recording = True, False

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
        if self._gzip is not None:
            self._gzip.close()
        self._raw.close()

    def __enter__(self) -> SavedFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

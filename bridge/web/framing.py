"""Where an HTTP/1.1 request ends, from its bytes alone, for the worker that reads requests
whole before a thread sees them (``worker.py``).

The rules are as strict as gunicorn's parser, which reads the request again in the
thread: anything this accepts gunicorn accepts too, so a malformed request is answered
400 here, never found broken halfway through the application's read (a 500).

Standard library only: gunicorn's master imports this through the worker class.
"""

from __future__ import annotations

import re

HEADER_MAX = 32 * 1024
# The framing is read again from the start as each part of a body arrives: a bound on the
# chunks bounds that work (a 4 MB body of 1-byte chunks would be 700,000 of them).
MAX_CHUNKS = 10_000
_DIGITS = re.compile(rb"[0-9]{1,19}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class BadRequest(ValueError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> BadRequest:
    return BadRequest(400, "bad_request", message)


def head_facts(data: bytes | bytearray) -> tuple[str | None, str | None, str]:
    """The method, the path (no query) and the X-Request-Id of a request's head, as far as
    it was read; for the answer to a request refused before it was read whole."""
    head = bytes(data[: min(len(data), HEADER_MAX)]).split(b"\r\n\r\n", 1)[0]
    first, *lines = head.split(b"\r\n")
    parts = first.decode("latin-1").split(" ")
    method = parts[0] if len(parts) == 3 else None
    path = parts[1].partition("?")[0] if len(parts) == 3 else None
    given: list[str] = []
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-request-id":
            given.append(value.strip().decode("latin-1"))
    return method, path, ",".join(given)  # repeated, joined as gunicorn joins them


def content_length(value: bytes) -> int:
    """A Content-Length value: decimal digits only (``int()`` would also take ``+5``,
    ``5_0`` and spaces inside)."""
    value = value.strip(b" \t")
    if not _DIGITS.fullmatch(value):
        raise _bad(f"Content-Length is not a number: {value[:40].decode('latin-1')!r}")
    return int(value)


def chunk_size(line: bytes) -> int:
    """A chunk-size line's size: hexadecimal digits only (``int(.., 16)`` would also take
    ``+5``, ``0x5``, ``5_0`` and spaces). Chunk extensions are refused: Segment sends none,
    and a rule for them here would be a second copy of the parser's."""
    if b";" in line:
        raise _bad("chunk extensions are not accepted")
    if not _HEX.fullmatch(line):
        raise _bad(f"a chunk size that is not hexadecimal: {line[:40].decode('latin-1')!r}")
    return int(line, 16)


def request_end(data: bytes | bytearray, max_body: int) -> int | None:
    """Where the first request in ``data`` ends, or None while it is incomplete; raises
    ``BadRequest`` for headers or a body over their limits, or broken framing."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        if len(data) > HEADER_MAX:
            raise BadRequest(431, "headers_too_large", f"the headers are over {HEADER_MAX} bytes")
        return None
    if head_end > HEADER_MAX:
        raise BadRequest(431, "headers_too_large", f"the headers are over {HEADER_MAX} bytes")
    length: int | None = None
    chunked = False
    for line in bytes(data[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = content_length(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    body = head_end + 4
    if chunked:
        return _chunked_end(data, body, max_body)
    if length is None or length <= 0:
        return body
    if length > max_body:
        raise BadRequest(413, "payload_too_large", f"the body is over {max_body} bytes")
    return body + length if len(data) >= body + length else None


def _chunked_end(data: bytes | bytearray, at: int, max_body: int) -> int | None:
    total = 0
    for _ in range(MAX_CHUNKS + 1):
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            if len(data) - at > 1024:
                raise _bad("a chunk-size line over 1024 bytes")
            return None
        size = chunk_size(bytes(data[at:line_end]))
        total += size
        if total > max_body:
            raise BadRequest(413, "payload_too_large", f"the body is over {max_body} bytes")
        if size == 0:
            if len(data) < line_end + 4:
                return None
            if data[line_end : line_end + 4] != b"\r\n\r\n":
                raise _bad("trailer fields are not accepted")
            return line_end + 4
        at = line_end + 2 + size + 2
        if len(data) < at:
            return None
        if data[at - 2 : at] != b"\r\n":
            raise _bad("a chunk longer than its size")
    raise _bad(f"more than {MAX_CHUNKS} chunks")

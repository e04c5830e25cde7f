"""A gunicorn worker that reads each request whole before a thread sees it.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as a byte
arrives, and the thread then reads the rest: a client sending a header a byte every
second holds that thread for as long as it likes, and a few such clients hold them
all. Here the worker's event loop reads every request (headers, and the body by
``Content-Length`` or chunked framing) into memory, without blocking; only a
complete request goes to a thread, which reads it from memory. A slow client costs
a socket and a buffer, never a thread, and is cut off after ``CLIENT_SECONDS`` with
408; a body over ``BRIDGE_MAX_BODY_BYTES`` is answered 413 without reading it, and
headers over ``HEADER_MAX`` bytes 431.

Module-level imports are gunicorn's and the standard library's only: gunicorn loads
this class in its master, before the bridge's own start-up checks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

CLIENT_SECONDS = 10.0  # to send one whole request, headers and body (Segment: milliseconds)
HEADER_MAX = 32 * 1024
RECV_SIZE = 64 * 1024


class BadRequest(ValueError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PrefetchedSocket:
    """A connection's socket whose reads come from what the event loop buffered."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def recv(self, size: int, *flags: int) -> bytes:
        if self.buffer:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
            return data
        return self.sock.recv(size, *flags)  # only past what was buffered (a drain)

    def setblocking(self, flag: bool) -> None:
        # A thread never waits on a client for long, even past the buffered request.
        self.sock.settimeout(CLIENT_SECONDS if flag else 0.0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@dataclass
class _Reading:
    """A request being read by the event loop."""

    deadline: float
    data: bytearray = field(default_factory=bytearray)


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
            try:
                length = int(value.strip())
            except ValueError:
                raise BadRequest(400, "bad_request", "Content-Length is not a number") from None
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
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(bytes(data[at:line_end]).split(b";")[0].strip(), 16)
        except ValueError:
            raise BadRequest(400, "bad_request", "broken chunked framing") from None
        total += size
        if total > max_body:
            raise BadRequest(413, "payload_too_large", f"the body is over {max_body} bytes")
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            if data[line_end : line_end + 4] == b"\r\n\r\n":
                return line_end + 4
            return None if trailer_end < 0 else trailer_end + 4
        at = line_end + 2 + size + 2
        if len(data) < at:
            return None


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread``, but every request arrives in a thread already read."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reading: dict[Any, _Reading] = {}
        self.max_body = 4 * 1024 * 1024

    def init_process(self) -> None:
        from ..core.settings import Settings  # the master checked them already

        self.max_body = Settings.from_env().max_body_bytes
        super().init_process()

    # --- gunicorn's entry points, rerouted through the read ------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        from gunicorn.workers.gthread import TConn

        conn = TConn(self.cfg, sock, client, listener.getsockname())
        conn.sock = PrefetchedSocket(sock)
        self._read(conn)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection has its next request coming: read it first."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        try:
            keep = fs.result() if not fs.cancelled() else False
        except Exception:
            keep = False
        if keep and self.alive and conn.parser is not None:
            # Bytes of a next (pipelined) request, already read: back to the event loop
            # with them, so a thread never waits for the rest of a request.
            leftover = conn.parser.unreader.take_buffered()
            if leftover or conn.sock.buffer:
                conn.sock.buffer[:0] = leftover
                self._read(conn)
                return
        super().finish_request(conn, fs)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn, reading in list(self.reading.items()):
            if reading.deadline <= now or not self.alive:
                message = f"the request was not sent whole within {CLIENT_SECONDS:g} s"
                self._refuse(conn, 408, "request_timeout", message)

    # --- reading ---------------------------------------------------------------------------

    def _read(self, conn: Any) -> None:
        conn.sock.sock.setblocking(False)
        self.reading[conn] = _Reading(time.monotonic() + CLIENT_SECONDS)
        buffered = conn.sock.buffer
        if buffered:  # what a previous read took past its request
            self.reading[conn].data += buffered
            buffered.clear()
            if self._complete(conn):
                return
        self.poller.register(conn.sock.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _readable(self, conn: Any, _sock: Any) -> None:
        reading = self.reading.get(conn)
        if reading is None:
            return
        while True:
            try:
                data = conn.sock.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:  # the client went away
                self._drop(conn)
                return
            reading.data += data
            if len(data) < RECV_SIZE:
                break
        self._complete(conn, registered=True)

    def _complete(self, conn: Any, *, registered: bool = False) -> bool:
        reading = self.reading[conn]
        try:
            end = request_end(reading.data, self.max_body)
        except BadRequest as exc:
            self._refuse(conn, exc.status, exc.code, exc.message, registered=registered)
            return True
        if end is None:
            return False
        if registered:
            self.poller.unregister(conn.sock.sock)
        del self.reading[conn]
        conn.sock.feed(bytes(reading.data))  # the request, and anything pipelined after it
        conn.data_ready = True
        conn.sock.sock.setblocking(True)
        self.enqueue_req(conn)
        return True

    def _refuse(
        self, conn: Any, status: int, code: str, message: str, *, registered: bool = True
    ) -> None:
        """Answer a request the app never sees as the app answers one: the JSON error, the
        request id, the request metric and one log line."""
        # Imported here, in the worker: gunicorn's master imports this module before its
        # configuration sets up the metrics directory that prometheus_client reads once.
        from .requests import count_webhook, is_webhook, log_refusal, make_request_id

        reading = self.reading.get(conn)
        method, path, given = head_facts(reading.data if reading is not None else b"")
        request_id = make_request_id(given)
        body = json.dumps(
            {"error": {"code": code, "message": message}}, separators=(",", ":")
        ).encode()
        reason = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large",
                  431: "Request Header Fields Too Large"}[status]  # fmt: skip
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\n"
            "Connection: close\r\n\r\n"
        )
        log_refusal(status, code, message, method, path, None, request_id)
        if is_webhook(method, path):
            count_webhook(str(status))
        with contextlib.suppress(OSError):
            conn.sock.sock.send(head.encode() + body)
        self._drop(conn, registered=registered)

    def _drop(self, conn: Any, *, registered: bool = True) -> None:
        self.reading.pop(conn, None)
        if registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock.sock)
        self.nr_conns -= 1
        conn.close()

"""A gunicorn worker that reads each request whole before a thread sees it, within bounds.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as a byte
arrives, and the thread then reads the rest: a client sending a header a byte every
second holds that thread for as long as it likes, and a few such clients hold them
all (measured with gunicorn 27: a normal request beside 30 such clients is not answered
within 30 s; here, in about 20 ms). Here the worker's event loop reads every request
(headers, and the body by ``Content-Length`` or chunked framing, see ``framing.py``)
into memory, without blocking; only a complete request goes to a thread, which reads it
from memory. A slow client costs a socket and a buffer, never a thread, and is cut off
after ``CLIENT_SECONDS`` with 408; a body over ``BRIDGE_MAX_BODY_BYTES`` is answered 413
without reading it, and headers over ``HEADER_MAX`` bytes 431.

Sockets and buffers are bounded too, per worker: past ``BRIDGE_MAX_CONNECTIONS`` open
connections the oldest one still sending its request (else the oldest kept-alive one)
makes room, answered 503 with ``Retry-After``; past ``BRIDGE_MAX_BUFFERED_BYTES`` read
and not yet answered, the unfinished request holding the most bytes does. A request that
arrives whole is never the one shed while an unfinished one can be.

After SIGTERM the worker keeps accepting until its last request is answered: a
connection made then (a router that has not yet seen the instance go) is answered 503
with ``Retry-After``, not left in the listen backlog to be reset when the socket closes.
(A worker restarting alone after ``--max-requests`` stops accepting, as gunicorn's does:
its siblings serve those connections. One stopped alone by a SIGTERM, as in gunicorn's
HUP reload, answers them 503 too: the platforms the Procfile is for restart processes whole.)

This subclasses gunicorn's ``ThreadWorker`` and relies on its internals (the methods in
``GUNICORN_INTERNALS``): gunicorn is pinned to the tested major, and
``tests/test_worker.py`` fails when any of those methods changes.

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

from ..core.errors import error_body
from .arrival import handling
from .framing import BadRequest, head_facts, request_end
from .limits import Bounds, connection_cap, make_gauges

CLIENT_SECONDS = 10.0  # to send one whole request, headers and body (Segment: milliseconds)
DRAIN_READ_SECONDS = 2.0  # after SIGTERM, to finish sending a request that will get 503
RECV_SIZE = 64 * 1024
ACCEPT_BATCH = 256
STOPPING = "the service is stopping: send it again"
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}  # fmt: skip

# What this worker relies on in gunicorn, checked against the pinned release's source.
GUNICORN_INTERNALS = (
    "gunicorn.workers.gthread.ThreadWorker.__init__",
    "gunicorn.workers.gthread.ThreadWorker.run",
    "gunicorn.workers.gthread.ThreadWorker.handle_exit",
    "gunicorn.workers.gthread.ThreadWorker.accept",
    "gunicorn.workers.gthread.ThreadWorker.enqueue_req",
    "gunicorn.workers.gthread.ThreadWorker.on_client_socket_readable",
    "gunicorn.workers.gthread.ThreadWorker.finish_request",
    "gunicorn.workers.gthread.ThreadWorker.murder_keepalived",
    "gunicorn.workers.gthread.ThreadWorker.murder_pending",
    "gunicorn.workers.gthread.ThreadWorker.set_accept_enabled",
    "gunicorn.workers.gthread.ThreadWorker.handle",
    "gunicorn.workers.gthread.TConn.__init__",
    "gunicorn.workers.gthread.TConn.init",
    "gunicorn.workers.gthread.TConn.close",
    "gunicorn.http.unreader.Unreader.take_buffered",
)


class PrefetchedSocket:
    """A connection's socket whose reads come from what the event loop buffered."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()

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
    started: float = field(default_factory=time.monotonic)  # its first bytes came


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread``, but every request arrives in a thread already read, within bounds."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reading: dict[Any, _Reading] = {}
        self.handed: dict[Any, int] = {}  # bytes of each request a thread has
        self.late: set[Any] = set()  # accepted after SIGTERM: answered 503 once read
        self.bounds = Bounds()
        self.max_body = 4 * 1024 * 1024
        self.retry_after = 30
        self.stopping = False  # SIGTERM: new connections are answered 503 until the exit
        self.draining = False

    def init_process(self) -> None:
        from ..core.settings import Settings  # the master checked them already

        settings = Settings.from_env()
        self.max_body = settings.max_body_bytes
        self.retry_after = settings.retry_after_seconds
        connections = connection_cap(settings.max_connections, self.log.warning)
        self.bounds = Bounds(connections, settings.max_buffered_bytes, gauges=make_gauges())
        # gunicorn stops accepting at worker_connections; this worker makes room instead.
        self.worker_connections = self.bounds.max_connections + 1
        super().init_process()

    # --- gunicorn's entry points, rerouted through the read ------------------------------------

    def accept(self, listener: socket.socket) -> None:
        # Every connection waiting, not one a poll: a normal request must not queue in the
        # backlog behind hundreds of others for a poll each.
        for _ in range(ACCEPT_BATCH):
            try:
                sock, client = listener.accept()
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue  # gone before it was accepted; others may be waiting
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
                return
            self._accepted(listener, sock, client)

    def _accepted(self, listener: socket.socket, sock: socket.socket, client: Any) -> None:
        self.nr_conns += 1
        from gunicorn.workers.gthread import TConn

        conn = TConn(self.cfg, sock, client, listener.getsockname())
        conn.sock = PrefetchedSocket(sock)
        if self.stopping:
            self.late.add(conn)
        self._read(conn)
        if self.nr_conns > self.bounds.max_connections:
            self._make_room(conn)
        self.bounds.note(self.nr_conns)

    def handle(self, conn: Any) -> Any:
        """A thread serves the request: when it began to arrive is the request's to read
        (``arrival``), so its time budget counts the wait for a thread."""
        handling.arrived = getattr(conn, "arrived", None)
        try:
            return super().handle(conn)
        finally:
            handling.arrived = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stopping = True
        super().handle_exit(sig, frame)

    def set_accept_enabled(self, enabled: bool) -> None:
        if not enabled and self.stopping:
            return  # a stopping worker answers new connections 503 until it exits
        super().set_accept_enabled(enabled)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection has its next request coming: read it first."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self.bounds.buffered -= self.handed.pop(conn, 0)
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
        if not self.alive and not self.draining:
            # Requests half-sent as the worker stops: a short while to finish sending; then
            # 503 if the instance is stopping (SIGTERM), else served (a worker restarting).
            self.draining = True
            for conn, reading in self.reading.items():
                reading.deadline = min(reading.deadline, now + DRAIN_READ_SECONDS)
                if self.stopping:
                    self.late.add(conn)
        for conn, reading in list(self.reading.items()):
            if reading.deadline <= now and conn in self.late:
                self.bounds.shed("stopping")
                self._refuse(conn, 503, "stopping", STOPPING)
            elif reading.deadline <= now:
                message = (
                    f"the request was not sent whole in time ({CLIENT_SECONDS:g} s, "
                    f"{DRAIN_READ_SECONDS:g} s once the worker stops)"
                )
                self._refuse(conn, 408, "request_timeout", message)

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        if force and self.stopping:
            self._answer_backlog()  # gunicorn closes the listeners next

    # --- reading ---------------------------------------------------------------------------

    def _read(self, conn: Any) -> None:
        conn.sock.sock.setblocking(False)
        now = time.monotonic()
        seconds = DRAIN_READ_SECONDS if conn in self.late else CLIENT_SECONDS
        reading = self.reading[conn] = _Reading(now + seconds)
        if conn.sock.buffer:  # what a previous read took past its request
            reading.data, conn.sock.buffer = conn.sock.buffer, bytearray()
            self.bounds.buffered += len(reading.data)
            if self._complete(conn):
                return
        self.poller.register(conn.sock.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _readable(self, conn: Any, _sock: Any) -> None:
        reading = self.reading.get(conn)
        if reading is None:
            return
        # One read per poll, whatever is waiting: a connection with megabytes queued cannot
        # hold the loop while others wait (the poll reports it again).
        try:
            data = conn.sock.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(conn)
            return
        reading.data += data
        self.bounds.buffered += len(data)
        if self.bounds.buffered > self.bounds.max_buffered and not self._shed_bytes(conn):
            return
        self.bounds.note(self.nr_conns)
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
        if conn in self.late:
            self.bounds.shed("stopping")
            self._refuse(conn, 503, "stopping", STOPPING, registered=registered)
            return True
        if registered:
            self.poller.unregister(conn.sock.sock)
        del self.reading[conn]
        conn.arrived = reading.started
        self.handed[conn] = len(reading.data)
        conn.sock.buffer = reading.data  # the request, and anything pipelined after it
        conn.data_ready = True
        conn.sock.sock.setblocking(True)
        self.enqueue_req(conn)
        return True

    # --- bounds ----------------------------------------------------------------------------

    def _make_room(self, newcomer: Any) -> None:
        """One connection over the cap: the oldest request still being sent goes, else the
        oldest kept-alive connection, else the newcomer."""
        message = "too many connections: send it again"
        self.bounds.shed("connections")
        # self.reading keeps the order requests started in: its first key is the oldest.
        oldest = next(iter(self.reading), newcomer)
        if oldest is not newcomer:
            self._refuse(oldest, 503, "busy", message)
        elif self.keepalived_conns:
            conn = self.keepalived_conns.popleft()
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()
        else:
            self._refuse(newcomer, 503, "busy", message)

    def _shed_bytes(self, conn: Any) -> bool:
        """Over the buffer cap: unfinished requests go, the largest first, until it holds.
        Whether ``conn`` is still open."""
        message = "too many request bytes held: send it again"
        while self.bounds.buffered > self.bounds.max_buffered and self.reading:
            largest = max(self.reading, key=lambda each: len(self.reading[each].data))
            self.bounds.shed("buffered_bytes")
            self._refuse(largest, 503, "busy", message)
        return conn in self.reading

    def _answer_backlog(self) -> None:
        """The connections still waiting in the listen backlog as the worker stops: 503,
        rather than a reset when the listening socket closes (within a second in all)."""
        deadline = time.monotonic() + 1.0
        for listener in self.sockets:
            while time.monotonic() < deadline:
                try:
                    sock, _ = listener.accept()
                except OSError:
                    break
                with contextlib.suppress(OSError), sock:
                    sock.settimeout(max(0.001, min(0.1, deadline - time.monotonic())))
                    with contextlib.suppress(OSError):
                        sock.recv(RECV_SIZE)  # its request, so the close sends no reset
                    self.bounds.shed("stopping")
                    sock.sendall(self._answer(503, "stopping", STOPPING, "")[0])

    # --- answers ---------------------------------------------------------------------------

    def _answer(self, status: int, code: str, message: str, given: str) -> tuple[bytes, str]:
        """An error answer as the app gives one (JSON, the request id), and that id."""
        from .requests import make_request_id

        request_id = make_request_id(given)
        body = json.dumps(error_body(code, message), separators=(",", ":")).encode()
        retry = f"Retry-After: {self.retry_after}\r\n" if status == 503 else ""
        head = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\n{retry}"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body, request_id

    def _refuse(
        self, conn: Any, status: int, code: str, message: str, *, registered: bool = True
    ) -> None:
        """Answer a request the app never sees as the app answers one: the JSON error, the
        request id, the request metric and one log line."""
        # Imported here, in the worker: gunicorn's master imports this module before its
        # configuration sets up the metrics directory that prometheus_client reads once.
        from .requests import count_webhook, is_webhook, log_refusal

        reading = self.reading.get(conn)
        method, path, given = head_facts(reading.data if reading is not None else b"")
        answer, request_id = self._answer(status, code, message, given)
        log_refusal(status, code, message, method, path, None, request_id)
        if is_webhook(method, path):
            count_webhook(str(status))
        with contextlib.suppress(OSError):
            conn.sock.sock.send(answer)
        self._drop(conn, registered=registered)

    def _drop(self, conn: Any, *, registered: bool = True) -> None:
        reading = self.reading.pop(conn, None)
        if reading is not None:
            self.bounds.buffered -= len(reading.data)
        self.late.discard(conn)
        if registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock.sock)
        self.nr_conns -= 1
        conn.close()

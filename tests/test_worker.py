"""The worker's ties to gunicorn, and its framing rules (fast: no process started).

``bridge/web/worker.py`` subclasses gunicorn's ``ThreadWorker`` because plain ``gthread``
lets slow clients hold every thread (see the README's *Deploying*). What it relies on is
listed in ``GUNICORN_INTERNALS`` and pinned here by the source of gunicorn 27.0.1: a
gunicorn release that changes any of it fails this test, and the worker is read against the
new code before the digest is updated.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import re
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import ThreadWorker
from hypothesis import given
from hypothesis import strategies as st

from bridge.web import limits
from bridge.web.framing import MAX_CHUNKS, BadRequest, chunk_size, content_length, request_end
from bridge.web.worker import GUNICORN_INTERNALS, BufferedThreadWorker

# sha256 of each one's source in gunicorn 27.0.1, first 16 hex digits.
TESTED = {
    "gunicorn.workers.gthread.ThreadWorker.__init__": "5681b8b542ea91bf",
    "gunicorn.workers.gthread.ThreadWorker.run": "f92c7394d85715a4",
    "gunicorn.workers.gthread.ThreadWorker.handle_exit": "b4e7decd4f9203ac",
    "gunicorn.workers.gthread.ThreadWorker.accept": "f8dcead3dce5c851",
    "gunicorn.workers.gthread.ThreadWorker.enqueue_req": "c9f428953d24acef",
    "gunicorn.workers.gthread.ThreadWorker.on_client_socket_readable": "aead1a3ea7b7daff",
    "gunicorn.workers.gthread.ThreadWorker.finish_request": "616e7bb15a009ff7",
    "gunicorn.workers.gthread.ThreadWorker.murder_keepalived": "4459960c4ccc36d4",
    "gunicorn.workers.gthread.ThreadWorker.murder_pending": "7bf11f46454296e1",
    "gunicorn.workers.gthread.ThreadWorker.set_accept_enabled": "140150ebfd3cae34",
    "gunicorn.workers.gthread.ThreadWorker.handle": "ca85c9be3df75da4",
    "gunicorn.workers.gthread.TConn.__init__": "c8763d7c65974e1b",
    "gunicorn.workers.gthread.TConn.init": "5ff3d4ba451cfdf3",
    "gunicorn.workers.gthread.TConn.close": "6d1c334ed1979fcb",
    "gunicorn.http.unreader.Unreader.take_buffered": "89cef5e60e6f09e1",
}


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise AssertionError(f"{dotted}: not importable")


def test_gunicorn_internals_the_worker_relies_on_are_unchanged() -> None:
    """Every gunicorn method the worker overrides or calls has the tested release's source."""
    found = {
        name: hashlib.sha256(inspect.getsource(_resolve(name)).encode()).hexdigest()[:16]
        for name in GUNICORN_INTERNALS
    }
    changed = sorted(name for name in TESTED if found.get(name) != TESTED[name])
    assert changed == [], f"gunicorn changed {changed}: read bridge/web/worker.py against them"
    assert set(found) == set(TESTED)


def test_every_override_is_guarded() -> None:
    """A ThreadWorker method the worker overrides is one of the guarded internals."""
    overridden = {
        name
        for name, value in vars(BufferedThreadWorker).items()
        if callable(value) and hasattr(ThreadWorker, name) and not name.startswith("__")
    }
    guarded = {name.rpartition(".")[2] for name in GUNICORN_INTERNALS}
    assert overridden - {"init_process"} <= guarded  # init_process: gunicorn's public hook


def chunked(*sizes: bytes) -> bytes:
    body = b"".join(size + b"\r\n" + b"a" * int(size, 16) + b"\r\n" for size in sizes)
    return b"POST /segment HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"


@pytest.mark.parametrize("size", [b"+5", b"0x5", b"5_0", b" 5", b"5 ", b"-5", b""])
def test_malformed_chunk_sizes_are_400(size: bytes) -> None:
    """A chunk size Python's int() takes but HTTP does not is refused 400 before the app."""
    head = b"POST /segment HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(BadRequest) as refused:
        request_end(head + size + b"\r\naaaaa\r\n0\r\n\r\n", 1024)
    assert refused.value.status == 400 and "chunk size" in refused.value.message


@pytest.mark.parametrize(
    ("tail", "says"),
    [(b"5;x=1\r\naaaaa\r\n0\r\n\r\n", "extensions"), (b"5\r\naaaaa\r\n0\r\nX-T: 1\r\n\r\n", "trailer"),
     (b"2\r\naaaaa\r\n0\r\n\r\n", "longer than its size")],
)  # fmt: skip
def test_chunk_extensions_trailers_and_overlong_chunks_are_400(tail: bytes, says: str) -> None:
    """Chunked framing the worker does not frame the way gunicorn's parser would is 400."""
    head = b"POST /segment HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(BadRequest) as refused:
        request_end(head + tail, 1024)
    assert refused.value.status == 400 and says in refused.value.message


@pytest.mark.parametrize("value", [b"+5", b"5_0", b"0x5", b"5 5", b"-1", b""])
def test_malformed_content_lengths_are_400(value: bytes) -> None:
    """A Content-Length that is not plain decimal digits is refused 400."""
    with pytest.raises(BadRequest) as refused:
        request_end(b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\naaaaa", 1024)
    assert refused.value.status == 400


@given(st.binary(max_size=20) | st.from_regex(rb"\A[0-9a-fA-F+x_ -]{0,18}\Z"))
def test_a_chunk_size_is_hexadecimal_digits_only(line: bytes) -> None:
    """chunk_size accepts exactly 1-16 hex digits, read base 16; anything else is 400."""
    if re.fullmatch(rb"[0-9a-fA-F]{1,16}", line):
        assert chunk_size(line) == int(line, 16)
    else:
        with pytest.raises(BadRequest):
            chunk_size(line)


@given(st.binary(max_size=22) | st.from_regex(rb"\A[0-9+_ -]{0,20}\Z"))
def test_a_content_length_is_decimal_digits_only(value: bytes) -> None:
    """content_length accepts decimal digits (around spaces/tabs); anything else is 400."""
    stripped = value.strip(b" \t")
    if re.fullmatch(rb"[0-9]{1,19}", stripped):
        assert content_length(value) == int(stripped)
    else:
        with pytest.raises(BadRequest):
            content_length(value)


@given(st.lists(st.integers(0, 300).filter(bool), max_size=5))
def test_well_formed_chunked_bodies_end_where_they_end(sizes: list[int]) -> None:
    """A well-formed chunked request ends after its last chunk, and not one byte sooner."""
    request = chunked(*(b"%x" % size for size in sizes))
    assert request_end(request + b"GET / HTTP/1.1\r\n", 10_000) == len(request)
    assert request_end(request[:-1], 10_000) is None


class _Bytes:
    """A socket that has ``data`` to read, for gunicorn's parser."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def recv(self, size: int) -> bytes:
        return self.data.read(size)


_SIZE = st.one_of(
    st.integers(0, 40).map(lambda n: b"%x" % n),
    st.sampled_from([b"+5", b"0x5", b"5_0", b" 5", b"5 ", b"5;a=b", b"5 ;a", b"", b"-0", b"Ff"]),
    st.binary(max_size=4),
)


@given(st.lists(_SIZE, min_size=1, max_size=4), st.booleans())
def test_what_the_worker_frames_gunicorn_reads(sizes: list[bytes], trailer: bool) -> None:
    """A chunked request the worker frames is one gunicorn's parser reads whole, to the same
    body length; anything else the worker refuses with 400 (never a 500 halfway through)."""
    parts = []
    for size in sizes:
        try:
            count = int(size.split(b";")[0], 16) if size else 0
        except ValueError:
            count = 5
        parts.append(size + b"\r\n" + b"a" * count + b"\r\n")
    end = b"0\r\nX-T: 1\r\n\r\n" if trailer else b"0\r\n\r\n"
    head = b"POST /segment HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
    request = head + b"".join(parts) + end
    try:
        framed = request_end(request, 10_000)
    except BadRequest as refused:
        framed, status = None, refused.status
    else:
        status = 0
    assert status in (0, 400)
    if framed is None:
        return  # refused, or incomplete as sent
    parsed = next(RequestParser(Config(), _Bytes(request[:framed]), ("127.0.0.1", 1)))
    sizes_read = [int(line, 16) for line in _size_lines(request[len(head) : framed])]
    assert len(parsed.body.read()) == sum(sizes_read)


def _size_lines(body: bytes) -> list[bytes]:
    """The size lines of a well-framed chunked body."""
    lines, at = [], 0
    while True:
        line_end = body.index(b"\r\n", at)
        lines.append(body[at:line_end])
        size = int(body[at:line_end], 16)
        if size == 0:
            return lines
        at = line_end + 2 + size + 2


@pytest.mark.parametrize(
    ("soft", "hard", "cap", "raised_to", "warned"),
    [(20_000, 20_000, 1000, 20_000, False), (1024, 4096, 1000, 1064, False),
     (1024, 1024, 1000, 1024, True)],
)  # fmt: skip
def test_the_connection_cap_fits_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, cap: int, raised_to: int, warned: bool
) -> None:
    """The soft open-files limit is raised for the cap; past the hard limit the cap is
    lowered with a warning, so accept() never fails with EMFILE and ends the worker."""
    limit = [soft, hard]

    def setrlimit(_: int, values: tuple[int, int]) -> None:
        if values[0] > limit[1]:
            raise ValueError("over the hard limit")
        limit[0] = values[0]

    monkeypatch.setattr(limits.resource, "getrlimit", lambda _: tuple(limit))
    monkeypatch.setattr(limits.resource, "setrlimit", setrlimit)
    warnings: list[str] = []
    allowed = limits.connection_cap(cap, warnings.append)
    assert limit[0] == raised_to
    assert allowed == (raised_to - limits.FD_SPARE if warned else cap)
    assert bool(warnings) == warned and all("BRIDGE_MAX_CONNECTIONS" in w for w in warnings)


def test_too_many_chunks_are_400() -> None:
    """A body of more chunks than MAX_CHUNKS is refused 400 (each arrival rereads them)."""
    request = chunked(*[b"1"] * (MAX_CHUNKS + 1))
    with pytest.raises(BadRequest) as refused:
        request_end(request, 10**9)
    assert refused.value.status == 400 and "chunks" in refused.value.message
    assert request_end(chunked(*[b"1"] * MAX_CHUNKS), 10**9) is not None

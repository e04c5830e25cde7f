"""Each hardening finding, tried again as an attacker would, against the Procfile's service:
forged batches under a captured signature, stale replays, slow clients, expensive unsigned
bodies, oversized chunked and compressed bodies, odd numbers in dead letters, and personal
data in answers."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from bridge.cli import main
from bridge.web.signing import sign
from tests.helpers.fakedub import FakeDub, Hold, Status
from tests.helpers.faultkit import key_for, lead_event, sale_event
from tests.helpers.procs import REPO, ProcfileWeb, clean_env, json_lines

pytestmark = pytest.mark.slow
SECRET = "attack-secret"


@contextlib.contextmanager
def running(tmp_path: Path, **extra: str) -> Iterator[tuple[ProcfileWeb, FakeDub]]:
    """The Procfile's service on SQLite with a fake Dub; ``extra``: more variables."""
    fake = FakeDub(api_key="k").start()
    env = clean_env(
        DUB_API_KEY="k",
        DUB_API_URL=fake.url,
        SEGMENT_SHARED_SECRET=SECRET,
        BRIDGE_DB=str(tmp_path / "ledger.sqlite3"),
        BRIDGE_MAPPINGS_DIR=str(REPO / "mappings"),
        BRIDGE_MAX_BODY_BYTES=str(4 * 1024 * 1024),
        BRIDGE_METRICS_PUBLIC="1",
        **extra,
    )
    web = ProcfileWeb(env, tmp_path)
    web.start()
    web.wait_workers(2)
    try:
        yield web, fake
    finally:
        web.stop()
        fake.stop()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[ProcfileWeb, FakeDub]]:
    with running(tmp_path) as started:
        yield started


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def post(web: ProcfileWeb, body: bytes, signed_over: bytes | None = None, **headers: str) -> Any:
    signature = sign(body if signed_over is None else signed_over, SECRET)
    return requests.post(
        web.url + "/segment",
        data=body,
        headers={"Content-Type": "application/json", "X-Signature": signature, **headers},
        timeout=30,
    )


def test_a_captured_signature_is_no_write_key(service: tuple[ProcfileWeb, FakeDub]) -> None:
    """[captured signed event, a $99,999 sale, a forged lead] under the captured signature:
    200, and only the captured event is known to Dub; the forged ones wait as dead letters."""
    web, fake = service
    captured = sale_event("victim")
    assert post(web, compact(captured)).status_code == 200
    forged = [captured, sale_event("forged") | {"properties": {"revenue": 99999, "order_id": "X"}},
              lead_event("forged")]  # fmt: skip
    answer = post(web, compact(forged), signed_over=compact(captured))
    assert answer.status_code == 200
    assert answer.json()["counts"] == {"duplicate": 1, "unverified": 2}
    assert set(fake.received_by_key()) == {key_for(captured)}
    lead = lead_event("v2")
    assert post(web, compact([lead]), signed_over=compact(lead)).status_code == 200
    copy = post(web, compact([lead, lead | {"messageId": "copy"}]), signed_over=compact(lead))
    assert copy.json()["counts"] == {"duplicate": 1, "unverified": 1}
    assert fake.received_count(key_for(lead)) == 1


def test_a_vouched_message_id_carries_no_forged_conversion(
    service: tuple[ProcfileWeb, FakeDub],
) -> None:
    """Segment's batch [a sale, a page view]; under its signature, the page view's messageId
    reused for a $99,999 sale and a `Sign Up` reusing the first event's are held; a sale
    planted under the messageId a real event will have does not stop that event, sent once."""
    web, fake = service
    first = sale_event("head")
    view = {"type": "page", "name": "Pricing", "messageId": "pv-1", "userId": "user-shead",
            "timestamp": first["timestamp"]}  # fmt: skip
    assert post(web, compact([first, view]), signed_over=compact(first)).status_code == 200
    big = sale_event("big") | {"messageId": "pv-1"}
    big["properties"] |= {"revenue": 99999}
    lead = lead_event("mallory") | {"messageId": first["messageId"]}
    planted = sale_event("next") | {"properties": {"order_id": "FORGED", "revenue": 55555}}
    for forged in (big, lead, planted):
        answer = post(web, compact([first, forged]), signed_over=compact(first))
        assert answer.status_code == 200
        assert answer.json()["counts"] == {"duplicate": 1, "unverified": 1}, answer.text
    real = sale_event("next")
    assert post(web, compact(real)).json()["counts"] == {"delivered": 1}
    assert post(web, compact(real)).json()["counts"] == {"duplicate": 1}
    assert fake.received_by_key() == {key_for(first): 1, key_for(real): 1}


def test_a_stale_replay_is_not_sent(service: tuple[ProcfileWeb, FakeDub]) -> None:
    """A signed body replayed after the ledger's memory (its events 7 days old) sends nothing."""
    web, fake = service
    old = datetime.fromtimestamp(time.time() - 7 * 86400, UTC).isoformat()
    events = [sale_event("old") | {"receivedAt": old}, lead_event("old") | {"timestamp": old}]
    answer = post(web, compact(events))
    assert answer.status_code == 200 and answer.json()["counts"] == {"too_old": 2}
    assert fake.received_count() == 0


def drip(sock: socket.socket, stop: threading.Event) -> None:
    """A slow client: its request's header, a byte every 1.5 s, never finished."""
    head = b"POST /segment HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nX-A: "
    for byte in head + b"a" * 1000:
        if stop.wait(1.5):
            return
        try:
            sock.send(bytes([byte]))
        except OSError:
            return


def test_slow_clients_hold_no_thread(service: tuple[ProcfileWeb, FakeDub]) -> None:
    """Thirty connections sending their headers a byte every 1.5 s (far more than 2 workers x
    4 threads) do not stop a normal signed request: it is answered while they still drip."""
    web, _ = service
    stop = threading.Event()
    slow = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(30)]
    drippers = [threading.Thread(target=drip, args=(s, stop), daemon=True) for s in slow]
    for thread in drippers:
        thread.start()
    try:
        started = time.monotonic()
        answer = post(web, compact(sale_event("normal")))
        took = time.monotonic() - started
        assert answer.status_code == 200
        assert all(t.is_alive() for t in drippers)  # every slow client was still sending
        print(f"\na normal request beside 30 slow clients: {took * 1000:.0f} ms")
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def metric(web: ProcfileWeb, name: str, labels: str = "") -> float | None:
    """One sample of /metrics (``labels`` as written there, e.g. ``{reason="x"}``)."""
    for line in requests.get(web.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.rpartition(" ")[2])
    return None


def eventually(predicate: Any, timeout: float = 15) -> bool:
    """Poll ``predicate`` until it holds or the deadline passes (a process catching up)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)  # polling another process
    return bool(predicate())


def answered(sock: socket.socket) -> bytes:
    """What the service sent on a connection so far (b"" if nothing, or it was reset)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096)
    except OSError:
        return b""


def test_idle_sockets_cannot_crowd_out_a_request(tmp_path: Path) -> None:
    """400 idle connections against a cap of 100 a worker: a normal request is answered 200
    while they are held, no worker holds more than 100, and the oldest idle ones are answered
    503 with Retry-After and closed to make room."""
    with running(tmp_path, BRIDGE_MAX_CONNECTIONS="100") as (web, _):
        idle = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(400)]
        try:
            assert post(web, compact(sale_event("beside-idle"))).status_code == 200
            shed = [answer for answer in map(answered, idle) if answer]
            assert len(shed) >= 400 - 2 * 100  # two workers, 100 each at most
            assert all(a.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 30\r\n" in a
                       for a in shed)  # fmt: skip
            assert (metric(web, "bridge_worker_connections_peak") or 0) <= 100
            assert (metric(web, "bridge_worker_shed_total", '{reason="connections"}') or 0) >= 200
        finally:
            for sock in idle:
                sock.close()


def test_half_sent_bodies_stay_under_the_buffer_cap(tmp_path: Path) -> None:
    """Twenty-four connections stalled after 1 MB of a 4 MB body, against a cap of 8 MB a
    worker: the largest stalled bodies are shed, no worker ever holds more than the cap, and
    a normal request beside them is answered 200."""
    cap = 8 * 1024 * 1024
    head = (b"POST /segment HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4194304\r\n\r\n")  # fmt: skip
    with running(tmp_path, BRIDGE_MAX_BUFFERED_BYTES=str(cap)) as (web, _):
        stalled = []
        try:
            for _ in range(24):
                stalled.append(socket.create_connection(("127.0.0.1", web.port)))
                with contextlib.suppress(OSError):  # shed while sending
                    stalled[-1].sendall(head + b" " * (1024 * 1024))
            # 24 MB against two caps of 8 MB: at least 8 MB is shed, once the workers read it.
            shed = '{reason="buffered_bytes"}'
            assert eventually(lambda: (metric(web, "bridge_worker_shed_total", shed) or 0) >= 2)
            assert post(web, compact(sale_event("beside-bodies"))).status_code == 200
            assert 0 < (metric(web, "bridge_worker_buffered_bytes_peak") or 0) <= cap
        finally:
            for sock in stalled:
                sock.close()


def test_unsigned_work_is_cheap_and_bounded(service: tuple[ProcfileWeb, FakeDub]) -> None:
    """Six loops of 4 MB arrays with a bad signature get 401 each, and normal signed requests
    beside them are still answered."""
    web, _ = service
    huge = b'[{"x":"' + b"a" * (4 * 1024 * 1024 - 100) + b'"}]'
    stop = threading.Event()
    refused: list[int] = []

    def attack() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(
                    web.url + "/segment",
                    data=huge,
                    headers={"Content-Type": "application/json", "X-Signature": "0" * 40},
                    timeout=30,
                )
                refused.append(answer.status_code)

    loops = [threading.Thread(target=attack, daemon=True) for _ in range(6)]
    for loop in loops:
        loop.start()
    try:
        for i in range(5):
            assert post(web, compact(sale_event(f"beside{i}"))).status_code == 200
    finally:
        stop.set()
        for loop in loops:
            loop.join(30)
    assert refused and set(refused) == {401}


def chunked_post(port: int, body: bytes, chunk: int = 64 * 1024, request_id: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        given = f"X-Request-Id: {request_id}\r\n".encode() if request_id else b""
        sock.sendall(
            b"POST /segment HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n" + given + b"\r\n"
        )
        try:
            for at in range(0, len(body), chunk):
                part = body[at : at + chunk]
                sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # answered and closed before the whole body was sent
        return sock.recv(4096)


def test_oversized_chunked_and_compressed_bodies(service: tuple[ProcfileWeb, FakeDub]) -> None:
    """A chunked body past the limit gets 413, as with Content-Length; gzip gets 415. The
    413s, answered before the app sees the request, carry a request id, are counted and
    logged like the app's own answers."""
    web, _ = service
    answer = chunked_post(web.port, b"[" + b" " * (5 * 1024 * 1024) + b"]", request_id="rid-big")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert b'"payload_too_large"' in answer and b"\r\nX-Request-Id: rid-big\r\n" in answer
    sized = requests.post(web.url + "/segment", data=b" " * (5 * 1024 * 1024), timeout=30)
    assert sized.status_code == 413 and len(sized.headers["X-Request-Id"]) == 32
    scrape = requests.get(web.url + "/metrics", timeout=5).text
    assert 'bridge_webhook_requests_total{reason="",status="413"} 2.0' in scrape
    small = chunked_post(web.port, compact(sale_event("chunked")))
    assert small.startswith(b"HTTP/1.1 401")  # read whole, then the signature is checked
    body = compact(sale_event("gz"))
    zipped = post(web, gzip.compress(body), signed_over=body, **{"Content-Encoding": "gzip"})
    assert zipped.status_code == 415
    web.stop()  # its log is complete
    refused = [line for line in json_lines(web) if line["msg"] == "request refused"]
    assert {(line["status"], line.get("requestId")) for line in refused} >= {(413, "rid-big")}


@pytest.mark.parametrize("size", [b"+5", b"0x5", b"5_0"])
def test_malformed_chunk_sizes_are_400(service: tuple[ProcfileWeb, FakeDub], size: bytes) -> None:
    """A chunk size Python's int() would read (+5, 0x5, 5_0) is answered 400, not 500."""
    web, _ = service
    with socket.create_connection(("127.0.0.1", web.port), timeout=30) as sock:
        sock.sendall(
            b"POST /segment HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n[{}]\r\n0\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b"chunk size" in answer, answer[:200]


def test_connections_after_sigterm_are_answered_503(tmp_path: Path) -> None:
    """SIGTERM while a sale waits on Dub: connections made during the drain are answered 503
    with Retry-After (not reset from the listen backlog), and the sale in flight gets 200."""
    slow_dub = {"DUB_READ_TIMEOUT": "20", "BRIDGE_DEADLINE_SECONDS": "25",
                "BRIDGE_LEASE_SECONDS": "60"}  # fmt: skip
    with running(tmp_path, **slow_dub) as (web, fake):
        gate = threading.Event()
        fake.script_next(Hold(gate))
        answers: list[Any] = []
        sale = compact(sale_event("in-flight"))
        inflight = threading.Thread(target=lambda: answers.append(post(web, sale)), daemon=True)
        inflight.start()
        late: list[Any] = []
        try:
            assert fake.wait_until(lambda: fake.received_count() == 1, timeout=15)
            assert web.proc is not None
            os.kill(web.proc.pid, signal.SIGTERM)  # the master, as a platform stops it
            assert eventually(lambda: web.tail_all().count('"msg":"drain started') >= 2)
            for _ in range(5):
                late.append(requests.get(web.url + "/healthz", timeout=15))
        finally:
            gate.set()
            inflight.join(30)
        assert [answer.status_code for answer in late] == [503] * 5
        assert all(answer.headers["Retry-After"] == "30" for answer in late)
        assert answers and answers[0].status_code == 200
        assert fake.recorded_count() == 1


def test_odd_numbers_stay_in_the_dead_letter(
    service: tuple[ProcfileWeb, FakeDub], tmp_path: Path
) -> None:
    """NaN and 1e400 are kept in the dead letter's payload as sent."""
    web, _ = service
    body = (
        b'{"type":"track","event":"Order Completed","messageId":"odd","userId":"u",'
        b'"properties":{"revenue":NaN,"tax":1e400}}'
    )
    assert post(web, body).json()["counts"] == {"invalid": 1}
    listed = CliRunner().invoke(
        main, ["deadletters", "--json"], env={"BRIDGE_DB": str(tmp_path / "ledger.sqlite3")}
    )
    assert '"revenue":NaN' in listed.stdout and '"tax":1e400' in listed.stdout


def test_answers_mask_personal_data(service: tuple[ProcfileWeb, FakeDub]) -> None:
    """An error that quotes an email reaches Segment's delivery UI masked."""
    web, fake = service
    event = sale_event("pii")
    fake.script(key_for(event), Status(422, message="customerEmail jane.doe@example.com is bad"))
    answer = post(web, compact(event))
    assert "jane.doe@example.com" not in answer.text and "j***@example.com" in answer.text

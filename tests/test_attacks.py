"""Each hardening finding, tried again as an attacker would, against the Procfile's service:
forged batches under a captured signature, stale replays, slow clients, expensive unsigned
bodies, oversized chunked and compressed bodies, odd numbers in dead letters, and personal
data in answers."""

from __future__ import annotations

import gzip
import json
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
from tests.helpers.fakedub import FakeDub, Status
from tests.helpers.faultkit import key_for, lead_event, sale_event
from tests.helpers.procs import REPO, ProcfileWeb, clean_env, json_lines

pytestmark = pytest.mark.slow
SECRET = "attack-secret"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[ProcfileWeb, FakeDub]]:
    fake = FakeDub(api_key="k").start()
    env = clean_env(
        DUB_API_KEY="k",
        DUB_API_URL=fake.url,
        SEGMENT_SHARED_SECRET=SECRET,
        BRIDGE_DB=str(tmp_path / "ledger.sqlite3"),
        BRIDGE_MAPPINGS_DIR=str(REPO / "mappings"),
        BRIDGE_MAX_BODY_BYTES=str(4 * 1024 * 1024),
        BRIDGE_METRICS_PUBLIC="1",
    )
    web = ProcfileWeb(env, tmp_path)
    web.start()
    web.wait_workers(2)
    try:
        yield web, fake
    finally:
        web.stop()
        fake.stop()


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

"""A fast fake Dub for the benchmark: asyncio, raw HTTP/1.1 with keep-alive, one process.

It must never be the bottleneck, so it does not parse the request body: every
``POST /track/lead`` or ``/track/sale`` gets 200 and a small Dub-shaped answer (the bridge
reads ``link`` / ``sale`` to tell a delivered call from a de-duplicated one).

Control endpoints for run.py (not Dub's):
  ``GET /_bench/stats``       -> {"lead": n, "sale": n, "other": n}
  ``POST /_bench/delay/<ms>`` -> every later answer waits that long (item 4 uses 20 ms)

    python bench/fakedub.py [--port 0]      # prints "listening 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

LEAD_ANSWER = orjson.dumps(
    {
        "click": {"id": "bench_click"},
        "link": {"id": "link_bench", "domain": "dub.sh", "key": "bench", "url": "https://x.test"},
        "customer": {"name": None, "email": None, "avatar": None, "externalId": "bench"},
    }
)
SALE_ANSWER = orjson.dumps(
    {
        "eventName": "Order Completed",
        "customer": {"id": "cus_bench", "name": None, "email": None, "externalId": "bench"},
        "sale": {"amount": 1, "currency": "usd", "paymentProcessor": "custom", "invoiceId": None},
    }
)
NOT_FOUND = orjson.dumps({"error": {"code": "not_found", "message": "no such path"}})


def response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: "
        + connection
        + b"\r\n\r\n"
        + body
    )


class State:
    def __init__(self) -> None:
        self.delay = 0.0
        self.counts = {"lead": 0, "sale": 0, "other": 0}


class FakeDub(asyncio.Protocol):
    def __init__(self, state: State):
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:  # every complete request in the buffer (clients may pipeline)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            keep_alive = True
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    keep_alive = False
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            method, path, _ = head.split(" ", 2)
            self.answer(method, path, keep_alive)

    def answer(self, method: str, path: str, keep_alive: bool) -> None:
        state = self.state
        delay = state.delay
        if method == "POST" and path == "/track/lead":
            state.counts["lead"] += 1
            out = response(b"200 OK", LEAD_ANSWER, keep_alive)
        elif method == "POST" and path == "/track/sale":
            state.counts["sale"] += 1
            out = response(b"200 OK", SALE_ANSWER, keep_alive)
        elif path == "/_bench/stats":
            out, delay = response(b"200 OK", orjson.dumps(state.counts), keep_alive), 0.0
        elif method == "POST" and path.startswith("/_bench/delay/"):
            state.delay = float(path.rsplit("/", 1)[1]) / 1000.0
            out, delay = response(b"200 OK", b"{}", keep_alive), 0.0
        else:
            state.counts["other"] += 1
            out = response(b"404 Not Found", NOT_FOUND, keep_alive)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.send, out, keep_alive)
        else:
            self.send(out, keep_alive)

    def send(self, out: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(out)
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    state = State()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeDub(state), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="fast fake Dub for the benchmark")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.host != "127.0.0.1":
        sys.exit("fakedub: the benchmark listens on 127.0.0.1 only")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

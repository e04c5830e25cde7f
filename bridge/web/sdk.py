"""More ways in: Segment's HTTP Tracking API (``/v1/*``, for server SDKs) and RudderStack.

Segment's server SDKs (and RudderStack's, whose data plane speaks the same API) post
``{"batch": [...]}`` to ``/v1/batch``, or one message to ``/v1/track`` and its siblings,
with the write key as HTTP Basic user (or ``writeKey`` in the body). RudderStack's
webhook destination posts one event to ``/rudderstack`` with a static token. Past the
door, both run the webhook's one pipeline (``run_events``); what differs is the answer.

SDKs retry a failed request only a few times within seconds (not for four hours as
Segment does), so what is not settled within the time budget goes to the outbox at
once (``queued``) and the answer is 200, as Segment's API answers once it has the
message. Only a ledger that cannot take the messages is a 503.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import threading
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Response, abort, current_app, request
from prometheus_client import Counter

from ..core.errors import (
    InvalidJSON,
    InvalidSignature,
    NoEvents,
    PayloadTooLarge,
    RequestError,
    ServiceUnavailable,
    UnsupportedEncoding,
)
from ..core.inputs import BATCH_NOT_ARRAY, Item, events_in, repair_note
from ..core.jsoncodec import JSONDecodeFailure, JSONEncodeFailure, Repair, dumps, loads_repaired
from ..core.logs import SOURCE
from ..core.metrics import labelled
from ..core.outcomes import RETRY
from ..core.results import Result
from ..core.settings import Settings
from ..service.wiring import Service
from .responses import json_response
from .webhook import _retry_after, read_limited, request_started, run_events

sdk = Blueprint("sdk", __name__)

# Segment's own limits, on the JSON before compression.
MESSAGE_LIMIT = 32 * 1024
BATCH_LIMIT = 500 * 1024
READ_CHUNK = 64 * 1024  # a gzip body is inflated this much at a time
# The single-call endpoints; each message's ``type`` is its path's.
CALLS = ("track", "identify", "page", "screen", "group", "alias")
RUDDERSTACK = "rudderstack"
DERIVED_PREFIX = "bridge-"
# Not part of what a message says: set (or reset) by the sender on every try.
_PER_TRY = ("sentAt", "receivedAt", "writeKey", "messageId")


class InvalidGzip(RequestError):
    code = "invalid_gzip"


class InvalidMessage(RequestError):
    code = "invalid_message"


class Unauthorized(InvalidSignature):
    """No write key or token, or one the bridge does not know (never echoed)."""


@sdk.post("/v1/batch")
def batch() -> Response:
    return _tracking_api(None)


@sdk.post(f"/v1/<any({', '.join(CALLS)}):kind>")
def single(kind: str) -> Response:
    return _tracking_api(kind)


@sdk.post("/rudderstack")
def rudderstack() -> Response:
    service: Service = current_app.extensions["bridge"]
    started = request_started(service.deliverer.clock)
    token = service.settings.rudderstack_token
    if token is None:
        abort(404)
    given = _bearer() or request.headers.get("X-Bridge-Token", "")
    if not given or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized(
            "unauthorized: send `Authorization: Bearer <BRIDGE_RUDDERSTACK_TOKEN>`"
            " or `X-Bridge-Token: <BRIDGE_RUDDERSTACK_TOKEN>`"
        )
    data, repairs, size = _read_json(service.settings)
    if isinstance(data, dict) and "batch" in data:
        items = _batch_items(data, repairs, size)
    else:
        items = _single_items(data, repairs, size, kind=None)
    return _run(service, RUDDERSTACK, items, started)


def _tracking_api(kind: str | None) -> Response:
    service: Service = current_app.extensions["bridge"]
    started = request_started(service.deliverer.clock)
    keys = service.settings.write_key_names
    if not keys:
        abort(404)
    name = None
    if request.headers.get("Authorization"):
        # A key in the header is checked before a byte of the body is read.
        name = _source_of(_basic_user(), keys)
        if name is None:
            raise Unauthorized("unauthorized: the write key is not one of BRIDGE_WRITE_KEYS")
    data, repairs, size = _read_json(service.settings)
    if name is None:
        given = data.get("writeKey") if isinstance(data, dict) else None
        name = _source_of(given if isinstance(given, str) else None, keys)
        if name is None:
            raise Unauthorized(
                "unauthorized: send a write key of BRIDGE_WRITE_KEYS as the HTTP Basic user"
                " name (empty password) or as `writeKey` in the body"
            )
    if kind is None:
        items = _batch_items(data, repairs, size)
    else:
        items = _single_items(data, repairs, size, kind=kind)
    return _run(service, name, items, started)


def _run(service: Service, source: str, items: list[Item], started: float) -> Response:
    token = SOURCE.set(source)
    try:
        results = run_events(service, items, started, hand_over=True)
    finally:
        SOURCE.reset(token)
    _count(source, results)
    if any(r.outcome in RETRY for r in results):
        # Only where the outbox could not take a message (no ledger, or it failed).
        wait = _retry_after(results, service.settings.retry_after_seconds)
        error = ServiceUnavailable("not every message could be kept for delivery; retry")
        return json_response(error.to_dict(), 503, {"Retry-After": str(wait)})
    return json_response({"success": True})


# --- who is sending -----------------------------------------------------------------------


def _source_of(given: str | None, keys: Mapping[str, str]) -> str | None:
    """The name of the write key ``given``, compared in constant time with every key."""
    if not given:
        return None
    found = None
    for key, name in keys.items():
        if hmac.compare_digest(given.encode(), key.encode()):
            found = name
    return found


def _basic_user() -> str | None:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return None
    return auth.username


def _bearer() -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


# --- the body -----------------------------------------------------------------------------


def _read_json(settings: Settings) -> tuple[Any, list[Repair], int]:
    """The body parsed (gzip inflated first), its repairs, and its size before compression."""
    raw = read_body(settings.max_body_bytes)
    if not raw.strip():
        raise NoEvents('the body is empty: send a message, or {"batch": [...]}')
    try:
        data, repairs = loads_repaired(raw)
    except JSONDecodeFailure as exc:
        raise InvalidJSON(f"the body is not JSON: {exc}") from exc
    return data, repairs, len(raw)


def read_body(limit: int) -> bytes:
    """The body, inflated when it is gzip: 413 past ``limit`` bytes, compressed or not."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return read_limited(limit)
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not accepted: send JSON, or gzip"
        )
    return inflate(read_limited(limit), limit)


def inflate(packed: bytes, limit: int) -> bytes:
    """A gzip body inflated ``READ_CHUNK`` bytes at a time: 413 as soon as it passes
    ``limit``, so a small body that inflates to gigabytes never fills memory."""
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed)) as stream:
            while chunk := stream.read(READ_CHUNK):
                out += chunk
                if len(out) > limit:
                    raise PayloadTooLarge(
                        f"the body inflates past {limit} bytes (BRIDGE_MAX_BODY_BYTES)"
                    )
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidGzip(f"the body is not valid gzip: {exc}") from exc
    return bytes(out)


def _batch_items(data: Any, repairs: list[Repair], size: int) -> list[Item]:
    if not isinstance(data, dict) or "batch" not in data:
        raise NoEvents('no events: send {"batch": [...]} to /v1/batch')
    if not isinstance(data["batch"], list):
        raise NoEvents(BATCH_NOT_ARRAY)
    if size > BATCH_LIMIT:
        raise PayloadTooLarge(f"the batch is {size} bytes, over Segment's limit of {BATCH_LIMIT}")
    items = events_in(data, repairs)
    shared = {k: data[k] for k in ("context", "integrations") if isinstance(data.get(k), dict)}
    received = _now_iso()
    made = []
    for index, item in enumerate(items):
        where = f"batch[{index}]"
        message = normalize(item.event, shared=shared, received_at=received, where=where)
        if size > MESSAGE_LIMIT and _size(message, where) > MESSAGE_LIMIT:
            raise PayloadTooLarge(
                f"batch[{index}] (messageId {_id_of(message)!r}) is over Segment's limit of"
                f" {MESSAGE_LIMIT} bytes per message"
            )
        made.append(Item(message, item.notes))
    return made


def _single_items(data: Any, repairs: list[Repair], size: int, *, kind: str | None) -> list[Item]:
    if not isinstance(data, dict):
        raise NoEvents("no event: send one message, a JSON object")
    if size > MESSAGE_LIMIT:
        raise PayloadTooLarge(
            f"the message is {size} bytes, over Segment's limit of {MESSAGE_LIMIT}"
        )
    message = normalize(data, kind=kind, received_at=_now_iso())
    return [Item(message, tuple(repair_note(path) for path in repairs))]


def normalize(
    message: Any,
    *,
    kind: str | None = None,
    shared: Mapping[str, Any] | None = None,
    received_at: str,
    where: str = "the message",
) -> Any:
    """A message as the pipeline wants it: the type its path gives, the batch's context
    and integrations under its own, ``receivedAt`` (when the bridge got it), no write key,
    and a ``messageId`` (derived from its content when it has none)."""
    if not isinstance(message, dict):
        return message  # the engine reports it invalid
    message = dict(message)
    message.pop("writeKey", None)
    if kind is not None:
        message["type"] = kind
    for key, value in (shared or {}).items():
        own = message.get(key)
        if own is None or isinstance(own, dict):
            message[key] = {**value, **(own or {})}
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        try:
            message["messageId"] = derived_message_id(message)
        except JSONEncodeFailure as exc:
            raise InvalidMessage(
                f"{where}: no messageId, and one cannot be derived ({exc}); send one"
            ) from exc
    message.setdefault("receivedAt", received_at)
    return message


def derived_message_id(message: Mapping[str, Any]) -> str:
    """A messageId for a message sent without one: a hash of what it says (not of what
    changes between a sender's tries), so every retry of it is the same message.
    ``JSONEncodeFailure`` for a message nested too deeply to be written."""
    content = {k: v for k, v in message.items() if k not in _PER_TRY}
    try:
        text = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # past 64-bit integers or 255 levels of nesting, which orjson refuses
        try:
            text = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        except (ValueError, TypeError, RecursionError) as exc:
            raise JSONEncodeFailure(f"cannot write as JSON: {type(exc).__name__}") from exc
    return DERIVED_PREFIX + hashlib.sha256(text).hexdigest()[:32]


def _size(message: Any, where: str) -> int:
    try:
        return len(dumps(message))
    except JSONEncodeFailure as exc:
        raise InvalidMessage(f"{where}: {exc}") from exc


def _id_of(message: Any) -> Any:
    return message.get("messageId") if isinstance(message, dict) else None


def _now_iso() -> str:
    clock = current_app.extensions["bridge"].deliverer.clock
    when = datetime.fromtimestamp(clock.time(), UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- metrics ------------------------------------------------------------------------------

_counter: Counter | None = None
_counter_lock = threading.Lock()


def _count(source: str, results: Iterable[Result]) -> None:
    """``bridge_source_events_total{source, outcome}``: each result as answered."""
    global _counter
    if _counter is None:
        with _counter_lock:
            if _counter is None:
                _counter = Counter(
                    "bridge_source_events_total",
                    "Results per (event, mapping) that came by the SDK API or RudderStack, by"
                    " the write key's name (or rudderstack) and the outcome answered.",
                    ["source", "outcome"],
                )
    for result in results:
        labelled(_counter, source, str(result.outcome)).inc()

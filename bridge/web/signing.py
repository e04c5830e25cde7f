"""Segment's webhook signature: hex HMAC-SHA1 of the body, keyed by the shared secret.

Checked on the raw bytes before anything is parsed, in constant time. For a batch
(a JSON array), Segment's Webhooks Actions sign only the first event's JSON text,
so that text is accepted too; the caller learns which one matched, because a
first-event signature vouches for that event, not for the rest of the batch.

What an unsigned request can cost is bounded: the whole-body HMAC (C, linear), and
finding the first event within its first ``FIRST_EVENT_MAX`` bytes (Segment's events
are at most 32 KB); a first event longer than that cannot match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

_WHITESPACE = b" \t\r\n"
FIRST_EVENT_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class Verified:
    ok: bool
    whole_body: bool  # the signature covers every byte, not only the first event


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def first_element_texts(body: bytes) -> list[bytes]:
    """The first element of a JSON array body, as sent and as compact JSON.

    Only the first ``FIRST_EVENT_MAX`` bytes are read; nothing is returned for a body
    that is not an array, or whose first element does not end within them.
    """
    stripped = body.lstrip(_WHITESPACE)
    if not stripped.startswith(b"["):
        return []
    # surrogateescape: any byte survives the round trip, so the slice is the bytes sent.
    text = stripped[1 : 1 + FIRST_EVENT_MAX].decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip())
    try:
        first, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return []
    raw = text[start:end].encode("utf-8", "surrogateescape")
    try:
        compact = json.dumps(first, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError):
        return [raw]
    return [raw] if raw == compact else [raw, compact]


def verify(body: bytes, signature: str | None, secret: str) -> Verified:
    """Whether the signature matches the whole body or, for an array, its first element."""
    if not signature:
        return Verified(False, False)
    given = signature.strip().lower().encode("ascii", "replace")
    whole = hmac.compare_digest(sign(body, secret).encode(), given)
    first = False
    for candidate in first_element_texts(body):
        # Evaluate every candidate: the time taken does not reveal which one matched.
        first |= hmac.compare_digest(sign(candidate, secret).encode(), given)
    return Verified(whole or first, whole)


def signature_key(signature: str) -> str:
    """What the ledger remembers a signature by."""
    return hashlib.sha256(signature.strip().lower().encode("ascii", "replace")).hexdigest()[:32]

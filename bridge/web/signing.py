"""Segment's webhook signature: hex HMAC-SHA1 of the body, keyed by the shared secret.

Checked on the raw bytes before anything is parsed, compared in constant time.
For a batched (array) body, Segment's Webhooks Actions sign only the first
event's JSON text, so that text is accepted too.
"""

from __future__ import annotations

import hashlib
import hmac
import json

_WHITESPACE = b" \t\r\n"


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def first_element_texts(body: bytes) -> list[bytes]:
    """The first element of a JSON array body, as sent and as compact JSON.

    Only the first element is scanned (to find where it ends); the rest of the
    body is not read. Nothing is returned for a body that is not an array.
    """
    stripped = body.lstrip(_WHITESPACE)
    if not stripped.startswith(b"["):
        return []
    try:
        text = stripped[1:].decode("utf-8")
        start = len(text) - len(text.lstrip())
        first, end = json.JSONDecoder().raw_decode(text, start)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return []
    raw = text[start:end].encode("utf-8")
    compact = json.dumps(first, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return [raw] if raw == compact else [raw, compact]


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """True when the signature matches the whole body or, for an array, its first element."""
    if not signature:
        return False
    given = signature.strip().lower().encode("ascii", "replace")
    ok = False
    for candidate in (body, *first_element_texts(body)):
        # Evaluate every candidate: the time taken does not reveal which one matched.
        ok |= hmac.compare_digest(sign(candidate, secret).encode(), given)
    return ok

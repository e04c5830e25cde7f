"""Segment's webhook signature: hex HMAC-SHA1 of the body, keyed by the shared secret.

Checked on the raw bytes before anything is parsed, in constant time. For a batch
(a JSON array), Segment's Webhooks Actions sign only the first event's JSON text,
so that text is accepted too; the caller learns which one matched, because a
first-event signature vouches for that event, not for the rest of the batch: what the
rest may hold is what the signature first came with, each event by the digest of its
bytes as received (``event_digests``).

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


def event_texts(body: bytes) -> list[bytes] | None:
    """Each event of a signed body as sent: the elements of a JSON array, else the body
    itself (one event, or a ``{"batch": [...]}`` its signature covers whole); None when
    the elements cannot be told apart (a body the JSON reader had to repair, say)."""
    stripped = body.strip(_WHITESPACE)
    if not stripped.startswith(b"["):
        return [stripped]
    # surrogateescape: any byte survives the round trip, so each slice is the bytes sent.
    text = stripped.decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder(strict=False)
    texts: list[bytes] = []
    at = _skip_space(text, 1)
    if text[at : at + 1] == "]":
        return texts
    while True:
        try:
            _, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            return None
        texts.append(text[at:end].encode("utf-8", "surrogateescape"))
        at = _skip_space(text, end)
        if text[at : at + 1] == "]" and at + 1 == len(text):
            return texts
        if text[at : at + 1] != ",":
            return None
        at = _skip_space(text, at + 1)


def _skip_space(text: str, at: int) -> int:
    while text[at : at + 1] in (" ", "\t", "\r", "\n"):
        at += 1
    return at


def digest(text: bytes) -> str:
    """What the ledger remembers an event's content by."""
    return hashlib.sha256(text).hexdigest()


def event_digests(body: bytes, whole_body: bool = False) -> list[str] | None:
    """The digest of each event of a signed body, in order (see ``event_texts``).

    ``whole_body``: the signature covers every byte, so the only body that can reuse it
    holds this one as its first element: the body's own digest is all there is to keep
    (and no parse is needed)."""
    if whole_body:
        return [digest(body.strip(_WHITESPACE))]
    texts = event_texts(body)
    return None if texts is None else [digest(t) for t in texts]


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

"""How JSON values are kept in a ledger column: text as received, a note when it cannot be."""

from __future__ import annotations

from typing import Any

from ..core.jsoncodec import JSONEncodeFailure, dumps_exact, dumps_str, loads


def stored(value: Any) -> str | None:
    """JSON text to store; a value that cannot be written is kept as a note instead."""
    if value is None:
        return None
    try:
        return dumps_exact(value)  # NaN or 1e400 stay as the sender wrote them
    except (JSONEncodeFailure, ValueError, RecursionError) as exc:
        return dumps_str({"unstorable": str(exc)})


def read(text: str | None) -> Any:
    return loads(text) if text else None

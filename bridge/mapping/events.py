"""The shape of a Segment ``track`` event, as far as the bridge relies on it.

Only the keys the mappings read are typed; everything else Segment sends is kept
as it is (``extra="allow"``), since mappings may read any path. Strict types:
a ``messageId`` of 42 or ``properties`` of "x" is a malformed event, not something
to coerce.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.masking import mask_value


class SegmentEvent(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    event: str = Field(min_length=1)
    messageId: str = Field(min_length=1, max_length=1000)
    userId: str | int | None = None
    anonymousId: str | int | None = None
    timestamp: str | int | float | None = None  # ISO 8601 text or epoch (milli)seconds
    properties: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class SegmentMessage(SegmentEvent):
    """An ``identify`` call or a ``delete`` message: no event name; traits an object."""

    event: str | None = None  # type: ignore[assignment]
    traits: dict[str, Any] | None = None


_IDS = frozenset({str, int, type(None)})
_TIME = frozenset({str, int, float, type(None)})
_OBJECT = frozenset({dict, type(None)})


def well_formed(event: dict[str, Any], message_id: str | None, kind: Any = "track") -> bool:
    """True only when ``SegmentEvent`` would accept this ``track`` event: its checks, in Python.

    The engine calls it for every event a mapping takes, having already found that
    ``type`` is "track", ``event`` a name and ``message_id`` the messageId if it is text.
    It asks pydantic only when this says no, for pydantic's messages (or in case pydantic
    is more lenient). A test holds it to the direction that matters: True here means
    valid there.
    """
    get = event.get
    return (
        message_id is not None
        and 0 < len(message_id) <= 1000
        and (bool(get("event")) if kind == "track" else type(get("traits")) in _OBJECT)
        and type(get("userId")) in _IDS
        and type(get("anonymousId")) in _IDS
        and type(get("timestamp")) in _TIME
        and type(get("properties")) in _OBJECT
        and type(get("context")) in _OBJECT
        and type(get("integrations")) in _OBJECT
    )


def describe_validation_error(exc: ValidationError) -> list[str]:
    """pydantic's errors as short lines: `path: message (value ...)`, values masked."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "event"
        text = f"{where}: {error['msg']}"
        if error["type"] != "missing":
            text += f" (value {mask_value(where, error.get('input'))})"
        lines.append(text)
    return lines

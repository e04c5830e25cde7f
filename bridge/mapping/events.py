"""The shape of a Segment ``track`` event, as far as the bridge relies on it.

Only the keys the mappings read are typed; everything else Segment sends is kept
as it is (``extra="allow"``), since mappings may read any path. Strict types:
a ``messageId`` of 42 or ``properties`` of "x" is a malformed event, not something
to coerce.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..masking import mask_value


class SegmentEvent(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    event: str = Field(min_length=1)
    messageId: str = Field(min_length=1, max_length=1000)
    userId: str | int | None = None
    anonymousId: str | int | None = None
    timestamp: str | None = None
    properties: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


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

"""The one way the service writes JSON answers."""

from __future__ import annotations

from typing import Any

from flask import Response

from ..core.jsoncodec import dumps


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(dumps(payload), status=status, mimetype="application/json", headers=headers)

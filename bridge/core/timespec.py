"""``--since`` and the console's ``since``: an ISO time or an age such as 30m, 12h, 7d."""

from __future__ import annotations

import math
import re
from datetime import datetime

SINCE_HELP = "an ISO date/time (2026-11-01T12:00) or an age (30m, 12h, 7d)"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since(text: str, now: float) -> float:
    """The moment ``text`` names, seen at ``now``; ``ValueError`` saying what is expected.
    An ISO time without a zone is the machine's local time (as it always was for the CLI)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        seconds = float(match[1]) * _UNITS[match[2]]
        if not math.isfinite(seconds):
            raise ValueError(SINCE_HELP)
        return now - seconds
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError(SINCE_HELP) from None

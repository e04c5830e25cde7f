"""Keep personal data and secrets out of logs and error messages.

Emails are masked wherever a value is shown (``jane@example.com`` -> ``j***@example.com``);
long values are cut so one odd event cannot flood a log line.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

_EMAIL_RE = re.compile(r"([A-Za-z0-9._%+'-])[A-Za-z0-9._%+'-]*@([A-Za-z0-9.-]+)")
_SHOWN_MAX = 80
# reprlib bounds depth and width, so a huge or deeply nested value costs little to show.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist = 2, 4, 4
_SHORT.maxstring = _SHORT.maxother = 60


def mask_emails(text: str) -> str:
    """Replace every email address in the text by its masked form."""
    return _EMAIL_RE.sub(r"\1***@\2", text)


def _mask_address(value: str) -> str:
    """Whatever an email field holds is treated as an address, well-formed or not."""
    domain = value.rpartition("@")[2] if "@" in value else ""
    return f"{value[:1]}***@{domain}" if domain else f"{value[:1]}***"


def mask_value(field: str, value: Any) -> str:
    """A short, masked representation of a value for an error or a warning."""
    if isinstance(value, str) and "email" in field.lower():
        shown = repr(_mask_address(value))
    else:
        shown = _SHORT.repr(value)
    if len(shown) > _SHOWN_MAX:
        shown = shown[: _SHOWN_MAX - 3] + "..."
    return mask_emails(shown)


def mask_json(field: str, value: Any) -> Any:
    """A JSON value with every email masked, kept JSON (for machine-read output)."""
    if isinstance(value, dict):
        return {k: mask_json(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(field, v) for v in value]
    if isinstance(value, str):
        return _mask_address(value) if "email" in field.lower() else mask_emails(value)
    return value

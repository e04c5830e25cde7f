"""Keep personal data and secrets out of logs and error messages.

Emails are masked wherever a value is shown (``jane@example.com`` -> ``j***@example.com``),
whatever their form: non-ASCII local parts and domains, quoted local parts
(``"john doe"@example.com`` -> ``"***@example.com``) and IP literals; long values are cut
so one odd event cannot flood a log line.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

# Any character an address's local part or domain may hold, non-ASCII included (RFC 6531):
# all but spaces, controls and the specials that delimit an address in text.
_CHAR = r"[^\s\x00-\x1f\x7f\"(),:;<>@\[\]\\]"
# A dot-atom local part, from the start of its run only (the look-behind keeps the scan
# linear): leading apostrophes (a Python repr's quote) are kept, and so is the first
# character after them.
_DOT_ATOM = rf"(?<!{_CHAR})(?P<quote>'*)(?P<first>(?!'){_CHAR}){_CHAR}*"
# A quoted local part ("john doe"@example.com), its quotes escaped in JSON or not: to the
# last quote and @ within 64 characters (RFC 5321's longest local part; the bound keeps the
# scan linear), so that nothing of an odd one ("a@b"@example.com) is left.
_QUOTED = r'(?P<open>")(?:[^"\\\r\n]|\\.){0,64}\\?"'
# The domain: a name (IDN too) or an IP literal ([192.0.2.1], [IPv6:2001:db8::1]).
_DOMAIN = rf"@(?P<domain>\[[^\[\]\s\\]*\]|{_CHAR}+)"
_EMAIL_RE = re.compile(rf"(?:{_DOT_ATOM}|{_QUOTED}){_DOMAIN}")
# Without a quote before an @ there is no quoted local part: a JSON log line, all quotes,
# is scanned faster without trying one at each of them.
_DOT_ATOM_RE = re.compile(rf"{_DOT_ATOM}{_DOMAIN}")
_SHOWN_MAX = 80
# reprlib bounds depth and width, so a huge or deeply nested value costs little to show.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist = 2, 4, 4
_SHORT.maxstring = _SHORT.maxother = 60


def mask_emails(text: str) -> str:
    """Replace every email address in the text by its masked form."""
    return (_EMAIL_RE if '"@' in text else _DOT_ATOM_RE).sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    groups = match.groupdict()
    shown = groups.get("open") or groups["quote"] + groups["first"]
    return f"{shown}***@{match['domain']}"


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

"""The events list's filters, read from a query string or a form: each bad value is a
clear 400 naming the parameter."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...core import timespec
from ...core.outcomes import DEAD, State
from ...ledger.base import Browse

PAGE = 50
NAME_MAX = 200
DEAD_WORD = "dead"  # every dead-letter kind at once


class BadFilter(ValueError):
    """A filter value the list cannot use; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class Filters:
    state: str = ""
    mapping: str = ""
    since: str = ""
    q: str = ""

    def args(self) -> dict[str, str]:
        """The filters as query arguments (the empty ones left out)."""
        pairs = (("state", self.state), ("mapping", self.mapping), ("since", self.since))
        return {k: v for k, v in (*pairs, ("q", self.q)) if v}

    def states(self) -> frozenset[State] | None:
        if not self.state:
            return None
        return DEAD if self.state == DEAD_WORD else frozenset({State(self.state)})

    def browse(self, now: float, *, after: tuple[float, str, str] | None, limit: int) -> Browse:
        return Browse(
            states=self.states(),
            mapping=self.mapping or None,
            since=timespec.since(self.since, now) if self.since else None,
            search=self.q or None,
            after=after,
            limit=limit,
        )


STATE_WORDS = (DEAD_WORD, *(s.value for s in State))


def read(values: Mapping[str, str], now: float) -> Filters:
    """The filters in ``values``, checked; ``BadFilter`` naming the first bad one."""
    state = values.get("state", "").strip()
    if state and state not in STATE_WORDS:
        raise BadFilter(f"state: {state[:NAME_MAX]!r} is not one of {', '.join(STATE_WORDS)}")
    found = Filters(
        state=state,
        mapping=_text(values, "mapping"),
        since=values.get("since", "").strip(),
        q=_text(values, "q"),
    )
    if found.since:
        try:
            timespec.since(found.since, now)
        except ValueError as exc:
            raise BadFilter(f"since: {found.since[:NAME_MAX]!r} is not {exc}") from None
    return found


def _text(values: Mapping[str, str], name: str) -> str:
    text = values.get(name, "").strip()
    if len(text) > NAME_MAX:
        raise BadFilter(f"{name}: {len(text)} characters, at most {NAME_MAX}")
    if any(ord(c) < 32 for c in text):
        raise BadFilter(f"{name}: holds a control character")
    return text


def cursor(key: tuple[float, str, str]) -> str:
    """A page's end as an opaque, URL-safe word."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def after(word: str | None) -> tuple[float, str, str] | None:
    if not word:
        return None
    try:
        raw: Any = json.loads(base64.urlsafe_b64decode(word + "=" * (-len(word) % 4)))
    except (binascii.Error, ValueError):
        raw = None
    if (
        isinstance(raw, list)
        and len(raw) == 3
        and isinstance(raw[0], int | float)
        and not isinstance(raw[0], bool)
        and isinstance(raw[1], str)
        and isinstance(raw[2], str)
    ):
        return (float(raw[0]), raw[1], raw[2])
    raise BadFilter("after: not a page marker from this list (start again from page one)")

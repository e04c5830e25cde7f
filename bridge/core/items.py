"""What a reader of events hands the engine: an event as read, or what stands in for one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Item:
    """One event as read, with the warnings of text repaired on the way."""

    event: Any
    notes: tuple[str, ...] = ()


class Unreadable:
    """Stands in for an event that could not be read; the engine reports it invalid."""

    __slots__ = ("message", "where")

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

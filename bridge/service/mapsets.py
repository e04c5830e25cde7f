"""Publishing and rolling back mapping sets: one code path for ``bridge mappings`` and the
console.

A publish validates a folder's files, keeps them in the ledger's database and activates
them; a rollback activates an earlier published set. Either reads the active set back:
a success reported is one every instance that follows the database switches to.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BridgeError
from ..ledger import Ledger
from ..mapping.loader import load_texts
from .mapping_files import read_directory

AUTHOR_MAX, MESSAGE_MAX = 100, 500
# Controls, formats, lone surrogates (no UTF-8 for them), line and paragraph separators.
UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class BadText(ValueError):
    """An author or message that is not one short line of text (names the option)."""


class ActivationError(BridgeError):
    """A rollback names no published set, or the activation did not take."""

    code = "activation_failed"


@dataclass(frozen=True, slots=True)
class Published:
    version: str
    mappings: int
    files: int


def one_line(option: str, value: str, most: int) -> str:
    """``value`` stripped, or ``BadText``: empty, too long, or holding a control character."""
    text = value.strip()
    if not text:
        raise BadText(f"{option}: is empty")
    if len(text) > most:
        raise BadText(f"{option}: is {len(text)} characters long, at most {most}")
    if any(unicodedata.category(c) in UNPRINTABLE for c in text):
        raise BadText(f"{option}: holds a control character: one line of text, please")
    return text


def activate(ledger: Ledger, version: str, origin: str, author: str, why: str | None) -> None:
    """Record the activation and read back that it is the active set."""
    ledger.activate_mapping_set(version, origin, author=author, message=why)
    active = ledger.active_mapping_set()
    if active is None or active.version != version:
        now = "none" if active is None else active.version
        raise ActivationError(f"recorded, but the active set is {now}, not {version}: try again")


def publish(ledger: Ledger, folder: Path, author: str, why: str | None) -> Published:
    """Validate ``folder``'s files (``MappingFileError`` listing every problem) and make them
    the active set."""
    sources = read_directory(folder)
    engine = load_texts(sources, where=str(folder)).engine
    files = [(s.basename, s.text.decode("utf-8", "replace")) for s in sources]
    ledger.keep_mapping_set(engine.version, files, "publish")
    activate(ledger, engine.version, "publish", author, why)
    return Published(engine.version, len(engine), len(files))


def published_version(ledger: Ledger, prefix: str) -> str:
    """The one published version that starts with ``prefix``, or ``ActivationError``."""
    candidates = {a.version for a in ledger.activations(1000) if a.version.startswith(prefix)}
    if len(candidates) != 1 or not prefix:
        known = "none matches" if not candidates else f"{len(candidates)} match"
        raise ActivationError(f"version {prefix!r}: {known}; see `bridge mappings history`")
    (chosen,) = candidates
    return chosen


def rollback(ledger: Ledger, prefix: str, author: str, why: str | None) -> str:
    """Make an earlier published set (its version, or a unique start of it) active again."""
    chosen = published_version(ledger, prefix)
    activate(ledger, chosen, "rollback", author, why)
    return chosen

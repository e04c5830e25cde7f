"""The delivery ledger: every (messageId, mapping) the bridge handles, and where it stands.

``open_ledger`` is the only place a backend is chosen and built. The backends
implement ``Ledger`` (``base.py``) and pass one contract test suite.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from ..clock import SYSTEM, Clock
from ..errors import LedgerConfigError, LedgerError
from ..settings import Settings
from .base import Claim, ClaimRequest, LeadStatus, Ledger, Row
from .memory import MemoryLedger
from .sqlite import SQLiteLedger

__all__ = [
    "Access",
    "Claim",
    "ClaimRequest",
    "LeadStatus",
    "Ledger",
    "Row",
    "open_ledger",
]

_SQLITE_HEADER = b"SQLite format 3\x00"


class Access(StrEnum):
    CREATE = "create"  # the service and `replay --send`: created when missing
    WRITE = "write"  # redrive, `db upgrade`: must exist, will be written
    READ = "read"  # deadletters, `db status`: must exist, never written


def open_ledger(
    settings: Settings,
    access: Access = Access.CREATE,
    *,
    clock: Clock = SYSTEM,
    background: bool = False,
) -> Ledger | None:
    """The ledger the settings name, or None with ``BRIDGE_LEDGER=off``.

    Raises ``LedgerConfigError`` (one line naming the setting) when the setting points
    at something that is not a usable ledger; nothing is created or changed then.
    ``background``: the caller runs ``maintain()`` off the request path.
    """
    if settings.ledger == "off":
        return None
    if settings.ledger == "memory":
        return MemoryLedger(lease_seconds=settings.lease_seconds, clock=clock)
    path = _checked_sqlite_path(settings.db_path, access)
    where = f"BRIDGE_DB={path}"
    try:
        if access is not Access.CREATE:
            # Look before writing anything: even switching to WAL mode changes the file.
            probe = SQLiteLedger(path, clock=clock, readonly=True)
            try:
                _check_schema(probe, where, writing=access is Access.WRITE)
            finally:
                probe.close()
        return SQLiteLedger(
            path,
            lease_seconds=settings.lease_seconds,
            clock=clock,
            readonly=access is Access.READ,
            background_checkpoints=background,
        )
    except LedgerError as exc:
        raise LedgerConfigError(f"{where}: cannot be used as a ledger: {exc.message}") from exc


def _check_schema(ledger: SQLiteLedger, where: str, *, writing: bool) -> None:
    status = ledger.schema()
    if status.current == 0 and not ledger.has_table("deliveries"):
        raise LedgerConfigError(f"{where}: is a SQLite database, but holds no ledger")
    if not status.up_to_date and not writing:
        raise LedgerConfigError(f"{where}: {status.describe()}: run `bridge db upgrade`")


def _checked_sqlite_path(path: Path, access: Access) -> Path:
    where = f"BRIDGE_DB={path}"
    if not path.parent.is_dir():
        raise LedgerConfigError(f"{where}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise LedgerConfigError(f"{where}: is a folder, not a ledger file")
    if not path.exists():
        if access is Access.CREATE:
            return path
        raise LedgerConfigError(
            f"{where}: no ledger there (the file does not exist; the service or "
            "`bridge replay --send` creates it): is BRIDGE_DB right?"
        )
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise LedgerConfigError(f"{where}: cannot be read: {exc.strerror}") from exc
    if header and header != _SQLITE_HEADER:
        raise LedgerConfigError(f"{where}: is not a SQLite database (left untouched)")
    if not header and access is not Access.CREATE:
        raise LedgerConfigError(f"{where}: is an empty file, not a ledger")
    # Write permission bits, not os.access: the operator's read-only mark holds for root too.
    if access is not Access.READ and not (path.stat().st_mode & 0o222 and os.access(path, os.W_OK)):
        raise LedgerConfigError(f"{where}: is read-only, and this command writes to the ledger")
    return path

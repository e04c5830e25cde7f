"""The delivery ledger: every (messageId, mapping) the bridge handles, and where it stands.

``open_ledger`` is the only place a backend is chosen and built: PostgreSQL when
``DATABASE_URL`` is set, else the SQLite file ``BRIDGE_DB``, or memory or none as
``BRIDGE_LEDGER`` says. The backends implement ``Ledger`` (``base.py``) and pass
one contract test suite.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from ..core.clock import SYSTEM, Clock
from ..core.errors import LedgerConfigError, LedgerError
from ..core.settings import Settings
from .base import VOUCH_MARGIN, Claim, ClaimRequest, LeadStatus, Ledger, Retention, Row, Sighting
from .memory import MemoryLedger
from .sql import SQLLedger
from .sqlite import SQLiteLedger

__all__ = [
    "Access",
    "Claim",
    "ClaimRequest",
    "LeadStatus",
    "Ledger",
    "Retention",
    "Row",
    "Sighting",
    "open_ledger",
    "retention_of",
]

_SQLITE_HEADER = b"SQLite format 3\x00"


class Access(StrEnum):
    CREATE = "create"  # the service, `replay --send`, `db upgrade`: created and migrated
    WRITE = "write"  # redrive: must exist, migrated, will be written
    READ = "read"  # deadletters: must exist and be current, never written
    SCHEMA = "schema"  # `db status`: may be empty or behind, never written
    MIGRATE = "migrate"  # `db upgrade`: created when missing; the caller applies migrations


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
    url = settings.postgres_url
    if url is not None:
        # psycopg is loaded only where a database URL asks for it: a fifth of start-up.
        from .postgres import PostgresLedger

        where = "DATABASE_URL"
        return _opened(
            where,
            access,
            lambda readonly: PostgresLedger(
                url,
                lease_seconds=settings.lease_seconds,
                clock=clock,
                pool_size=settings.pool_size,
                timeout=settings.db_timeout,
                readonly=readonly,
            ),
        )
    path = _checked_sqlite_path(settings.db_path, access)
    return _opened(
        f"BRIDGE_DB={path}",
        access,
        lambda readonly: SQLiteLedger(
            path,
            lease_seconds=settings.lease_seconds,
            clock=clock,
            readonly=readonly,
            background_checkpoints=background,
        ),
    )


def _opened(where: str, access: Access, build: Callable[[bool], SQLLedger]) -> SQLLedger:
    """Build the backend; look before writing anything (even switching SQLite to WAL mode
    changes the file), and migrate only where this access writes."""
    readonly = access in (Access.READ, Access.SCHEMA)
    try:
        if access in (Access.READ, Access.WRITE):
            probe = build(True)
            try:
                _check(probe, where, must_be_current=access is Access.READ)
            finally:
                probe.close()
        ledger = build(readonly)
    except LedgerError as exc:
        raise LedgerConfigError(f"{where}: {exc.message}") from exc
    if readonly or access is Access.MIGRATE:
        return ledger
    try:
        ledger.upgrade()
    except LedgerError as exc:
        ledger.close()
        raise LedgerConfigError(f"{where}: cannot be used as a ledger: {exc.message}") from exc
    return ledger


def _check(ledger: SQLLedger, where: str, *, must_be_current: bool) -> None:
    status = ledger.schema()
    if status.current == 0 and not ledger.has_table("deliveries"):
        kind = "SQLite" if ledger.kind == "sqlite" else "PostgreSQL"
        raise LedgerConfigError(f"{where}: is a {kind} database, but holds no ledger")
    if must_be_current and not status.up_to_date:
        raise LedgerConfigError(f"{where}: {status.describe()}: run `bridge db upgrade`")


def _checked_sqlite_path(path: Path, access: Access) -> Path:
    where = f"BRIDGE_DB={path}"
    if not path.parent.is_dir():
        raise LedgerConfigError(f"{where}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise LedgerConfigError(f"{where}: is a folder, not a ledger file")
    creates = access in (Access.CREATE, Access.MIGRATE)
    if not path.exists():
        if creates:
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
    if not header and not creates:
        raise LedgerConfigError(f"{where}: is an empty file, not a ledger")
    # Write permission bits, not os.access: the operator's read-only mark holds for root too.
    writes = access in (Access.CREATE, Access.WRITE, Access.MIGRATE)
    if writes and not (path.stat().st_mode & 0o222 and os.access(path, os.W_OK)):
        raise LedgerConfigError(f"{where}: is read-only, and this command writes to the ledger")
    return path


def retention_of(settings: Settings) -> Retention:
    return Retention(
        give_up_after=settings.outbox_max_age_hours * 3600,
        settled=settings.retention_days * 86400,
        dead=settings.dead_letter_retention_days * 86400,
        signatures=settings.max_event_age_days * 86400 + VOUCH_MARGIN,
    )

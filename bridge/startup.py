"""What must hold before a process serves: checked once, in gunicorn's master, and by
``bridge check`` (a platform's release phase).

Each problem is one line naming the setting. Invalid mapping files stop the start
only when there is nothing good to fall back on: with a last good set kept in the
ledger (or a published one, for instances that follow the database), the workers
start from it, degraded, and the problem is a warning. Nothing here leaves a thread,
a pool or a connection behind, so gunicorn can fork its workers afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import BridgeError, ConfigError, MappingFileError
from .ledger import Access, Ledger, open_ledger
from .settings import Settings
from .sources import load_directory
from .wiring import (
    UNSIGNED_WARNING,
    WEBHOOK_OFF,
    require_api_key,
    require_ledger_choice,
    require_signing,
)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # the service must not start
    warnings: list[str] = field(default_factory=list)  # it starts, and says so

    @property
    def ok(self) -> bool:
        return not self.problems


def check(settings: Settings, *, migrate: bool = True) -> Report:
    """Every start-up problem, one line each. ``migrate``: apply pending migrations (the
    master does); else a schema behind is a problem (``bridge check``)."""
    report = Report()
    for required in (require_api_key, require_signing):
        try:
            required(settings)
        except ConfigError as exc:
            report.problems.append(exc.message)
    if settings.unsigned and settings.allow_unsigned:
        report.warnings.append(UNSIGNED_WARNING)
    elif settings.webhook_off:
        report.warnings.append(WEBHOOK_OFF)
    ledger: Ledger | None = None
    try:
        require_ledger_choice(settings)  # before a default SQLite file could be made
        ledger = open_ledger(settings, Access.CREATE if migrate else Access.READ)
    except BridgeError as exc:
        report.problems.append(exc.message)
    try:
        _check_mappings(settings, ledger, report)
    finally:
        if ledger is not None:
            ledger.close()
    return report


def _check_mappings(settings: Settings, ledger: Ledger | None, report: Report) -> None:
    where = f"BRIDGE_MAPPINGS_DIR={settings.mappings_dir}"
    try:
        engine = load_directory(settings.mappings_dir).engine
    except MappingFileError as exc:
        fallback = _fallback(settings, ledger)
        first = f"{where}: {len(exc.issues)} error(s): {exc.issues[0]}"
        if fallback is None:
            report.problems.append(first + " (and no last good mapping set to start from)")
        else:
            report.warnings.append(first + f"; starting from mapping set {fallback}")
        return
    if len(engine) == 0:
        report.problems.append(f"{where}: holds no mapping")


def _fallback(settings: Settings, ledger: Ledger | None) -> str | None:
    """The version workers would start from instead of the files, if any."""
    if ledger is None or not ledger.shared_across_processes:
        return None
    try:
        kept = (
            ledger.active_mapping_set() if settings.mappings_source == "database" else None
        ) or ledger.last_good_mapping_set()
    except BridgeError:
        return None
    return None if kept is None else kept.version

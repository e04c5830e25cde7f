"""What must hold before a process serves: checked once, in gunicorn's master, and by
``bridge check`` (a platform's release phase).

Each problem is one line naming the setting. Mappings that cannot be loaded stop the
start only when there is nothing this release can load instead: invalid files with a
last good set kept in the ledger, or a published set this release cannot load with an
earlier one it can, start degraded, and the problem is a warning. The release phase
(``release``) is stricter where a deploy can still be stopped: a schema behind says to
run ``bridge db upgrade``, and an active published set this release cannot load is a
problem (the release running now can load it). Nothing here leaves a thread, a pool or
a connection behind, so gunicorn can fork its workers afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..core.errors import BridgeError, ConfigError, MappingFileError
from ..core.settings import Settings
from ..ledger import Access, Ledger, open_ledger
from .mapping_files import load_directory
from .store import PUBLISHED, Degraded, choose_start
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


def plain_http_warning(url: str) -> str | None:
    """DUB_API_URL over plain http to a host other than this machine: Dub's API is https, and
    the bridge follows no redirect (each call would be answered 3xx and rejected)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname in ("localhost", "127.0.0.1", "::1"):
        return None
    return (
        f"DUB_API_URL is plain http ({parts.hostname}): Dub's API is https, and a redirect to"
        " it is not followed (every call would become a rejected dead letter)"
    )


def check(settings: Settings, *, release: bool = False) -> Report:
    """Every start-up problem, one line each. The master applies pending migrations;
    ``release`` (``bridge check``) changes nothing and is stricter (see above)."""
    report = Report()
    for required in (require_api_key, require_signing):
        try:
            required(settings)
        except ConfigError as exc:
            report.problems.append(exc.message)
    plain = plain_http_warning(settings.dub_api_url)
    if plain is not None:
        report.warnings.append(plain)
    if settings.unsigned and settings.allow_unsigned:
        report.warnings.append(UNSIGNED_WARNING)
    elif settings.webhook_off:
        report.warnings.append(WEBHOOK_OFF)
    ledger: Ledger | None = None
    try:
        require_ledger_choice(settings)  # before a default SQLite file could be made
        ledger = open_ledger(settings, Access.SCHEMA if release else Access.CREATE)
    except BridgeError as exc:
        report.problems.append(exc.message)
    try:
        if ledger is not None and release and not _schema_current(settings, ledger, report):
            ledger.close()
            ledger = None  # its mapping tables may not be there yet
        _check_mappings(settings, ledger, report, release=release)
    finally:
        if ledger is not None:
            ledger.close()
    return report


def _schema_current(settings: Settings, ledger: Ledger, report: Report) -> bool:
    where = "DATABASE_URL" if settings.postgres_url is not None else f"BRIDGE_DB={settings.db_path}"
    try:
        status = ledger.schema()
    except BridgeError as exc:
        report.problems.append(f"{where}: {exc.message}")
        return False
    if not status.up_to_date:
        report.problems.append(f"{where}: {status.describe()}: run `bridge db upgrade`")
    return status.up_to_date


def _check_mappings(
    settings: Settings, ledger: Ledger | None, report: Report, *, release: bool
) -> None:
    where = f"BRIDGE_MAPPINGS_DIR={settings.mappings_dir}"
    try:
        start = choose_start(
            settings.mappings_source, ledger, lambda: load_directory(settings.mappings_dir).engine
        )
    except MappingFileError as exc:
        first = exc.issues[0] if exc.issues else exc.message
        if str(first).startswith(PUBLISHED):
            report.problems.append(str(first))
        else:
            report.problems.append(
                f"{where}: {len(exc.issues)} error(s): {first}"
                " (and no last good mapping set to start from)"
            )
        return
    if start.cause is Degraded.PUBLISHED_UNLOADABLE:
        line = f"{PUBLISHED}: {start.problem}; starting from {start.starting_from}"
        (report.problems if release else report.warnings).append(line)
    elif start.cause is Degraded.FILES_REJECTED and start.problem is not None:
        errors = start.problem.splitlines()
        report.warnings.append(
            f"{where}: {len(errors)} error(s): {errors[0]}; starting from {start.starting_from}"
        )
    if len(start.engine) == 0:
        report.problems.append(f"{where}: holds no mapping")

"""What must hold before a process serves: checked once, in gunicorn's master, and by
``bridge check`` (a platform's release phase).

Each problem is one line naming the setting; nothing here leaves a thread, a pool
or a connection behind, so gunicorn can fork its workers afterwards.
"""

from __future__ import annotations

from .errors import BridgeError, ConfigError, MappingFileError
from .ledger import Access, open_ledger
from .settings import Settings
from .sources import load_directory
from .wiring import require_api_key


def check(settings: Settings) -> list[str]:
    """Every start-up problem, one line each; applies pending ledger migrations."""
    problems: list[str] = []
    try:
        require_api_key(settings)
    except ConfigError as exc:
        problems.append(exc.message)
    try:
        engine = load_directory(settings.mappings_dir).engine
    except MappingFileError as exc:
        problems.append(f"BRIDGE_MAPPINGS_DIR={settings.mappings_dir}: invalid mappings")
        problems += [f"  {issue}" for issue in exc.issues]
    else:
        if len(engine) == 0:
            problems.append(f"BRIDGE_MAPPINGS_DIR={settings.mappings_dir}: holds no mapping")
    try:
        ledger = open_ledger(settings, Access.CREATE)
    except BridgeError as exc:
        problems.append(exc.message)
    else:
        if ledger is not None:
            ledger.close()
    return problems

"""What every command shares: settings read once, and errors as one line with an exit code.

Exit codes: 0 fine; 1 the work found problems (invalid events, mapping errors,
dead letters left); 2 a usage or configuration problem (a bad setting, a ledger
setting that points at no ledger), always one line, never a traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from ..core import timespec
from ..core.errors import BridgeError, ConfigError, MappingFileError
from ..core.settings import Settings
from ..ledger import Access, Ledger, open_ledger
from ..mapping.engine import Engine
from ..service.mapping_files import load_directory

USAGE = 2
PROBLEMS = 1


def fail(message: str, code: int = USAGE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Boundary(click.Group):
    """The command line's one error boundary: a ``BridgeError`` raised by any command ends
    it as one line (every mapping error, for a mapping set), exit 2 for a configuration
    problem and 1 for any other; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MappingFileError as exc:
            click.echo(str(exc), err=True)
            sys.exit(PROBLEMS)
        except BridgeError as exc:
            configured(exc)


@contextmanager
def ledger_for(config: Settings, access: Access, *, purpose: str = "to read") -> Iterator[Ledger]:
    """The ledger the settings name, closed afterwards; exit 2 when there is none."""
    ledger = open_ledger(config, access)
    if ledger is None:
        fail(f"BRIDGE_LEDGER=off: there is no ledger {purpose}")
    try:
        yield ledger
    finally:
        ledger.close()


def settings(**overrides: Any) -> Settings:
    """The settings from the environment; a bad value ends the command with exit 2."""
    try:
        return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(exc.message)


def settings_for(mappings: str | None) -> Settings:
    return settings(mappings_dir=Path(mappings) if mappings else None)


def engine_of(config: Settings) -> Engine:
    """The compiled mappings; every mapping error printed and exit 1 when any (the
    boundary's rule for ``MappingFileError``)."""
    return load_directory(config.mappings_dir).engine


def configured(exc: BridgeError) -> NoReturn:
    """End on a configuration error (exit 2) or any other bridge error (exit 1)."""
    fail(exc.message, USAGE if isinstance(exc, ConfigError) else PROBLEMS)


def parse_since(text: str | None) -> float | None:
    """An ISO date/time, or an age such as 30m, 12h, 7d."""
    if text is None:
        return None
    try:
        return timespec.since(text, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


since_option = click.option(
    "--since", help="Only those last touched since: ISO time or age (12h, 7d)."
)
mapping_option = click.option("--mapping", "mapping", help="Only this mapping.")
mappings_option = click.option(
    "--mappings", type=click.Path(file_okay=False), help="Mapping directory to use."
)

"""``bridge db status`` and ``bridge db upgrade``: the ledger's schema, for a release phase."""

from __future__ import annotations

import sys

import click

from ..errors import BridgeError
from ..ledger import Access, open_ledger
from .common import PROBLEMS, configured, fail, settings


@click.group()
def db() -> None:
    """The ledger's database: its schema version and migrations."""


def _open(access: Access):  # type: ignore[no-untyped-def]
    config = settings()
    try:
        ledger = open_ledger(config, access)
    except BridgeError as exc:
        configured(exc)
    if ledger is None:
        fail("BRIDGE_LEDGER=off: there is no ledger")
    return config, ledger


@db.command()
def status() -> None:
    """Show where the ledger is, its schema version, pending migrations and rows by state."""
    config, ledger = _open(Access.SCHEMA)
    try:
        schema = ledger.schema()
        counts = ledger.counts() if schema.up_to_date else {}
    except BridgeError as exc:
        configured(exc)
    finally:
        ledger.close()
    where = (
        "memory"
        if ledger.kind == "memory"
        else getattr(ledger, "where", None) or str(config.db_path)
    )
    click.echo(f"ledger: {ledger.kind} at {where}")
    click.echo(schema.describe())
    if counts:
        click.echo("rows: " + ", ".join(f"{state} {n}" for state, n in sorted(counts.items())))
    sys.exit(0 if schema.up_to_date else PROBLEMS)


@db.command()
def upgrade() -> None:
    """Apply pending migrations (safe to run from several instances at once)."""
    _, ledger = _open(Access.MIGRATE)
    try:
        applied = ledger.upgrade()
        after = ledger.schema()
    except BridgeError as exc:
        configured(exc)
    finally:
        ledger.close()
    for migration in applied:
        click.echo(f"applied {migration.version}: {migration.name}")
    click.echo(after.describe())


COMMANDS = [db]

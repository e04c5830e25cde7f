"""``bridge db status`` and ``bridge db upgrade``: the ledger's schema, for a release phase."""

from __future__ import annotations

import sys
import time

import click

from ..ledger import Access
from .common import PROBLEMS, ledger_for, settings


@click.group()
def db() -> None:
    """The ledger's database: its schema version and migrations."""


@db.command()
def status() -> None:
    """Show where the ledger is, its schema version, pending migrations and rows by state."""
    config = settings()
    with ledger_for(config, Access.SCHEMA) as ledger:
        schema = ledger.schema()
        counts = ledger.counts() if schema.up_to_date else {}
        queue = ledger.queue_status() if schema.up_to_date else None
        now = time.time()  # the ledger's times are the system clock's
    where = (
        "memory"
        if ledger.kind == "memory"
        else getattr(ledger, "where", None) or str(config.db_path)
    )
    click.echo(f"ledger: {ledger.kind} at {where}")
    click.echo(schema.describe())
    if counts:
        click.echo("rows: " + ", ".join(f"{state} {n}" for state, n in sorted(counts.items())))
    if queue is not None:
        waited = 0.0 if queue.oldest is None else max(0.0, now - queue.oldest)
        click.echo(
            f"outbox queue: {queue.depth} rows, the oldest waiting {waited:.0f} s,"
            f" {queue.sent_last_minute} sent in the last minute"
        )
    sys.exit(0 if schema.up_to_date else PROBLEMS)


@db.command()
def upgrade() -> None:
    """Apply pending migrations (safe to run from several instances at once)."""
    with ledger_for(settings(), Access.MIGRATE, purpose="to upgrade") as ledger:
        applied = ledger.upgrade()
        after = ledger.schema()
    for migration in applied:
        click.echo(f"applied {migration.version}: {migration.name}")
    click.echo(after.describe())


COMMANDS = [db]

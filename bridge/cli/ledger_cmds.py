"""``bridge deadletters`` and ``bridge redrive``: what needs a person, and sending it again."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from ..core import logs
from ..core.jsoncodec import dumps_exact, dumps_str
from ..core.outcomes import NEEDS_PERSON, RETRY
from ..ledger import Access
from ..ledger.base import Attempt
from ..service.redrive import redrive as run_redrive
from ..service.wiring import build_deliverer
from .common import (
    engine_of,
    ledger_for,
    mapping_option,
    mappings_option,
    parse_since,
    settings,
    settings_for,
    since_option,
)


@click.command()
@mapping_option
@since_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deadletters(mapping: str | None, since: str | None, as_json: bool) -> None:
    """List events that need a person: invalid, rejected, uncertain, given up, unverified
    (with --json, each with its payload, and its calls with Dub's answers)."""
    after = parse_since(since)
    with ledger_for(settings(), Access.READ) as ledger:
        rows = ledger.dead_letters(mapping=mapping, since=after)
        # With --json, each row's calls and Dub's answers (the last 20 the ledger keeps).
        calls: dict[str, list[Attempt]] = {}
        for message_id in {r.message_id for r in rows} if as_json else ():
            calls[message_id] = ledger.attempts_of(message_id)
    for row in rows:
        if as_json:
            line = row.to_dict()
            line["payload"] = row.payload
            line["calls"] = [a.to_dict() for a in calls[row.message_id] if a.mapping == row.mapping]
            click.echo(dumps_exact(line))  # NaN or 1e400 shown as received
        else:
            when = datetime.fromtimestamp(row.updated_at).isoformat(timespec="seconds")
            error = dumps_str(row.error) if row.error is not None else ""
            click.echo(
                f"{when}  {row.state:<9} {row.mapping:<20} {row.message_id}  "
                f"status={row.status}  {error[:160]}"
            )
    if not as_json:
        click.echo(f"{len(rows)} dead letter(s)", err=True)


@click.command()
@mapping_option
@since_option
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send nothing.")
@click.option(
    "--include-unverified",
    is_flag=True,
    help="Also send `unverified` dead letters (no signature vouched for them; perhaps "
    "forged), each line saying what differs from a verified copy of its messageId.",
)
@mappings_option
def redrive(
    mapping: str | None,
    since: str | None,
    dry_run: bool,
    include_unverified: bool,
    mappings: str | None,
) -> None:
    """Run dead letters again through the current mappings; report what changed.

    `unverified` dead letters are left alone unless --include-unverified names them."""
    after = parse_since(since)
    config = settings_for(mappings)
    engine = engine_of(config)
    with ledger_for(config, Access.READ if dry_run else Access.WRITE) as ledger:
        deliverer = None
        try:
            if not dry_run:
                logs.configure(config.log_level)
                deliverer = build_deliverer(config, ledger)
            changes = run_redrive(
                engine,
                ledger,
                deliverer,
                mapping=mapping,
                since=after,
                budget=config.cli_budget_seconds,
                include_unverified=include_unverified,
            )
        finally:
            if deliverer is not None:
                deliverer.close()
    still_bad = False
    for line in changes:
        still_bad |= line["outcome"] in NEEDS_PERSON or line["outcome"] in RETRY
        click.echo(dumps_str(line))
    sys.exit(1 if still_bad else 0)


COMMANDS = [deadletters, redrive]

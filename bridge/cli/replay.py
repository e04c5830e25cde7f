"""``bridge replay``: saved Segment events through the mappings, one JSON line each."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from .. import logs
from ..errors import BridgeError
from ..inputs import Item, read_file
from ..jsoncodec import dumps_str
from ..ledger import Access, open_ledger
from ..mapping.batch import plan_all
from ..outcomes import NEEDS_PERSON, RETRY, Outcome
from ..wiring import build_deliverer
from .common import configured, engine_of, mappings_option, settings_for
from .summary import Progress, Summary

CHUNK = 100  # events sent together (concurrently) by --send


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--dry-run/--send",
    "dry_run",
    default=True,
    show_default=True,
    help="Print what would be sent (no API key needed), or send it to Dub.",
)
@mappings_option
@click.option(
    "--accept-old",
    is_flag=True,
    help="With --send: also send events older than BRIDGE_MAX_EVENT_AGE_DAYS (a backfill; "
    "the ledger no longer remembers whether they were sent).",
)
def replay(files: tuple[Path, ...], dry_run: bool, mappings: str | None, accept_old: bool) -> None:
    """Run saved Segment events through the mappings; one JSON line per event and mapping."""
    config = settings_for(mappings)
    engine = engine_of(config)
    deliverer = None
    if not dry_run:
        try:
            logs.configure(config.log_level)
            deliverer = build_deliverer(config, open_ledger(config, Access.CREATE))
        except BridgeError as exc:
            configured(exc)
    bad = False
    progress, summary = Progress(sys.stderr), Summary()
    # Sending, like the webhook, refuses what the ledger can no longer de-duplicate.
    old = None if dry_run or accept_old else time.time() - config.max_event_age_days * 86400
    try:
        for chunk in _chunks(_items(files)):
            results, payloads = plan_all(engine, chunk, not_before=old)
            if deliverer is None:
                results = [
                    r.finish(Outcome.DRY_RUN) if r.outcome is Outcome.READY else r for r in results
                ]
            else:
                results = deliverer.deliver(results, config.cli_budget_seconds, payloads)
            for result in results:
                bad |= result.outcome in NEEDS_PERSON or result.outcome in RETRY
                click.echo(dumps_str(result.to_line()))
            summary.add(results, len(chunk))
            progress.advance(len(chunk))
    finally:
        progress.close()
        if deliverer is not None:
            deliverer.close()
            if deliverer.ledger is not None:
                deliverer.ledger.close()
    click.echo("\n".join(summary.lines()), err=True)
    sys.exit(1 if bad else 0)


def _items(files: tuple[Path, ...]) -> Iterator[Item]:
    for path in files:
        yield from read_file(path)


def _chunks(items: Iterator[Item]) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


COMMANDS = [replay]

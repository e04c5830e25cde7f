"""``bridge replay``: saved Segment events through the mappings, one JSON line each.

Files are streamed (``bridge.reader``): memory stays flat whatever their size, and each
chunk's lines are written, in input order, as soon as it is planned. A dry run plans
on ``--jobs`` processes (``replay_jobs``). Sending stays in this one process: every
call goes through the ledger and the shared rate limit, and Dub's rate limit, not the
planning, bounds how fast events can be sent.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import click

from ..core import logs
from ..core.items import Item
from ..core.jsoncodec import dumps
from ..core.outcomes import NEEDS_PERSON, RETRY, Outcome
from ..core.settings import Settings
from ..ledger import Access, open_ledger
from ..mapping.batch import plan_all
from ..mapping.engine import Engine
from ..reader import Record, Wait, decode, read_records
from ..service.wiring import build_deliverer
from .common import PROBLEMS, engine_of, fail, mappings_option, settings_for
from .replay_jobs import Done, WorkerFailed, dry_run
from .summary import Progress, Summary

CHUNK = 100  # events sent together (concurrently) by --send
SEND_IN_ONE = (
    "note: --jobs applies to --dry-run; --send plans and sends from one process (every call "
    "goes through the ledger and the shared rate limit)"
)


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--dry-run/--send",
    "dry_run_mode",
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
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Processes planning a dry run (default: the number of cores; 1: this process "
    "only). Output order is kept. --send always sends from one process.",
)
def replay(
    files: tuple[Path, ...],
    dry_run_mode: bool,
    mappings: str | None,
    accept_old: bool,
    jobs: int | None,
) -> None:
    """Run saved Segment events through the mappings; one JSON line per event and mapping."""
    config = settings_for(mappings)
    engine = engine_of(config)
    out = sys.stdout.buffer
    progress, summary = Progress(sys.stderr), Summary()

    def emit(done: Done) -> None:
        out.write(done.output)
        out.flush()  # each chunk is seen as soon as it is planned (a pipe, tail -f)
        summary.merge(done.tally)
        progress.advance(done.tally.events)

    records = (record for path in files for record in read_records(path))
    try:
        if dry_run_mode:
            dry_run(engine, records, jobs or cores(), config.mappings_dir, emit,
                    accept_dub_source=config.accept_dub_source)  # fmt: skip
        else:
            if jobs is not None and jobs > 1:
                click.echo(SEND_IN_ONE, err=True)
            _send(config, engine, records, accept_old, out, summary, progress)
    except WorkerFailed as exc:
        progress.close()
        fail(exc.message, PROBLEMS)
    finally:
        progress.close()
    click.echo("\n".join(summary.lines()), err=True)
    bad = any(Outcome(o) in NEEDS_PERSON or Outcome(o) in RETRY for o in summary.outcomes)
    sys.exit(1 if bad else 0)


def _send(
    config: Settings,
    engine: Engine,
    records: Iterable[Record | Wait],
    accept_old: bool,
    out: IO[bytes],
    summary: Summary,
    progress: Progress,
) -> None:
    logs.configure(config.log_level)
    deliverer = build_deliverer(config, open_ledger(config, Access.CREATE))
    # Sending, like the webhook, refuses what the ledger can no longer de-duplicate.
    max_age = None if accept_old else config.max_event_age_days * 86400
    try:
        for chunk in _item_chunks(records):
            now = time.time()
            not_before = None if max_age is None else now - max_age
            results, payloads = plan_all(
                engine,
                chunk,
                not_before=not_before,
                now=now,
                accept_dub_source=config.accept_dub_source,
            )
            results = deliverer.deliver(results, config.cli_budget_seconds, payloads)
            out.write(b"".join(dumps(result.to_line()) + b"\n" for result in results))
            out.flush()
            summary.add(results, len(chunk))
            progress.advance(len(chunk))
    finally:
        deliverer.close()
        if deliverer.ledger is not None:
            deliverer.ledger.close()


def _item_chunks(records: Iterable[Record | Wait]) -> Iterator[list[Item]]:
    """Events in chunks of ``CHUNK``; a pause of the input sends what it has."""
    chunk: list[Item] = []
    for record in records:
        if isinstance(record, Wait):
            if chunk:
                yield chunk
                chunk = []
            continue
        for item in decode(record):
            chunk.append(item)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


COMMANDS = [replay]

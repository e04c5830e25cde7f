"""The ``bridge`` command: serve, validate, replay, deadletters, redrive."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import logs
from .engine import Engine, plan_all
from .errors import BridgeError, ConfigError, MappingFileError
from .jsoncodec import dumps_str
from .ledger import SQLiteLedger
from .loader import load_mappings
from .replay_io import read_events
from .results import FAILED, RETRY
from .settings import Settings

CHUNK = 100  # events sent together (concurrently) by --send and redrive
CLI_BUDGET = 60.0  # seconds per chunk: no Segment timeout here, but still a bound


def _settings(mappings: str | None = None) -> Settings:
    overrides = {"mappings_dir": Path(mappings)} if mappings else {}
    return Settings.from_env(**overrides)


def _engine(settings: Settings) -> Engine:
    return load_mappings(settings.mappings_dir).engine


def _fail(exc: BridgeError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segment-dub-bridge")
def main() -> None:
    """Segment track events in, Dub conversions out."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Run the webhook locally (production runs gunicorn from the Procfile)."""
    from .app import create_app

    try:
        app = create_app(_settings())
    except BridgeError as exc:
        _fail(exc)
    app.run(host=host, port=port, threaded=True)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
def validate(directory: Path | None) -> None:
    """Check the mapping files in DIRECTORY (default: BRIDGE_MAPPINGS_DIR or mappings/)."""
    try:
        folder = directory or _settings().mappings_dir
    except BridgeError as exc:
        _fail(exc)
    result = load_mappings(folder, strict=False)
    for issue in result.issues:
        click.echo(str(issue), err=issue.severity == "error")
    if result.errors:
        click.echo(f"{len(result.errors)} error(s) in {folder}", err=True)
        sys.exit(1)
    click.echo(
        f"ok: {len(result.engine)} mapping(s) in {len(result.files)} file(s), "
        f"version {result.engine.version}, {len(result.warnings)} warning(s)"
    )


@main.command()
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
@click.option("--mappings", type=click.Path(file_okay=False), help="Mapping directory to use.")
def replay(files: tuple[Path, ...], dry_run: bool, mappings: str | None) -> None:
    """Run saved Segment events through the mappings; one JSON line per event and mapping."""
    try:
        settings = _settings(mappings)
        engine = _engine(settings)
        deliverer = None
        if not dry_run:
            from .app import build_deliverer

            logs.configure(settings.log_level)
            deliverer = build_deliverer(
                settings, SQLiteLedger(settings.db_path, lease_seconds=settings.lease_seconds)
            )
    except MappingFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except BridgeError as exc:
        _fail(exc)
    bad = False
    for chunk in _chunks(_all_events(files)):
        results, payloads = plan_all(engine, chunk)
        if deliverer is None:
            results = [r.finish("dry_run") if r.outcome == "ready" else r for r in results]
        else:
            results = deliverer.deliver(results, CLI_BUDGET, payloads)
        for result in results:
            bad |= result.outcome in FAILED or result.outcome in RETRY
            click.echo(dumps_str(result.to_line()))
    if deliverer is not None:
        deliverer.close()
    sys.exit(1 if bad else 0)


def _all_events(files: tuple[Path, ...]) -> Iterator[Any]:
    for path in files:
        yield from read_events(path)


def _chunks(events: Iterator[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for event in events:
        chunk.append(event)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def parse_since(text: str | None) -> float | None:
    """An ISO date/time, or an age such as 30m, 12h, 7d."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return time.time() - seconds
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            "an ISO date/time (2026-11-01T12:00) or an age (30m, 12h, 7d)"
        ) from None


_since = click.option("--since", help="Only those last touched since: ISO time or age (12h, 7d).")
_mapping = click.option("--mapping", "mapping", help="Only this mapping.")


@main.command()
@_mapping
@_since
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deadletters(mapping: str | None, since: str | None, as_json: bool) -> None:
    """List events that need a person: invalid, rejected, uncertain, given up."""
    settings = _settings()
    rows = SQLiteLedger(settings.db_path).dead_letters(mapping=mapping, since=parse_since(since))
    for row in rows:
        if as_json:
            line = row.to_dict()
            line["payload"] = row.payload
            click.echo(dumps_str(line))
        else:
            when = datetime.fromtimestamp(row.updated_at).isoformat(timespec="seconds")
            error = dumps_str(row.error) if row.error is not None else ""
            click.echo(
                f"{when}  {row.state:<9} {row.mapping:<20} {row.message_id}  "
                f"status={row.status}  {error[:160]}"
            )
    if not as_json:
        click.echo(f"{len(rows)} dead letter(s)", err=True)


@main.command()
@_mapping
@_since
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send nothing.")
@click.option("--mappings", type=click.Path(file_okay=False), help="Mapping directory to use.")
def redrive(mapping: str | None, since: str | None, dry_run: bool, mappings: str | None) -> None:
    """Run dead letters again through the current mappings; report what changed."""
    from .redrive import redrive as run_redrive

    try:
        settings = _settings(mappings)
        engine = _engine(settings)
        changes = run_redrive(
            settings, engine, mapping=mapping, since=parse_since(since), dry_run=dry_run
        )
    except MappingFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except (BridgeError, ConfigError) as exc:
        _fail(exc)
    still_bad = False
    for line in changes:
        still_bad |= line["outcome"] in FAILED or line["outcome"] in RETRY
        click.echo(dumps_str(line))
    sys.exit(1 if still_bad else 0)

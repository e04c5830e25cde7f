"""``bridge check``, and ``bridge mappings publish|history|rollback``: mappings for every instance.

``check`` runs the start-up checks of gunicorn's master without starting anything
(a release phase). ``mappings publish`` validates a folder of mapping files and
stores it in the ledger's database as the active set: every instance with
``BRIDGE_MAPPINGS_SOURCE=database`` switches to it within ``BRIDGE_RELOAD_SECONDS``.
"""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from ..core.errors import BridgeError, MappingFileError
from ..ledger import Access, Ledger, open_ledger
from ..mapping.loader import load_texts
from ..service import mapsets
from ..service.mapping_files import read_directory
from ..service.mapsets import AUTHOR_MAX, MESSAGE_MAX, ActivationError, BadText, one_line
from ..service.startup import check as startup_check
from .common import PROBLEMS, configured, fail, settings


@click.command()
def check() -> None:
    """Check settings, ledger (reachable, schema current) and mappings, as start-up does,
    and that this release can load the active published set (a release phase)."""
    report = startup_check(settings(), release=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in report.problems:
        click.echo(f"error: {problem}", err=True)
    if not report.ok:
        sys.exit(PROBLEMS)
    click.echo("ok: ready to start")


@click.group()
def mappings() -> None:
    """Mapping sets kept in the ledger's database, followed by every instance."""


def _ledger() -> Ledger:
    config = settings()
    try:
        ledger = open_ledger(config, Access.WRITE)
    except BridgeError as exc:
        configured(exc)
    if ledger is None or not ledger.shared_across_processes:
        fail("publishing mappings needs the ledger in a database (BRIDGE_LEDGER=on)")
    return ledger


def _who(author: str | None) -> str:
    """``--author``, else the OS user; one line, no control characters."""
    if author is None:
        try:
            author = getpass.getuser()
        except (OSError, KeyError):  # no login name, no passwd entry (a container)
            fail("cannot tell who is publishing (no OS user name): pass --author")
    return _one_line("--author", author, AUTHOR_MAX)


def _one_line(option: str, value: str, most: int) -> str:
    try:
        return one_line(option, value, most)
    except BadText as exc:
        fail(str(exc))


def _why(message: str | None) -> str | None:
    return None if message is None else _one_line("--message", message, MESSAGE_MAX)


_AUTHOR = click.option("--author", help="Who does it (default: the OS user).")
_MESSAGE = click.option("--message", "-m", help="Why, shown by `bridge mappings history`.")


@mappings.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@_AUTHOR
@_MESSAGE
def publish(directory: Path | None, author: str | None, message: str | None) -> None:
    """Validate DIRECTORY's mapping files (default: BRIDGE_MAPPINGS_DIR) and make them the
    active set of every instance that follows the database."""
    who, why = _who(author), _why(message)
    folder = directory or settings().mappings_dir
    try:
        # A folder that does not load is refused before the ledger is opened.
        load_texts(read_directory(folder), where=str(folder))
    except MappingFileError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"not published: {len(exc.issues)} error(s) in {folder}", err=True)
        sys.exit(PROBLEMS)
    ledger = _ledger()
    try:
        done = mapsets.publish(ledger, folder, who, why)
    except MappingFileError as exc:  # the folder changed in between
        click.echo(str(exc), err=True)
        sys.exit(PROBLEMS)
    except ActivationError as exc:
        fail(exc.message, PROBLEMS)
    except BridgeError as exc:
        configured(exc)
    finally:
        ledger.close()
    click.echo(f"published {done.version}: {done.mappings} mapping(s) from {done.files} file(s)")


@mappings.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
def history(limit: int) -> None:
    """The latest published and rolled-back sets, newest first, with who and why; `*` marks
    the active one."""
    ledger = _ledger()
    try:
        shown = ledger.activations(limit)
    except BridgeError as exc:
        configured(exc)
    finally:
        ledger.close()
    for index, activation in enumerate(shown):
        when = datetime.fromtimestamp(activation.activated_at, UTC)
        mark = "*" if index == 0 else " "
        line = f"{mark} {activation.version}  {activation.origin:<8} {when:%Y-%m-%d %H:%M:%S}Z"
        line += f"  {activation.author or '(unknown)'}"
        if activation.message:
            line += f"  {activation.message}"
        click.echo(line)
    if not shown:
        click.echo("nothing published yet", err=True)


@mappings.command()
@click.argument("version")
@_AUTHOR
@_MESSAGE
def rollback(version: str, author: str | None, message: str | None) -> None:
    """Make an earlier set (VERSION, or a unique start of it) active again."""
    who, why = _who(author), _why(message)
    ledger = _ledger()
    try:
        chosen = mapsets.rollback(ledger, version, who, why)
    except ActivationError as exc:
        fail(exc.message, PROBLEMS)
    except BridgeError as exc:
        configured(exc)
    finally:
        ledger.close()
    click.echo(f"rolled back to {chosen}")


COMMANDS = [check, mappings]

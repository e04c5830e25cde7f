"""``bridge diff``: what a change to the mappings changes, on saved events (a dry run).

Both mapping sets plan every event; only the events whose outcome or request changed
are shown, field by field. The base is a folder (``--base``) or the mapping folder as
it was at a git revision (``--base-rev``), read with ``git`` and never checked out.
``--summary`` tells the same as counts (outcome transitions per mapping, the amount sent
per currency, new invalid events), ``--json`` as one object per changed event and one
summary object. A skipped event whose reason alone changed is no change (the request
is the same); it is counted, and ``--reasons`` shows it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from ..core.errors import MappingFileError
from ..core.jsoncodec import dumps_str
from ..core.results import Result
from ..mapping.compare import MappingChange, Summary, mapping_changes
from ..mapping.engine import Engine
from ..mapping.loader import MappingText, load_texts
from ..reader import read_file
from ..service.mapping_files import load_directory
from .common import fail, mappings_option, settings_for


def _git(args: list[str], cwd: Path) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except OSError as exc:
        fail(f"--base-rev needs git: {exc.strerror}")
    if done.returncode != 0:
        fail(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def sources_at(directory: Path, rev: str) -> list[MappingText]:
    """The mapping files of ``directory`` as they were at git revision ``rev``."""
    if not directory.is_dir():
        fail(f"{directory} is not a directory of mapping files")
    top = Path(_git(["rev-parse", "--show-toplevel"], directory).decode().strip())
    relative = directory.resolve().relative_to(top.resolve()).as_posix()
    prefix = "" if relative == "." else relative + "/"
    listing = _git(["ls-tree", "-z", rev, "--", prefix or "."], top).split(b"\0")
    sources = []
    for entry in filter(None, listing):
        meta, _, name = entry.decode().partition("\t")
        if (
            meta.split()[1] == "blob"
            and name.endswith((".yaml", ".yml"))
            and "/" not in name[len(prefix) :]
        ):
            sources.append(MappingText(f"{rev}:{name}", _git(["show", f"{rev}:{name}"], top)))
    return sorted(sources, key=lambda s: s.name)


def _engine(sources: list[MappingText] | None, folder: Path, label: str) -> Engine:
    try:
        if sources is None:
            return load_directory(folder).engine
        return load_texts(sources, where=f"{label} {folder}").engine
    except MappingFileError as exc:
        click.echo(str(exc), err=True)
        fail(f"the {label} mappings do not load: nothing to compare")


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--base",
    type=click.Path(file_okay=False, path_type=Path),
    help="Mapping folder to compare with.",
)
@click.option("--base-rev", help="Compare with the mapping folder as it was at this git revision.")
@click.option(
    "--summary",
    is_flag=True,
    help="Counts instead of events: transitions per mapping, amounts, new invalid events.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per changed event, then a summary."
)
@click.option(
    "--reasons", is_flag=True, help="Also show skipped events whose reason alone changed."
)
@mappings_option
def diff(
    files: tuple[Path, ...],
    base: Path | None,
    base_rev: str | None,
    summary: bool,
    as_json: bool,
    reasons: bool,
    mappings: str | None,
) -> None:
    """Show the events of FILES whose Dub requests change from the base mappings to these."""
    if (base is None) == (base_rev is None):
        fail("give --base DIR or --base-rev REV (exactly one)")
    folder = settings_for(mappings).mappings_dir
    if base is not None and not base.is_dir():
        fail(f"--base {base} is not a directory of mapping files")
    old = _engine(sources_at(folder, base_rev) if base_rev else None, base or folder, "base")
    new = _engine(None, folder, "current")
    total = Summary()
    for path in files:
        for item in read_file(path):
            total.events += 1
            before, after = old.plan(item.event), new.plan(item.event)
            total.add_amounts(before, 0)
            total.add_amounts(after, 1)
            found = mapping_changes(before, after)
            message_id = before[0].message_id or "(no messageId)"
            total.add(message_id, found)
            shown = [c for c in found if reasons or not c.reason_only]
            if not shown or summary:
                continue
            if as_json:
                click.echo(dumps_str(_event_json(before[0], shown)))
            else:
                click.echo(f"{message_id} {before[0].event!r}")
                click.echo("\n".join(line for c in shown for line in c.lines()))
    if as_json:
        click.echo(dumps_str(total.to_json()))
    else:
        if summary:
            click.echo("\n".join(total.lines()))
        elif total.reason_only and not reasons:
            click.echo(
                f"{total.reason_only} skipped event(s) changed only their reason (--reasons)"
            )
        click.echo(f"{total.changed} of {total.events} event(s) changed")
    sys.exit(1 if total.changed else 0)


def _event_json(first: Result, found: list[MappingChange]) -> dict[str, Any]:
    """One changed event as ``--json`` prints it."""
    return {
        "messageId": first.message_id,
        "event": first.event,
        "mappings": {c.label: c.to_json() for c in found},
    }


COMMANDS = [diff]

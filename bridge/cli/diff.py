"""``bridge diff``: what a change to the mappings changes, on saved events (a dry run).

Both mapping sets plan every event; only the events whose outcome or request changed
are shown, field by field. The base is a folder (``--base``) or the mapping folder as
it was at a git revision (``--base-rev``), read with ``git`` and never checked out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from ..errors import MappingFileError
from ..mapping.compare import changes
from ..mapping.engine import Engine
from ..mapping.loader import Source, load_sources
from ..reader import read_file
from ..sources import load_directory
from .common import fail, mappings_option, settings_for


def _git(args: list[str], cwd: Path) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except OSError as exc:
        fail(f"--base-rev needs git: {exc.strerror}")
    if done.returncode != 0:
        fail(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def sources_at(directory: Path, rev: str) -> list[Source]:
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
            sources.append(Source(f"{rev}:{name}", _git(["show", f"{rev}:{name}"], top)))
    return sorted(sources, key=lambda s: s.name)


def _engine(sources: list[Source] | None, folder: Path, label: str) -> Engine:
    try:
        if sources is None:
            return load_directory(folder).engine
        return load_sources(sources, where=f"{label} {folder}").engine
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
@mappings_option
def diff(
    files: tuple[Path, ...], base: Path | None, base_rev: str | None, mappings: str | None
) -> None:
    """Show the events of FILES whose Dub requests change from the base mappings to these."""
    if (base is None) == (base_rev is None):
        fail("give --base DIR or --base-rev REV (exactly one)")
    folder = settings_for(mappings).mappings_dir
    if base is not None and not base.is_dir():
        fail(f"--base {base} is not a directory of mapping files")
    old = _engine(sources_at(folder, base_rev) if base_rev else None, base or folder, "base")
    new = _engine(None, folder, "current")
    events = changed = 0
    for path in files:
        for item in read_file(path):
            events += 1
            before = old.plan(item.event)
            lines = list(changes(before, new.plan(item.event)))
            if lines:
                changed += 1
                click.echo(f"{before[0].message_id or '(no messageId)'} {before[0].event!r}")
                click.echo("\n".join(lines))
    click.echo(f"{changed} of {events} event(s) changed")
    sys.exit(1 if changed else 0)


COMMANDS = [diff]

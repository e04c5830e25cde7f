"""``bridge validate``: check the mapping files, every error at once."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..service.mapping_files import load_directory
from .common import PROBLEMS, settings


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
def validate(directory: Path | None) -> None:
    """Check the mapping files in DIRECTORY (default: BRIDGE_MAPPINGS_DIR or mappings/)."""
    folder = directory or settings().mappings_dir
    result = load_directory(folder, strict=False)
    for issue in result.issues:
        click.echo(str(issue), err=issue.severity == "error")
    if result.errors:
        click.echo(f"{len(result.errors)} error(s) in {folder}", err=True)
        sys.exit(PROBLEMS)
    click.echo(
        f"ok: {len(result.engine)} mapping(s) in {len(result.files)} file(s), "
        f"version {result.engine.version}, {len(result.warnings)} warning(s)"
    )


COMMANDS = [validate]

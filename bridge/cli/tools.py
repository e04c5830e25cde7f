"""``bridge test``, ``bridge explain`` and ``bridge schema``: tools for writing mappings;
``bridge sign``: the signature Segment would send with a body, for trying the webhook by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO

import click

from ..core.items import Item
from ..core.jsoncodec import dumps_str
from ..mapping.batch import plan_all
from ..mapping.explain import explain as explain_event
from ..mapping.explain import explain_text
from ..mapping.goldens import GoldenCase, check
from ..mapping.schema import mapping_schema
from ..reader import read_file
from ..service.mapping_files import load_directory
from ..web.signing import sign as sign_body
from .common import PROBLEMS, engine_of, fail, mappings_option, settings, settings_for


def _events(case: GoldenCase) -> list[Item] | str:
    """The test's events, or why they cannot be read."""
    if case.event_file is None:
        return [Item(case.event)]
    path = Path(case.file).parent / case.event_file
    if not path.is_file():
        return f"event_file {case.event_file}: no such file ({path})"
    return list(read_file(path))


@click.command("test")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
def test_command(directory: Path | None) -> None:
    """Run the golden tests of the mapping files in DIRECTORY (plan only, nothing is sent)."""
    folder = directory or settings().mappings_dir
    if not folder.is_dir():
        fail(f"{folder} is not a directory of mapping files")
    result = load_directory(folder, strict=False)
    if result.errors:
        for issue in result.issues:
            click.echo(str(issue), err=True)
        click.echo(f"{len(result.errors)} error(s) in {folder}: no test was run", err=True)
        sys.exit(PROBLEMS)
    failed = 0
    for case in result.tests:
        events = _events(case)
        if isinstance(events, str):
            problems = [events]
        else:
            problems = check(case, plan_all(result.engine, events)[0])
        if problems:
            failed += 1
            click.echo(f"FAIL {case.name} ({case.where})")
            click.echo("".join(f"  {case.name}: {line}\n" for line in problems), nl=False)
        else:
            click.echo(f"ok   {case.name} ({case.where})")
    total = len(result.tests)
    if not total:
        click.echo(f"no tests in {folder} (add a `tests:` list to a mapping file)", err=True)
    else:
        click.echo(f"{total} test(s) in {folder}: {total - failed} ok, {failed} failed")
    sys.exit(PROBLEMS if failed else 0)


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@mappings_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def explain(files: tuple[Path, ...], mappings: str | None, as_json: bool) -> None:
    """Show, step by step, what the mappings do with each event of FILES (nothing is sent)."""
    engine = engine_of(settings_for(mappings))
    for path in files:
        for item in read_file(path):
            report = explain_event(engine, item.event)
            if as_json:
                click.echo(dumps_str(report))
            else:
                click.echo("\n".join(explain_text(report)))


@click.command()
def schema() -> None:
    """Print the JSON Schema of mapping files (for an editor's yaml-language-server)."""
    click.echo(json.dumps(mapping_schema(), indent=2, ensure_ascii=False))


@click.command()
@click.argument("body", type=click.File("rb"))
def sign(body: BinaryIO) -> None:
    """Print the X-Signature Segment would send with BODY (a file, or - for stdin): the hex
    HMAC-SHA1 of its bytes, as they are, with SEGMENT_SHARED_SECRET."""
    secret = settings().segment_shared_secret
    if secret is None:
        fail("SEGMENT_SHARED_SECRET is not set: there is no secret to sign with")
    click.echo(sign_body(body.read(), secret.get_secret_value()))


COMMANDS = [test_command, explain, schema, sign]

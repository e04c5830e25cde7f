"""The ``bridge`` command: serve, validate, test, explain, diff, schema, replay, deadletters,
redrive, db, check, mappings."""

from __future__ import annotations

import click

from . import db_cmds, diff, ledger_cmds, mapping_cmds, replay, serve, service_cmds, tools
from .common import Boundary


@click.group(cls=Boundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segment-dub-bridge")
def main() -> None:
    """Segment track events in, Dub conversions out."""


for module in (serve, mapping_cmds, tools, diff, replay, ledger_cmds, db_cmds, service_cmds):
    for command in module.COMMANDS:
        main.add_command(command)

"""`bridge replay` on stderr: a progress bar on a terminal only, and a summary at the end."""

from __future__ import annotations

import io
from typing import Any

import pytest

from bridge.cli import summary as summary_module
from bridge.cli.summary import Progress, Summary
from bridge.core.outcomes import Outcome
from bridge.core.results import Result
from tests.conftest import LINE_KEYS, SAMPLES
from tests.test_cli import lines, run


def test_replay_prints_a_summary_on_stderr_and_keeps_stdout_as_json_lines() -> None:
    """stdout stays one JSON line per result; stderr ends with counts, reasons and names."""
    files = sorted(str(p) for p in SAMPLES.glob("*json"))
    done = run("replay", *files, str(SAMPLES / "problems" / "bad-events.ndjson"))
    assert done.returncode == 1
    out = lines(done.stdout)
    assert len(out) == 15 and all(set(line) >= LINE_KEYS for line in out)
    assert done.stderr.splitlines() == [
        "summary: 15 event(s), 15 result(s)",
        "  by outcome: dry_run 5, invalid 6, skipped 4",
        "  order-sale: dry_run 3, invalid 4, skipped 1",
        "  signup-lead: dry_run 2, invalid 1, skipped 1",
        "  most frequent skip reasons:",
        "          1  (event): type 'page' is not 'track'",
        "          1  order-sale: amount is 0: Dub records nothing for a zero sale",
        "          1  signup-lead: organic sign-up: no Dub click id in context.traits.clickId or "
        "integrations['Dub (Actions)'].dub_id",
        "  events no mapping takes:",
        "          1  Product Viewed",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    """A terminal gets a progress bar; a pipe or file gets nothing at all."""
    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress(stream, refresh_seconds=0)
        progress.advance(100)
        progress.advance(20)
        progress.close()
    assert "120 events" in tty.getvalue()
    assert pipe.getvalue() == ""


def skipped(event: str | None, reason: str, mapping: str | None = None) -> Result:
    return Result(event=event, mapping=mapping).finish(Outcome.SKIPPED, reason=reason)


def test_summary_counts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_KEYS distinct names (sender's text), the rest is counted together."""
    monkeypatch.setattr(summary_module, "MAX_KEYS", 3)
    summary = Summary()
    results: list[Any] = [skipped(f"E{i}", f"no mapping for event 'E{i}'") for i in range(5)]
    results += [skipped("E0", "no mapping for event 'E0'")]
    summary.add(results, len(results))
    assert dict(summary.unmatched) == {"E0": 2, "E1": 1, "E2": 1, "(other)": 2}
    assert summary.lines()[-4:] == [
        "          2  (other)",
        "          2  E0",
        "          1  E1",
        "          1  E2",
    ]

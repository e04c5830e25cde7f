"""What ``bridge replay`` tells on stderr: a progress bar (on a terminal) and a summary.

Kept apart from the replay loop, which only feeds it results, so the loop can change
(streaming, several processes) without touching what is reported. Event names and
reasons come from the events: at most ``MAX_KEYS`` distinct ones are counted each, the
rest together, so a file of a million distinct names cannot exhaust memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

from ..mapping.engine import NO_MAPPING
from ..outcomes import Outcome
from ..results import Result

MAX_KEYS = 10_000
TOP = 5
TOP_NAMES = 20
OTHER = "(other)"


class Progress:
    """A progress bar on ``stream`` when it is a terminal; nothing otherwise."""

    def __init__(self, stream: IO[str], *, refresh_seconds: float = 0.2):
        self.bar: tqdm[Any] | None = None
        if stream.isatty():
            self.bar = tqdm(
                file=stream,
                unit=" events",
                dynamic_ncols=True,
                leave=False,  # the summary follows; the bar has done its job
                mininterval=refresh_seconds,
                miniters=1,  # one update per chunk of events: each may redraw
            )

    def advance(self, events: int) -> None:
        if self.bar is not None:
            self.bar.update(events)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Bounded(Counter[str]):
    def add(self, key: str) -> None:
        self[key if key in self or len(self) < MAX_KEYS else OTHER] += 1

    def top(self, count: int) -> list[tuple[str, int]]:
        """The most frequent keys, ties in name order (so the report does not wobble)."""
        return sorted(self.items(), key=lambda item: (-item[1], item[0]))[:count]


class Summary:
    """Counts by outcome and by mapping, top skip reasons, unmatched event names."""

    def __init__(self) -> None:
        self.events = 0
        self.outcomes: Counter[str] = Counter()
        self.by_mapping: dict[str, Counter[str]] = {}
        self.skips = _Bounded()
        self.unmatched = _Bounded()

    def add(self, results: Iterable[Result], events: int) -> None:
        self.events += events
        for result in results:
            outcome = str(result.outcome)
            self.outcomes[outcome] += 1
            if result.mapping is not None:
                self.by_mapping.setdefault(result.mapping, Counter())[outcome] += 1
            if result.outcome is Outcome.SKIPPED:
                reason = result.reason or "(no reason)"
                if result.mapping is None and reason.startswith(NO_MAPPING):
                    self.unmatched.add(result.event or "(no name)")
                else:
                    self.skips.add(f"{result.mapping or '(event)'}: {reason}")

    def lines(self) -> list[str]:
        def counts(counter: Counter[str]) -> str:
            return ", ".join(f"{key} {n}" for key, n in sorted(counter.items()))

        out = [f"summary: {self.events} event(s), {sum(self.outcomes.values())} result(s)"]
        out.append(f"  by outcome: {counts(self.outcomes) or 'none'}")
        for mapping in sorted(self.by_mapping):
            out.append(f"  {mapping}: {counts(self.by_mapping[mapping])}")
        if self.skips:
            out.append("  most frequent skip reasons:")
            out += [f"    {n:>7}  {reason}" for reason, n in self.skips.top(TOP)]
        if self.unmatched:
            out.append("  events no mapping takes:")
            out += [f"    {n:>7}  {name}" for name, n in self.unmatched.top(TOP_NAMES)]
            if len(self.unmatched) > TOP_NAMES:
                out.append(f"    and {len(self.unmatched) - TOP_NAMES} more name(s)")
        return out

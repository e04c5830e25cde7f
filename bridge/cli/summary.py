"""What ``bridge replay`` tells on stderr: a progress bar (on a terminal) and a summary.

Kept apart from the replay loop, which only feeds it results, so the loop can change
(streaming, several processes) without touching what is reported. Event names and
reasons come from the events: at most ``MAX_KEYS`` distinct ones are counted each, the
rest together, so a file of a million distinct names cannot exhaust memory.

A worker process counts its chunk of results in a ``Tally`` (plain data, unbounded:
a chunk is small); the parent merges tallies in input order, key by key in the order
each was first seen, which bounds the counts exactly as counting result by result does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from tqdm import tqdm

from ..core.outcomes import Outcome
from ..core.results import Result
from ..mapping.engine import NO_MAPPING

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
    def add(self, key: str, count: int = 1) -> None:
        self[key if key in self or len(self) < MAX_KEYS else OTHER] += count

    def top(self, count: int) -> list[tuple[str, int]]:
        """The most frequent keys, ties in name order (so the report does not wobble)."""
        return sorted(self.items(), key=lambda item: (-item[1], item[0]))[:count]


@dataclass
class Tally:
    """What the summary needs from one chunk of results, as plain data (it crosses processes)."""

    events: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    by_mapping: dict[str, dict[str, int]] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)  # in the order first seen
    unmatched: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, results: Iterable[Result], events: int) -> Tally:
        tally = cls(events)
        for result in results:
            outcome = str(result.outcome)
            tally.outcomes[outcome] = tally.outcomes.get(outcome, 0) + 1
            if result.mapping is not None:
                counts = tally.by_mapping.setdefault(result.mapping, {})
                counts[outcome] = counts.get(outcome, 0) + 1
            if result.outcome is Outcome.SKIPPED:
                reason = result.reason or "(no reason)"
                if result.mapping is None and reason.startswith(NO_MAPPING):
                    name = result.event or "(no name)"
                    tally.unmatched[name] = tally.unmatched.get(name, 0) + 1
                else:
                    key = f"{result.mapping or '(event)'}: {reason}"
                    tally.skips[key] = tally.skips.get(key, 0) + 1
        return tally


class Summary:
    """Counts by outcome and by mapping, top skip reasons, unmatched event names."""

    def __init__(self) -> None:
        self.events = 0
        self.outcomes: Counter[str] = Counter()
        self.by_mapping: dict[str, Counter[str]] = {}
        self.skips = _Bounded()
        self.unmatched = _Bounded()

    def add(self, results: Iterable[Result], events: int) -> None:
        self.merge(Tally.of(results, events))

    def merge(self, tally: Tally) -> None:
        """Count a chunk's tally; chunks must come in input order."""
        self.events += tally.events
        self.outcomes.update(tally.outcomes)
        for mapping, counts in tally.by_mapping.items():
            self.by_mapping.setdefault(mapping, Counter()).update(counts)
        for key, count in tally.skips.items():
            self.skips.add(key, count)
        for name, count in tally.unmatched.items():
            self.unmatched.add(name, count)

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

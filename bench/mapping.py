"""Item 1: mapping throughput without HTTP, and the equivalence checks behind it.

1a  the bridge's engine: bytes -> jsoncodec.loads -> Engine.plan -> jsoncodec.dumps(body)
1b  handwritten.map_line: the same bodies built by hand
1c  Segment's actions-core mapping-kit, via bench/node/map_segment.js (a subprocess)

All three are single-threaded, so events/s is per core. Within a round, a and b take
turns pass by pass over the corpus on the process's CPU clock, then c runs (node's own
timer); ratios are taken per round, then the median.

Run alone, it times the engine only (1a), on one or more mapping folders side by side,
and optionally the engine of another checkout (before a change) on the first folder:

    python bench/mapping.py [--mappings DIR ...] [--base-checkout PATH] [--cpu]
                            [--rounds N] [--seconds S] [--events N]

Each round times every engine once, in turn (who goes first rotates), in this one
process; the report gives the median events/s of each and its median per-round ratio
to the first, after checking that all make the same Dub bodies on the corpus (so a
rewrite of a mapping with new constructs is timed against the original doing the same
work). ``--cpu`` times with the process's CPU clock, steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/mapping.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus, handwritten
from bench.servers import ROOT
from bridge.core.jsoncodec import dumps, loads
from bridge.mapping.engine import Engine
from bridge.service.mapping_files import load_directory as load_mappings

NODE_DIR = ROOT / "bench" / "node"
ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
ZERO_DECIMAL |= {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}


def engine_mapper(engine: Engine) -> Callable[[bytes], list[bytes]]:
    plan = engine.plan

    def map_line(line: bytes) -> list[bytes]:
        return [dumps(r.body) for r in plan(loads(line)) if r.outcome == "ready"]

    return map_line


def events_per_second(
    fn: Callable[[bytes], Any],
    lines: list[bytes],
    seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """One warm-up pass, then whole passes over the corpus until ``seconds`` have passed."""
    for line in lines:
        fn(line)
    events = 0
    start = now = clock()
    while now - start < seconds:
        for line in lines:
            fn(line)
        events += len(lines)
        now = clock()
    return events / (now - start)


def alternating(
    fns: dict[str, Callable[[bytes], Any]],
    lines: list[bytes],
    seconds: float,
    clock: Callable[[], float] = time.process_time,
) -> dict[str, float]:
    """Events/s of each function, taking turns pass by pass until each has run ``seconds``.

    Turns of one pass over the corpus (tens of milliseconds) put a neighbour's burst of load
    on every side alike, where runs of whole seconds in turn gave one side all of it; the
    process's CPU clock leaves out the time the machine gave to others.
    """
    for fn in fns.values():
        for line in lines:
            fn(line)
    spent = dict.fromkeys(fns, 0.0)
    passes = dict.fromkeys(fns, 0)
    while min(spent.values()) < seconds:
        for name, fn in fns.items():
            start = clock()
            for line in lines:
                fn(line)
            spent[name] += clock() - start
            passes[name] += 1
    return {name: passes[name] * len(lines) / spent[name] for name in fns}


def node_status() -> str | None:
    """None when 1c can run; otherwise why not. Installs node deps when they are missing."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "@segment" / "actions-core").is_dir():
        if shutil.which("npm") is None:
            return "npm is not installed (needed once for `npm ci --prefix bench/node`)"
        print("  installing node deps: npm ci --prefix bench/node", flush=True)
        done = subprocess.run(
            ["npm", "ci", "--prefix", str(NODE_DIR)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            return f"npm ci failed: {done.stderr.strip().splitlines()[-1:]}"
    return None


def node_run(corpus: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(NODE_DIR / "map_segment.js"), str(corpus), *args],
        capture_output=True,
        text=True,
        check=True,
    )


def node_events_per_second(corpus: Path, seconds: float) -> float:
    line = node_run(corpus, "--seconds", str(seconds)).stdout.strip().splitlines()[-1]
    return float(json.loads(line)["events_per_second"])


def throughput(corpus: Path, lines: list[bytes], rounds: int, seconds: float) -> dict[str, Any]:
    engine = load_mappings(ROOT / "mappings").engine
    skip_node = node_status()
    a_fn = engine_mapper(engine)
    per_round: list[dict[str, float]] = []
    for index in range(rounds):
        row = alternating({"a": a_fn, "b": handwritten.map_line}, lines, seconds)
        if skip_node is None:
            try:
                row["c"] = node_events_per_second(corpus, seconds)
            except (subprocess.CalledProcessError, ValueError, KeyError) as exc:
                skip_node = f"map_segment.js failed: {exc}"
        per_round.append(row)
        print(
            f"  round {index + 1}/{rounds}: " + ", ".join(f"{k}={v:,.0f}" for k, v in row.items())
        )

    median = statistics.median
    out: dict[str, Any] = {
        "rounds": per_round,
        "seconds_per_run": seconds,
        "a_events_per_second": median(r["a"] for r in per_round),
        "b_events_per_second": median(r["b"] for r in per_round),
        "a_over_b": median(r["a"] / r["b"] for r in per_round),
        "node_skipped": skip_node,  # also set when node failed part-way: then no 1c at all
    }
    if skip_node is None:
        out["c_events_per_second"] = median(r["c"] for r in per_round)
        out["a_over_c"] = median(r["a"] / r["c"] for r in per_round)
    return out


def engine_bodies(engine: Engine, lines: list[bytes]) -> dict[str, Any]:
    """messageId -> (outcome summary, [(path, body)] of ready results)."""
    out = {}
    for line in lines:
        event = loads(line)
        results = engine.plan(event)
        ready = [(r.request_path, r.body) for r in results if r.outcome == "ready"]
        why = "; ".join(r.reason or "; ".join(r.errors) or r.outcome for r in results)
        out[event.get("messageId")] = (why, ready)
    return out


def check_handwritten(lines: list[bytes]) -> dict[str, Any]:
    """1a vs 1b on every corpus event: the (path, body) lists must be equal."""
    engine = load_mappings(ROOT / "mappings").engine
    expected = engine_bodies(engine, lines)
    mismatches = []
    bodies = 0
    for line in lines:
        event = loads(line)
        got = handwritten.plan(event)
        bodies += len(got)
        _, want = expected[event.get("messageId")]
        if got != want:
            mismatches.append({"messageId": event.get("messageId"), "engine": want, "hand": got})
    return {
        "events": len(lines),
        "bodies": bodies,
        "mismatches": len(mismatches),
        "examples": mismatches[:3],
    }


def _js_cents(event: dict[str, Any]) -> int | None:
    """What map_segment.js computes: Math.round(x * 100) on a float (x for zero-decimal)."""
    props = event.get("properties") or {}
    raw = props.get("revenue") if props.get("revenue") is not None else props.get("total")
    currency = props.get("currency")
    currency = currency.lower() if isinstance(currency, str) else "usd"
    try:
        x = float(raw)  # type: ignore[arg-type]  # None and objects raise, as wanted
    except (TypeError, ValueError):
        return None
    scaled = x if currency in ZERO_DECIMAL else x * 100
    whole = math.floor(scaled)
    return whole + (1 if scaled - whole >= 0.5 else 0)  # Math.round: halves go up


class NodeComparison:
    """The bridge's bodies against node's, event by event; known differences by kind."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.unexpected: list[dict[str, Any]] = []
        self.engine_bodies = self.node_bodies = self.identical = 0

    def add(
        self,
        message_id: str,
        why: str,
        ready: list[tuple[str | None, Any]],
        body: dict[str, Any] | None,
        event: dict[str, Any],
    ) -> None:
        """One event: ``why`` and ``ready`` as ``engine_bodies`` gives them, node's body."""
        self.node_bodies += body is not None
        if not ready:
            if body is not None:
                # node has no required-field or zero-amount rule: it builds a body anyway.
                self.kinds[f"node sends, bridge does not ({why[:60]})"] += 1
            return
        self.engine_bodies += 1
        if body is None:
            self.unexpected.append({"messageId": message_id, "why": "no node body"})
            return
        ours = ready[0][1]
        self.identical += ours == body
        for key in sorted(set(ours) | set(body)):
            if ours.get(key) == body.get(key):
                continue
            if key == "amount" and body.get(key) == _js_cents(event):
                self.kinds["amount: float Math.round(x*100) vs exact decimal, off by 1"] += 1
            elif key == "metadata" and ours.get(key) is None and body.get(key) == {}:
                self.kinds["metadata: {} sent by node, omitted by the bridge (empty)"] += 1
            else:
                self.kinds[f"unexpected: {key}"] += 1
                self.unexpected.append(
                    {"messageId": message_id, "field": key, "engine": ours.get(key),
                     "node": body.get(key)}
                )  # fmt: skip

    def report(self) -> dict[str, Any]:
        return {
            "engine_bodies": self.engine_bodies,
            "node_bodies": self.node_bodies,
            "identical": self.identical,
            "differences": dict(self.kinds),
            "unexpected": len(self.unexpected),
            "examples": self.unexpected[:3],
        }


def check_node(corpus: Path, lines: list[bytes]) -> dict[str, Any]:
    """1a vs 1c (``--dump``): every body, field by field; known differences are classified."""
    engine = load_mappings(ROOT / "mappings").engine
    expected = engine_bodies(engine, lines)
    events = {e.get("messageId"): e for e in map(loads, lines)}
    dumped = node_run(corpus, "--dump", str(len(lines) + 1)).stdout.splitlines()
    node = {d["messageId"]: d["body"] for d in map(json.loads, dumped)}
    comparison = NodeComparison()
    for message_id, (why, ready) in expected.items():
        comparison.add(message_id, why, ready, node.get(message_id), events[message_id])
    return comparison.report()


def base_loader(checkout: Path) -> Callable[[Path], Any]:
    """Load mapping folders with the engine of another checkout (e.g. before a change).

    Its ``bridge`` package is copied as ``bridge_base`` (every import inside it is
    relative), so both engines run in this one process, on the same corpus, in turn.
    """
    where = Path(tempfile.mkdtemp(prefix="bench-base-"))
    shutil.copytree(checkout / "bridge", where / "bridge_base")
    sys.path.insert(0, str(where))
    # Where a checkout keeps its folder loader: today's layout, then the one before it.
    try:
        files = importlib.import_module("bridge_base.service.mapping_files")
    except ModuleNotFoundError:
        files = importlib.import_module("bridge_base.sources")
    return lambda folder: files.load_directory(folder).engine


def compare_engines(
    engines: list[tuple[str, Any]],
    lines: list[bytes],
    rounds: int,
    seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Engine-only events/s of each (label, engine), interleaved per round."""
    bodies = [engine_bodies(engine, lines) for _, engine in engines]
    first = {k: v[1] for k, v in bodies[0].items()}
    different = [
        label
        for (label, _), got in zip(engines[1:], bodies[1:], strict=True)
        if {k: v[1] for k, v in got.items()} != first
    ]
    mappers = [engine_mapper(engine) for _, engine in engines]
    per_round = []
    count = len(engines)
    for index in range(rounds):
        # Rotate who goes first: on a shared machine the first run of a round differs.
        row = [0.0] * count
        for step in range(count):
            which = (index + step) % count
            row[which] = events_per_second(mappers[which], lines, seconds, clock)
        per_round.append(row)
        print(f"  round {index + 1}/{rounds}: " + ", ".join(f"{v:,.0f}" for v in row), flush=True)
    return {
        "engines": [label for label, _ in engines],
        "events_per_second": [statistics.median(r[i] for r in per_round) for i in range(count)],
        "ratio_to_first": [statistics.median(r[i] / r[0] for r in per_round) for i in range(count)],
        "bodies_differ": different,
        "rounds": per_round,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="engine-only mapping throughput (item 1a)")
    parser.add_argument(
        "--mappings", type=Path, action="append", help="a mapping folder (repeat to compare)"
    )
    parser.add_argument(
        "--base-checkout",
        type=Path,
        help="also time the first folder with the engine of this checkout (listed first)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per engine and round")
    parser.add_argument("--events", type=int, default=corpus.DEFAULT_EVENTS)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time with this process's CPU clock: steadier than wall time on a shared machine",
    )
    args = parser.parse_args()
    folders = args.mappings or [ROOT / "mappings"]
    with tempfile.TemporaryDirectory() as tmp:
        lines = corpus.read_lines(corpus.write(Path(tmp) / "corpus.jsonl", args.events))
    engines = [(f"this engine, {folder}", load_mappings(folder).engine) for folder in folders]
    if args.base_checkout is not None:
        base = base_loader(args.base_checkout)
        engines.insert(0, (f"{args.base_checkout} engine, {folders[0]}", base(folders[0])))
    print(f"corpus: {len(lines)} events (seed 4); ratios are to the first line")
    clock = time.process_time if args.cpu else time.perf_counter
    out = compare_engines(engines, lines, args.rounds, args.seconds, clock)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for label, eps, ratio in zip(
        out["engines"], out["events_per_second"], out["ratio_to_first"], strict=True
    ):
        print(f"{eps:>12,.0f} events/s  x{ratio:.3f}  {label}")
    if out["bodies_differ"]:
        print(f"bodies differ from the first line: {'; '.join(out['bodies_differ'])}")
        sys.exit(1)


if __name__ == "__main__":
    main()

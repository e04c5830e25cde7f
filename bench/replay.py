"""Item 6: ``bridge replay --dry-run`` as a whole process against Segment's engine, and its memory.

    python bench/replay.py [--events N] [--rounds R] [--memory-events M] [--jobs J]

Two corpora of N events (fixed seed, bench/corpus.py): 20% of them unmapped noise, and
all mapped. Each round runs, each as a child process, in an order that rotates from
round to round:

    bridge replay --dry-run --jobs 1 CORPUS     (one process)
    bridge replay --dry-run --jobs J CORPUS     (J: the cores, by default)
    node bench/node/map_segment.js CORPUS --whole   (Segment's actions-core, whole file)

Each is timed wall-clock from start to exit, output to /dev/null, and its peak RSS is
read from ``os.wait4`` (``ru_maxrss``: the largest of the child and the processes it
waited for, so with --jobs J the largest of the parent and its workers), in a small
launcher process (see ``LAUNCHER``: a child of this process would inherit its size). A ratio is
node's seconds over the bridge's (above 1: the bridge is faster), per round, then the
median. Memory: the bridge on an M-event NDJSON file and its gzip, --jobs 1 and J.

Before any timing: the bridge's output must be the same at --jobs 1 and J, and its
bodies must match node's, event by event (known differences counted by kind, as
bench/mapping.py counts them; "unexpected" must be 0).
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/replay.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus
from bench.mapping import NODE_DIR, NodeComparison, node_status
from bench.servers import ROOT
from bridge.cli.replay import cores

BRIDGE = Path(sys.executable).with_name("bridge")
CORPORA = {"20% noise": 0.2, "all mapped": 0.0}
MB = 1024  # ru_maxrss is in KiB on Linux


def bridge_argv(path: Path, jobs: int) -> list[str]:
    mappings = str(ROOT / "mappings")
    return [str(BRIDGE), "replay", "--dry-run", "--jobs", str(jobs), "--mappings", mappings,
            str(path)]  # fmt: skip


def node_argv(path: Path) -> list[str]:
    return ["node", str(NODE_DIR / "map_segment.js"), str(path), "--whole"]


# Linux carries a process's peak RSS across fork and exec: a child of this (large)
# process would report at least this process's size. So each child is started by this
# small launcher, whose fork is small: wait4 then gives the child's own peak.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as report:
    json.dump({"seconds": seconds, "peak_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, report)
"""


def run_child(argv: list[str], stdout: Any = subprocess.DEVNULL) -> dict[str, float]:
    """Wall seconds (fork to exit) and peak RSS (MB) of one child, which must exit 0 or 1."""
    with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile("r") as report:
        launcher = [sys.executable, "-c", LAUNCHER, report.name, *argv]
        subprocess.run(launcher, stdout=stdout, stderr=errors, cwd=ROOT, check=True)
        got = json.load(report)
        if got["code"] not in (0, 1):  # 1: the corpus holds invalid events, on purpose
            errors.seek(0)
            tail = errors.read()[-400:].decode(errors="replace")
            raise RuntimeError(f"{argv[0]} exited {got['code']}: {tail}")
    return {"seconds": got["seconds"], "peak_mb": got["peak_kib"] / MB}


def _bridge_events(output: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with output.open("rb") as lines:
        results = map(json.loads, lines)
        for message_id, group in itertools.groupby(results, lambda r: r["messageId"]):
            yield message_id, list(group)


def check(path: Path, jobs: int, workdir: Path) -> dict[str, Any]:
    """The bridge's output at --jobs 1 and J is the same; its bodies match node's."""
    outputs = {}
    for label, argv in (("1", bridge_argv(path, 1)), (str(jobs), bridge_argv(path, jobs)),
                        ("node", node_argv(path))):  # fmt: skip
        outputs[label] = workdir / f"out-{label}.jsonl"
        with outputs[label].open("wb") as out:
            run_child(argv, stdout=out)
    same = outputs["1"].read_bytes() == outputs[str(jobs)].read_bytes()
    comparison = NodeComparison()
    with path.open("rb") as events, outputs["node"].open("rb") as node:
        ours = _bridge_events(outputs["1"])
        for raw, node_line, (message_id, results) in zip(events, node, ours, strict=True):
            event, theirs = json.loads(raw), json.loads(node_line)
            assert event["messageId"] == message_id == theirs["messageId"], message_id
            ready = [(r["request"]["path"], r["request"]["body"]) for r in results
                     if r["outcome"] == "dry_run"]  # fmt: skip
            why = "; ".join(r["reason"] or "; ".join(r["errors"]) or r["outcome"] for r in results)
            body = theirs["request"]["body"] if theirs["request"] else None
            comparison.add(message_id, why, ready, body, event)
    return {"jobs_outputs_identical": same, **comparison.report()}


def compare(path: Path, jobs: int, rounds: int) -> dict[str, Any]:
    """Rounds of the three variants in rotating order; ratios per round, then the median."""
    variants = [("bridge -j1", bridge_argv(path, 1)), (f"bridge -j{jobs}", bridge_argv(path, jobs)),
                ("node", node_argv(path))]  # fmt: skip
    per_round: list[dict[str, dict[str, float]]] = []
    for index in range(rounds):
        row: dict[str, dict[str, float]] = {}
        for step in range(len(variants)):
            label, argv = variants[(index + step) % len(variants)]
            row[label] = run_child(argv)
        per_round.append(row)
        times = ", ".join(f"{label} {row[label]['seconds']:.2f} s" for label, _ in variants)
        print(f"    round {index + 1}/{rounds}: {times}", flush=True)
    median = statistics.median
    out: dict[str, Any] = {"rounds": per_round}
    for label, _ in variants:
        out[label] = {k: median(r[label][k] for r in per_round) for k in ("seconds", "peak_mb")}
    for label, _ in variants[:2]:
        out[f"node/{label}"] = median(r["node"]["seconds"] / r[label]["seconds"] for r in per_round)
    return out


def memory(path: Path, jobs: int, events: int) -> dict[str, Any]:
    """Peak RSS of the bridge on an NDJSON file and its gzip, --jobs 1 and J."""
    gz = corpus.write(path.with_suffix(".jsonl.gz"), events, noise=0.2, compress=True)
    out = {}
    for label, file in (("ndjson", path), ("gzip", gz)):
        for j in sorted({1, jobs}):
            run = run_child(bridge_argv(file, j))
            out[f"{label} -j{j}"] = run
            print(f"    {events:,} events, {label}, --jobs {j}: peak RSS {run['peak_mb']:.1f} MB, "
                  f"{run['seconds']:.1f} s", flush=True)  # fmt: skip
    return out


def measure(
    events: int, rounds: int, memory_events: int, jobs: int | None = None
) -> dict[str, Any]:
    """Everything of item 6; node's rows are skipped (with the reason) without node."""
    jobs = jobs or cores()
    results: dict[str, Any] = {"events": events, "rounds": rounds, "jobs": jobs,
                               "memory_events": memory_events}  # fmt: skip
    why_not = node_status()
    results["node_skipped"] = why_not
    # An installed bridge starts from its bytecode (an install writes it); with
    # PYTHONDONTWRITEBYTECODE set, each timed start would compile every module from source.
    compileall.compile_dir(ROOT / "bridge", quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        work = Path(tmp)
        for name, noise in CORPORA.items():
            path = corpus.write(work / f"{name.replace(' ', '-').replace('%', '')}.jsonl", events,
                                noise=noise)  # fmt: skip
            print(f"  {name}: {events:,} events, {path.stat().st_size / events:.0f} B/event",
                  flush=True)  # fmt: skip
            if why_not is not None:
                results[name] = {"skipped": why_not}
                continue
            results[name] = {"check": check(path, jobs, work)}
            c = results[name]["check"]
            print(f"    check: --jobs 1 and {jobs} identical: {c['jobs_outputs_identical']}; "
                  f"{c['identical']}/{c['engine_bodies']} bodies identical to node's, "
                  f"{c['unexpected']} unexpected", flush=True)  # fmt: skip
            results[name] |= compare(path, jobs, rounds)
        path = corpus.write(work / "memory.jsonl", memory_events, noise=0.2)
        results["memory"] = memory(path, jobs, memory_events)
    return results


def table(r: dict[str, Any]) -> list[str]:
    """Every figure and ratio of item 6, one table."""
    j = r["jobs"]
    out = [f"   {'':14}{'bridge -j1':>16}{f'bridge -j{j}':>16}{'node':>16}"
           f"{'node/-j1':>11}{f'node/-j{j}':>11}"]  # fmt: skip
    for name in CORPORA:
        row = r[name]
        if "skipped" in row:
            out.append(f"   {name:14}skipped: {row['skipped']}")
            continue
        cells = "".join(
            f"{row[label]['seconds']:>7.2f} s {row[label]['peak_mb']:>4.0f} MB"
            for label in ("bridge -j1", f"bridge -j{j}", "node")
        )
        ratios = f"{row['node/bridge -j1']:>11.2f}{row[f'node/bridge -j{j}']:>11.2f}"
        out.append(f"   {name:14}{cells}{ratios}")
    mem = r["memory"]
    cells = ", ".join(f"{label} {m['peak_mb']:.1f} MB" for label, m in mem.items())
    out.append(f"   peak RSS, {r['memory_events']:,} events: {cells}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="whole-process replay vs Segment's engine")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-events", type=int, default=500_000)
    parser.add_argument("--jobs", type=int, help="the multi-job run's --jobs (default: cores)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON too")
    args = parser.parse_args()
    results = measure(args.events, args.rounds, args.memory_events, args.jobs)
    print(f"\n6. Replay, whole process, {args.events:,} events, median of {args.rounds} round(s); "
          "ratios: node's seconds / the bridge's")  # fmt: skip
    print("\n".join(table(results)))
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

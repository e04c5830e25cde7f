"""Item 5: start-up, each sample in a fresh interpreter (no warm import cache in memory).

Measured inside the child: importing ``bridge.web.app`` (everything a gunicorn worker
imports: Flask, pydantic, requests, the engine) plus ``load_mappings`` on the default
mappings (read, validate, compile), in wall and CPU time (CPU time does not count
waiting for a busy core). The child's whole wall time and a bare ``python -c pass``
are measured too, so interpreter start-up can be told apart.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.servers import ROOT

_CHILD = """
import json, time
t0, c0 = time.perf_counter(), time.process_time()
import bridge.web.app
from bridge.service.mapping_files import load_directory as load_mappings
t1 = time.perf_counter()
engine = load_mappings(MAPPINGS).engine
t2, c2 = time.perf_counter(), time.process_time()
assert len(engine) >= 1, len(engine)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "cpu_s": c2 - c0}))
"""


def _wall(args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def measure(samples: int) -> dict[str, Any]:
    code = _CHILD.replace("MAPPINGS", repr(str(ROOT / "mappings")))
    rows = []
    for _ in range(samples):
        baseline, _ = _wall([sys.executable, "-c", "pass"])
        wall, out = _wall([sys.executable, "-c", code])
        row = json.loads(out)
        row["import_and_load_s"] = row["import_s"] + row["load_s"]
        row["process_wall_s"] = wall
        row["python_pass_wall_s"] = baseline
        rows.append(row)
    med = statistics.median
    return {
        "samples": rows,
        "import_s": med(r["import_s"] for r in rows),
        "load_s": med(r["load_s"] for r in rows),
        "import_and_load_s": med(r["import_and_load_s"] for r in rows),
        "import_and_load_cpu_s": med(r["cpu_s"] for r in rows),
        "worst_import_and_load_s": max(r["import_and_load_s"] for r in rows),
        "process_wall_s": med(r["process_wall_s"] for r in rows),
        "python_pass_wall_s": med(r["python_pass_wall_s"] for r in rows),
    }

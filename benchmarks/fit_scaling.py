"""Fit time and peak memory against sweep size: 48, 200 and 1,000 synthetic runs.

``python -m benchmarks.fit_scaling`` builds analytic sweeps (``tests/synthetic.py``: 3
schedule families x 8 peak learning rates, seeds added until the size is reached; 400 steps
per run, the loss logged every 4 steps and the metric every 8) and fits each in a fresh
process, so that its peak resident memory (``ru_maxrss``) is its own. The fit is the default
one with fewer iterations (the training loop's cost does not depend on the sweep size: it
samples fixed-size batches), two cross-fitted members, one worker process. Sizes are
interleaved over ``--repeats`` rounds and medians reported; the machine's load average is
recorded with them, since the machine is shared, and CPU time (``process_time``, which
waiting for a core does not inflate) next to wall time. The growth is stated as the log-log
slope between the smallest and the largest size.

Writes ``benchmarks/results/fit_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fit_scaling.json"
SIZES = (48, 200, 1000)
ITERATIONS = 100

CHILD = """
import json, resource, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from tests.synthetic import FAMILIES, SyntheticTask, simulate
from tracker_sched.fit.generative import FitConfig, fit_sweep

n, iterations = int(sys.argv[1]), int(sys.argv[2])
peaks = np.geomspace(1e-3, 1e-1, 8)
task = SyntheticTask()
runs = [simulate(task, FAMILIES[i % 3], float(peaks[(i // 3) % 8]), i // 24)
        for i in range(n)]
for k, r in enumerate(runs):  # unique ids: seeds repeat across families
    runs[k] = r.model_copy(update={"run_id": f"{r.run_id}-{k}"})
t0, c0 = time.perf_counter(), time.process_time()
result = fit_sweep(runs, FitConfig(max_iterations=iterations, ensemble=2), workers=1,
                   progress=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
print(json.dumps({"runs": n, "runs_used": result.report.runs_used, "fit_s": wall,
                  "cpu_s": cpu, "peak_rss_mib": rss}))
"""


def one(n: int, iterations: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n), str(iterations)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    samples: dict[int, list[dict[str, Any]]] = {n: [] for n in SIZES}
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        for n in SIZES:  # interleaved: a load change hits every size alike
            samples[n].append(one(n, args.iterations))
            print(json.dumps(samples[n][-1]), flush=True)
    rows = []
    for n in SIZES:
        rows.append({"runs": n,
                     "fit_s_median": round(float(np.median([s["fit_s"] for s in samples[n]])), 2),
                     "cpu_s_median": round(float(np.median([s["cpu_s"] for s in samples[n]])), 2),
                     "peak_rss_mib_median": round(float(np.median(
                         [s["peak_rss_mib"] for s in samples[n]])), 1),
                     "samples": samples[n]})
    lo, hi = rows[0], rows[-1]
    ratio = hi["runs"] / lo["runs"]

    def slope(key: str) -> float:
        return round(float(np.log(hi[key] / lo[key]) / np.log(ratio)), 2)

    result = {
        "benchmark": "fit_scaling",
        "command": "nice -n 10 python -m benchmarks.fit_scaling",
        "fit": {"max_iterations": args.iterations, "ensemble": 2, "workers": 1,
                "grid_points": 100, "steps_per_run": 400},
        "sizes": rows,
        "growth": {"fit_s_loglog_slope": slope("fit_s_median"),
                   "cpu_s_loglog_slope": slope("cpu_s_median"),
                   "peak_rss_loglog_slope": slope("peak_rss_mib_median"),
                   "note": "slope 1 = linear in the number of runs, 0 = independent of it"},
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1_5_15_end": [round(x, 2) for x in os.getloadavg()],
                    "nice": os.nice(0),
                    "parent_rss_mib": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sizes"}, indent=2))


if __name__ == "__main__":
    main()

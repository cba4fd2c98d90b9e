"""How long an unfittable sweep costs: `tracker-sched fit` and `validate` as a user runs them.

Issue 10's target: on a sweep that cannot be fitted, ``fit`` exits non-zero in under 10
seconds with every reason listed. Each command runs in a fresh process (interpreter
start-up and imports included), the commands interleaved over ``--rounds`` rounds;
medians of wall and CPU time are printed and written to
``benchmarks/results/fail_fast.json``.

    python -m benchmarks.fail_fast [--rounds 5]

The sweep: 4 runs of 2 configurations x 2 seeds, logged every 3 steps with a budget of
152 steps, where one seed of each configuration was killed and the finished ones stop at
step 120: no run reached its budget, so nothing can name the sweep's best run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracker_sched.schema import RunRecord, Series
from tracker_sched.sources.files import write_sweep

RESULTS = Path(__file__).parent / "results" / "fail_fast.json"


def unfittable_sweep() -> list[RunRecord]:
    steps = list(range(3, 121, 3))
    runs = []
    for c in range(2):
        for seed in (0, 1):
            lr = 0.1 * (c + 1)
            n = len(steps)
            runs.append(RunRecord(
                run_id=f"k{c}-{seed}", state="killed" if seed else "finished", total_steps=152,
                config={"lr": lr, "seed": seed},
                train_loss=Series(step=steps, value=[2.0 / (1 + i) + lr for i in range(n)]),
                lr=Series(step=steps, value=[lr] * n),
                val_metric=Series(step=steps, value=[0.5 + lr * i / n for i in range(n)]),
                metric_keys={"val_metric": "val_acc"},
            ))
    return runs


def timed(argv: list[str]) -> dict[str, float | int | str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": cpu,
            "reasons_listed": sum((proc.stdout + proc.stderr).count(f"k{c}-{s}:")
                                  for c in (0, 1) for s in (0, 1))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    exe = str(Path(sys.executable).with_name("tracker-sched"))
    rows: dict[str, list[dict[str, float | int | str]]] = {"fit": [], "validate": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_sweep(Path(tmp) / "sweep.jsonl", unfittable_sweep())
        commands = {
            "fit": [exe, "fit", "--path", str(path), "--out", str(Path(tmp) / "b")],
            "validate": [exe, "validate", "--path", str(path)],
        }
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                rows[name].append(timed(cmd))
        wrote = (Path(tmp) / "b").exists()
    report: dict[str, object] = {"rounds": args.rounds, "load_avg_1m": os.getloadavg()[0],
                                 "bundle_written": wrote}
    for name, got in rows.items():
        summary = {
            "exit_codes": sorted({int(r["rc"]) for r in got}),
            "median_wall_s": round(statistics.median(float(r["wall_s"]) for r in got), 2),
            "max_wall_s": round(max(float(r["wall_s"]) for r in got), 2),
            "median_cpu_s": round(statistics.median(float(r["cpu_s"]) for r in got), 2),
            "every_run_named": all(int(r["reasons_listed"]) >= 4 for r in got),
        }
        report[name] = summary
        print(f"{name:9s} exit {summary['exit_codes']}  wall median {summary['median_wall_s']} s "
              f"(max {summary['max_wall_s']} s), CPU median {summary['median_cpu_s']} s, "
              f"every run named: {summary['every_run_named']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

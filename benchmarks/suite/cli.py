"""The suite's command line.

    python -m benchmarks.suite [--tasks T ...] [--block design|confirm] [--seeds 3]
                               [--workers 2] [--smoke] [--print]

Runs each task through ``benchmarks.suite.protocol`` on one block of seeds,
writes ``benchmarks/results/suite.json`` (that block's section; other tasks
and the other block are kept), one plot per task
(``suite_<task>_<block>.png``) and prints the table. Cached under
``runs/suite/<task>/``: a second call trains nothing it has trained before.
``--smoke``: a few dozen steps per run, 2 families x 3 peaks, tiny fits, separate
caches; for the test, not for numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.suite import report
from benchmarks.suite.jobs import suite_pool
from benchmarks.suite.protocol import Settings, block_seeds, run_task
from benchmarks.suite.tasks import TASKS, Task, get


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite",
                                 description="the multi-task benchmark suite (issue 11)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                    help=f"tasks to run, in order (default: all: {', '.join(TASKS)})")
    ap.add_argument("--block", choices=["design", "confirm"], default="design",
                    help="design seeds 100.. (choices are made here) or confirm seeds 200.. "
                    "(report only)")
    ap.add_argument("--seeds", type=int, default=3,
                    help="seeds of the block per task (default: 3, the 60-minute default run; "
                    "the committed tables used 8)")
    ap.add_argument("--workers", type=int, default=2,
                    help="processes for training runs and fits (default: 2, the cores of the "
                    "60-minute target machine)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny budgets and fits, separate caches: checks the machinery only")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/suite"))
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--stem", default=None, help="output name (default suite, suite_smoke)")
    ap.add_argument("--print", dest="print_only", action="store_true",
                    help="print the table of the block from the JSON and exit")
    ns = ap.parse_args(argv)
    stem = ns.stem or ("suite_smoke" if ns.smoke else "suite")
    out = ns.out_dir / f"{stem}.json"
    if ns.print_only:
        if not out.exists():
            raise SystemExit(f"{out} does not exist: run the suite first")
        doc = json.loads(out.read_text())
        if ns.block not in doc.get("blocks", {}):
            raise SystemExit(f"{out} has no {ns.block} block")
        print(report.table(doc["blocks"][ns.block], ns.block))
        return 0
    tasks = [get(n) for n in ns.tasks]
    seeds = block_seeds(ns.block, ns.seeds)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    done = {}
    workers = max(1, ns.workers)
    with suite_pool(workers) as pool:  # one pool for every task: started once
        settings = Settings(runs_dir=ns.runs_dir, workers=workers, smoke=ns.smoke, pool=pool)
        block = _run_tasks(tasks, ns, argv, out, seeds, settings, done)
    print(report.table(block, ns.block))
    print(f"suite: {time.perf_counter() - t0:.0f} s")
    return 0


def _run_tasks(tasks: list[Task], ns: argparse.Namespace, argv: list[str] | None, out: Path,
               seeds: list[int], settings: Settings, done: dict[str, Any]) -> Any:
    """Every task through the protocol, its section merged into ``out`` and its plot
    written as soon as it ends; returns the merged block."""
    block: Any = None
    stem = out.stem
    for task in tasks:
        done[task.name] = run_task(task, ns.block, seeds, settings)
        section = {
            "label": ("design block: every choice is made here; confirm numbers come from "
                      "the confirm block" if ns.block == "design" else
                      "confirmation block: report only, nothing chosen here"),
            "smoke": ns.smoke, "seeds_per_task": ns.seeds,
            "command": "python -m benchmarks.suite " + " ".join(argv or sys.argv[1:]),
        }
        block = report.merge(out, ns.block, section, {task.name: done[task.name]})
        png = ns.out_dir / f"{stem}_{task.name}_{ns.block}.png"
        report.plot(png, task.name, done[task.name], ns.block)
        print(f"  {task.name}: {done[task.name]['time_s']['task_wall_this_call']:.0f} s; "
              f"wrote {out} and {png}", flush=True)
    return block

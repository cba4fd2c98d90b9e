"""The suite's two fits one after the other, and side by side on one shared pool, on one task.

    python -m benchmarks.suite.shared_fits RUNS_DIR [--task digits-sgd] [--workers 2]

``RUNS_DIR`` is a default run's ``--runs-dir``: the task's sweep is read back from the
tracker store that run logged (copied to a scratch folder first, so the run's files are
not touched). Both ways fit the product's default generative and control fits on
``--workers`` processes, alternately (sequential, shared, sequential, shared, ...
``--pairs`` times), and the script prints the median wall time of each way, their ratio,
and whether every member's weights came out bit for bit the same. Writes
``benchmarks/results/shared_fits.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.suite.protocol import Settings, _fit, _fits
from benchmarks.suite.tasks import TASKS
from benchmarks.suite.tracking import log_and_read

OUT = Path(__file__).resolve().parents[1] / "results" / "shared_fits.json"


def _same(a: Any, b: Any) -> bool:
    """Every member's weights equal, bit for bit."""
    if len(a.models) != len(b.models):
        return False
    for x, y in zip(a.models, b.models, strict=True):
        sx, sy = x.state_dict(), y.state_dict()
        if sx.keys() != sy.keys() or not all(torch.equal(sx[k], sy[k]) for k in sx):
            return False
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs_dir", type=Path)
    ap.add_argument("--task", default="digits-sgd", choices=sorted(TASKS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    task = TASKS[args.task]
    src = args.runs_dir / args.task / "tracker"
    if not (src / "tracker.json").exists():
        raise SystemExit(f"no tracker store of a finished run under {src}")
    settings = Settings(runs_dir=args.runs_dir, workers=args.workers)
    walls: dict[str, list[float]] = {"sequential": [], "shared": []}
    with tempfile.TemporaryDirectory(prefix="shared_fits_") as tmp:
        scratch = Path(tmp)
        shutil.copytree(src, scratch / "tracker")
        read, _ = log_and_read([], task.tracker, scratch / "tracker", task.name)
        runs = read.runs
        print(f"{args.task}: {len(runs)} runs read back from {task.tracker}", flush=True)
        bundles: dict[str, tuple[Any, Any]] = {}
        for i in range(args.pairs):
            for way in ("sequential", "shared"):
                root = scratch / f"{way}{i}"
                t0 = time.perf_counter()
                if way == "shared":
                    gen, ctl, _ = _fits(runs, root, settings)
                else:
                    gen = _fit(runs, root / "bundle_generative", "generative", settings)
                    ctl = _fit(runs, root / "bundle_control", "control", settings)
                walls[way].append(time.perf_counter() - t0)
                print(f"  {way}: {walls[way][-1]:.0f} s", flush=True)
                bundles[way] = (gen, ctl)
        same = all(_same(a, b) for a, b in zip(bundles["sequential"], bundles["shared"],
                                                strict=True))
    med = {w: statistics.median(v) for w, v in walls.items()}
    report = {
        "command": f"python -m benchmarks.suite.shared_fits <runs-dir> --task {args.task} "
                   f"--workers {args.workers} --pairs {args.pairs}",
        "task": args.task, "runs": len(runs), "workers": args.workers,
        "wall_s": {w: [round(x, 1) for x in v] for w, v in walls.items()},
        "median_s": {w: round(x, 1) for w, x in med.items()},
        "shared_over_sequential": round(med["shared"] / med["sequential"], 3),
        "bundles_bit_identical": same,
    }
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()

"""Ingest benchmark: read a sweep from a local MLflow server, bulk endpoint vs per-metric calls.

    python -m benchmarks.ingest_mlflow [--runs 100] [--steps 1000] [--repeats 3]

Logs ``runs`` runs x 3 metrics x ``steps`` points under one parent run to a real
``mlflow server`` on 127.0.0.1 (sqlite, one worker), then reads the sweep back with
``MlflowSource`` three ways, interleaved in the same process: its default bulk path
(the get-history-bulk-interval endpoint, exact), the older 25,000-point
get-history-bulk endpoint alone, and per-(run, metric) ``get_metric_history`` calls
(8 threads, MLflow's portable path). All three must return identical records. A fourth,
lossy row accepts the server's even sampling to 250 points per run and metric, and
reports what that changes on the fit's 100-point progress grid. Prints
medians and the ratio per-metric / default; writes
``benchmarks/results/ingest_mlflow.json``. Goal: ratio >= 2x. It runs once per server
configuration, on the same store: one worker (what the tests start) and four
(``mlflow server``'s own default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.mlflow_server import local_mlflow_server
from tracker_sched.schema import RunRecord, Series
from tracker_sched.sources.mlflow_log import log_sweep
from tracker_sched.sources.mlflow_source import MlflowSource


def synthetic_sweep(runs: int, steps: int) -> list[RunRecord]:
    """Smooth, plausible curves; ingest speed does not depend on what they mean."""
    rng = np.random.default_rng(0)
    out = []
    s = list(range(1, steps + 1))
    for i in range(runs):
        peak = float(10 ** rng.uniform(-4, -1))
        tau = np.arange(1, steps + 1) / steps
        lr = peak * 0.5 * (1 + np.cos(np.pi * tau)) + 1e-7
        loss = 2.3 * np.exp(-3 * tau) + 0.05 * rng.random(steps)
        acc = 0.95 - 0.85 * np.exp(-4 * tau) + 0.01 * rng.random(steps)
        out.append(RunRecord(
            run_id=f"run-{i:03d}", total_steps=steps, config={"peak_lr": peak, "seed": i},
            train_loss=Series(step=s, value=loss.tolist()), lr=Series(step=s, value=lr.tolist()),
            val_metric=Series(step=s, value=acc.tolist()),
            metric_keys={"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"},
        ))
    return out


SAMPLED = 250  # points per run and metric when sampling is accepted
GRID = 100  # FitConfig.grid_points


def _grid_deviation(exact: list[RunRecord], sampled: list[RunRecord]) -> dict[str, float]:
    """Largest difference the sampling makes on the fit's progress grid, per channel
    (log10 train loss, validation metric, log10 lr), after the fit's own resampling."""
    from tracker_sched.data.grid import resample

    out = {"train_loss": 0.0, "val_metric": 0.0, "lr": 0.0}
    for a, b in zip(exact, sampled, strict=True):
        for role, log in (("train_loss", True), ("val_metric", False), ("lr", True)):
            sa, sb = getattr(a, role), getattr(b, role)
            total = a.total_steps or max(sa.step)
            ya, ma = resample(np.asarray(sa.step), np.asarray(sa.value), total, GRID)
            yb, mb = resample(np.asarray(sb.step), np.asarray(sb.value), total, GRID)
            if log:
                ya, yb = np.log10(ya), np.log10(yb)
            both = ma & mb
            if both.any():
                out[role] = max(out[role], float(np.nanmax(np.abs(ya - yb)[both])))
    return out


def _measure(uri: str, parent: str, repeats: int) -> dict[str, Any]:
    """All four read paths against one server, interleaved ``repeats`` times."""
    times: dict[str, list[float]] = {"bulk": [], "bulk-full": [], "per-metric": [], "sampled": []}
    records: dict[str, list[RunRecord]] = {}
    for _ in range(repeats):
        for name, bulk in (("bulk", True), ("bulk-full", True), ("per-metric", False),
                           ("sampled", True)):
            src = MlflowSource("ingest", parent_run_id=parent, tracking_uri=uri,
                               use_bulk=bulk, progress=False,
                               bulk_endpoint="full" if name == "bulk-full" else "interval",
                               sample_points=SAMPLED if name == "sampled" else None)
            t0 = time.perf_counter()
            res = src.read()
            times[name].append(time.perf_counter() - t0)
            records[name] = res.runs
            assert src.history_path == ("bulk" if bulk else "client"), src.history_path
    sampled = records.pop("sampled")
    dumps = {k: [r.model_dump_json() for r in v] for k, v in records.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"times_s": times, "median_s": med, "ratio": med["per-metric"] / med["bulk"],
            "identical": dumps["bulk"] == dumps["per-metric"] == dumps["bulk-full"],
            "sampled_ratio": med["per-metric"] / med["sampled"],
            "sampled_grid_max_abs_diff": _grid_deviation(records["bulk"], sampled),
            "runs_read": len(records["bulk"])}


def _print(workers: int, r: dict[str, Any]) -> None:
    times, med, dev = r["times_s"], r["median_s"], r["sampled_grid_max_abs_diff"]
    print(f"\nserver with {workers} worker(s)")
    print(f"{'path':<32} {'median s':>9}  all")
    for key, label in (("bulk", "bulk-interval (default, exact)"),
                       ("bulk-full", "get-history-bulk only"),
                       ("per-metric", "get_metric_history x8 threads"),
                       ("sampled", f"interval, sampled to {SAMPLED} pts")):
        print(f"{label:<32} {med[key]:>9.2f}  " + ", ".join(f"{t:.2f}" for t in times[key]))
    print(f"sampled (lossy): {r['sampled_ratio']:.1f}x; on the fit's {GRID}-point grid, max "
          f"|diff| log loss {dev['train_loss']:.4f}, val {dev['val_metric']:.4f}, "
          f"log lr {dev['lr']:.4f}")
    print(f"ratio per-metric / default {r['ratio']:.1f}x (goal >= 2x: "
          f"{'ok' if r['ratio'] >= 2 else 'MISS'}); identical records: {r['identical']}; "
          f"{r['runs_read']} runs read")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--server-workers", type=int, nargs="+", default=[1, 4],
                    help="server configurations, one after the other on the same store "
                    "(1: the tests' server; 4: mlflow server's own default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest_mlflow.json"))
    ns = ap.parse_args(argv)

    sweep = synthetic_sweep(ns.runs, ns.steps)
    results: dict[str, Any] = {}
    log_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        parent = ""
        for workers in ns.server_workers:
            with local_mlflow_server(Path(tmp), workers=workers) as uri:
                if not parent:
                    t0 = time.perf_counter()
                    parent = log_sweep(sweep, "ingest", tracking_uri=uri)
                    log_s = time.perf_counter() - t0
                    print(f"logged {ns.runs} runs x 3 metrics x {ns.steps} steps in "
                          f"{log_s:.1f} s")
                results[str(workers)] = _measure(uri, parent, ns.repeats)
            _print(workers, results[str(workers)])
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps({"runs": ns.runs, "steps": ns.steps, "metrics": 3,
                                  "log_s": log_s, "sampled_points": SAMPLED,
                                  "by_server_workers": results}, indent=2))
    print(f"wrote {ns.out}")
    return 0 if all(r["identical"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

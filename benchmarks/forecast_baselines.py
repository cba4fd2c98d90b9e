"""The fit report's forecast table and verdict, recomputed from fitted bundles and their sweeps.

No refitting: the sweep is prepared again with the bundle's own fit settings (same seed,
so the same folds), each run is forecast by the bundle's member that held it out, and the
four methods (model, nearest, last, curve) are scored as the fit scores them
(``tracker_sched.fit.report``). The model rows must match the ones stored in the bundle;
the largest difference is printed as a check. Then the forecast verdict
(``tracker_sched.fit.trust``).

Two kinds of input:

- ``--suite DIR``: every ``DIR/<task>/bundle_generative`` with its sweep read back from
  ``DIR/<task>/tracker`` (MLflow sqlite or W&B offline files), as the suite fitted them.
  The tracker folder is copied to a temporary folder first, so nothing under DIR is written.
- ``--bundle B --sweep S``: one bundle and its sweep as a ``files`` source (.jsonl).

Writes ``benchmarks/results/forecast_baselines.json``::

    python -m benchmarks.forecast_baselines --suite /path/to/runs/suite
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import METHODS, ForecastReport
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.prepare import prepare
from tracker_sched.fit.report import (
    cross_fit_report,
    curve_baseline,
    forecast_report,
    format_forecast,
)
from tracker_sched.fit.trust import forecast_trust, format_trust
from tracker_sched.model.forecast import Forecaster
from tracker_sched.schema import RunRecord

OUT = Path(__file__).parent / "results" / "forecast_baselines.json"


def recompute(bundle: Bundle, runs: list[RunRecord]
              ) -> tuple[ForecastReport, float, float, float]:
    """The bundle's held-out report with every method, the largest difference of its model
    rows from the stored ones, the seconds the whole report took and the seconds the curve
    baseline alone takes (every run, every report tau)."""
    m = bundle.manifest
    config = FitConfig.model_validate({**m.fit, "model": m.model})
    prep = prepare(runs, config)
    t0 = time.perf_counter()
    if prep.cross_fit:
        report = cross_fit_report(
            [(Forecaster([mod]), tr, ho) for mod, (tr, ho) in zip(bundle.models, prep.folds,
                                                                    strict=True)],
            prep.tensors(np.arange(len(prep.runs))), prep.norm, config.report_taus,
            config.window, prep.grid.complete(), direction=prep.direction)
    else:
        report = forecast_report(
            Forecaster(bundle.models), prep.tensors(prep.train_idx),
            prep.tensors(prep.holdout_idx), prep.norm, config.report_taus, config.window,
            prep.grid.subset(prep.holdout_idx).complete(), direction=prep.direction)
    wall = time.perf_counter() - t0
    data = prep.tensors(np.arange(len(prep.runs)))
    t1 = time.perf_counter()
    for tau in config.report_taus:  # the curve baseline alone, every run at once
        end = round(tau * (m.grid_points - 1))
        curve_baseline(data, data, end, config.window, prep.direction,
                       torch.zeros(len(prep.runs), m.grid_points - end, 3))
    curve_s = time.perf_counter() - t1
    stored = m.report.holdout
    assert stored is not None
    diff = max(abs(r.rmse_pooled - report.row(r.tau, r.channel, r.method).rmse_pooled)
               for r in stored.forecast if r.method == "model")
    return report, diff, wall, curve_s


def _scaled(report: ForecastReport, is_acc: bool) -> dict[str, Any]:
    s = 100.0 if is_acc else 1.0
    out: dict[str, Any] = {}
    for tau in sorted({r.tau for r in report.ranking}):
        out[f"{tau:g}"] = {
            m: {"rmse_pooled": report.row(tau, "val_metric", m).rmse_pooled * s,
                "rmse_median_run": report.row(tau, "val_metric", m).rmse_median_run * s,
                "spearman": report.rank(tau, m).spearman}
            for m in METHODS
        }
    return out


def one(name: str, bundle: Bundle, runs: list[RunRecord]) -> dict[str, Any]:
    m = bundle.manifest
    report, diff, wall, curve_s = recompute(bundle, runs)
    trust = forecast_trust(report)
    is_acc = m.metrics.direction == "max" and 0 <= m.sweep.best_config_mean_final_val <= 1
    print(f"== {name}: {m.sweep.runs_used} runs, {m.report.scheme} ({m.members} members), "
          f"val {m.metrics.val_metric} ({m.metrics.direction}); report recomputed in "
          f"{wall:.2f} s (the curve baseline {curve_s * 1000:.0f} ms); model rows vs stored: "
          f"max |diff| {diff:.2e}")
    print(format_forecast(report, val_scale=100 if is_acc else 1,
                          val_unit="points" if is_acc else "metric units"))
    print(format_trust(trust, val_scale=100 if is_acc else 1,
                       val_unit="points" if is_acc else ""))
    print()
    return {"runs": m.sweep.runs_used, "scheme": m.report.scheme, "members": m.members,
            "direction": m.metrics.direction, "val_unit": "points" if is_acc else "metric",
            "model_rows_max_diff": diff, "report_s": wall, "curve_s": curve_s,
            "val_metric": _scaled(report, is_acc),
            "trust": trust.model_dump(mode="json")}


def suite_task(folder: Path) -> tuple[Bundle, list[RunRecord]]:
    """A suite task's generative bundle and its sweep, read from a copy of its tracker."""
    info = json.loads((folder / "tracker" / "tracker.json").read_text())
    bundle = Bundle.load(folder / "bundle_generative")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "tracker"
        shutil.copytree(folder / "tracker", copy)
        if info["tracker"] == "mlflow":
            from tracker_sched.sources.mlflow_source import MlflowSource

            read = MlflowSource(folder.name, parent_run_id=info["parent_run_id"],
                                tracking_uri=f"sqlite:///{copy / 'mlflow.db'}",
                                progress=False).read()
        else:
            from tracker_sched.sources.wandb_offline import WandbOfflineSource

            read = WandbOfflineSource(copy / "wandb").read()
    return bundle, read.runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", type=Path, help="a suite runs folder (<task>/bundle_generative)")
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--sweep", type=Path, help="the bundle's sweep (.jsonl, files source)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    if args.suite:
        for folder in sorted(p for p in args.suite.iterdir()
                             if (p / "bundle_generative" / "bundle.json").exists()):
            bundle, runs = suite_task(folder)
            results[folder.name] = one(folder.name, bundle, runs)
    if args.bundle:
        from tracker_sched.sources.files import read_sweep

        results[args.bundle.name] = one(str(args.bundle), Bundle.load(args.bundle),
                                        read_sweep(args.sweep).runs)
    levels = {k: v["trust"]["level"] for k, v in results.items()}
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in levels.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tasks": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

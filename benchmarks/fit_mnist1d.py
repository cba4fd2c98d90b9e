"""Fit benchmark: generate the 48-run MNIST-1D CNN sweep, fit it, score forecasts on fresh seeds.

    python -m benchmarks.fit_mnist1d [--fit-seeds 0 1] [--workers 2] [--regenerate]

Splits: the sweep (seeds 0 and 1) is what the fit sees; the fit holds out 20% of
its runs for early stopping and its own report. The *test* set is a separate
sweep of the same 24 configurations on fresh seeds (2 and 3) that neither the
fit nor its early stopping ever sees: the goals are checked on it alone.

Prints the fit wall time, the holdout and fresh-seed forecast tables, the
rank correlations and a goal check; writes ``benchmarks/results/fit_mnist1d.json``
and a forecast plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.make_sweep import config_table, format_table, make_sweep, write_jsonl
from tracker_sched.bundle.manifest import ForecastReport
from tracker_sched.data.grid import SweepTensors, to_grid
from tracker_sched.data.validation import validate_sweep
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.fit.report import forecast_report, format_forecast
from tracker_sched.sources.files import read_sweep

SWEEP_SEEDS = (0, 1)
FRESH_SEEDS = (2, 3)
GOAL_FIT_S = 180.0
GOAL_RHO = 0.8


def _ensure_sweep(path: Path, seeds: tuple[int, ...], regenerate: bool, workers: int) -> float:
    """Generate the sweep unless a file with exactly these seeds exists. Returns seconds spent."""
    if path.exists() and not regenerate:
        runs = read_sweep(path).runs
        have = {r.config.get("seed") for r in runs}
        if have == set(seeds) and len(runs) == 24 * len(seeds):
            print(f"using existing {path} ({len(runs)} runs; --regenerate to rebuild)")
            return 0.0
    t0 = time.perf_counter()
    results = make_sweep(seeds=seeds, workers=workers)
    write_jsonl(path, results)
    wall = time.perf_counter() - t0
    print(f"generated {path}: {len(results)} runs in {wall:.0f} s")
    print(format_table(config_table(results)[:6]))
    return wall


def _goal_rows(rep: ForecastReport) -> list[dict[str, Any]]:
    rows = []
    for tau in sorted({r.tau for r in rep.forecast}):
        m = rep.row(tau, "val_metric", "model")
        n = rep.row(tau, "val_metric", "nearest")
        rows.append({
            "tau": tau,
            "model_pooled_pts": 100 * m.rmse_pooled,
            "nearest_pooled_pts": 100 * n.rmse_pooled,
            "model_median_pts": 100 * m.rmse_median_run,
            "nearest_median_pts": 100 * n.rmse_median_run,
            "pooled_ok": m.rmse_pooled < n.rmse_pooled,
            "median_ok": m.rmse_median_run < n.rmse_median_run,
            "spearman_model": rep.rank(tau, "model").spearman,
            "spearman_nearest": rep.rank(tau, "nearest").spearman,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--fit-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--config", type=Path, help="JSON FitConfig fields (default: the defaults)")
    ns = ap.parse_args(argv)

    ns.runs_dir.mkdir(parents=True, exist_ok=True)
    ns.out_dir.mkdir(parents=True, exist_ok=True)
    sweep_path = ns.runs_dir / "cnn_sweep.jsonl"
    fresh_path = ns.runs_dir / "cnn_fresh_seeds.jsonl"
    gen_s = _ensure_sweep(sweep_path, SWEEP_SEEDS, ns.regenerate, ns.workers)
    gen_s += _ensure_sweep(fresh_path, FRESH_SEEDS, ns.regenerate, ns.workers)

    sweep = read_sweep(sweep_path).runs
    fresh_runs = validate_sweep(read_sweep(fresh_path).runs).runs
    base = json.loads(ns.config.read_text()) if ns.config else {}

    fits: list[dict[str, Any]] = []
    first = None
    for seed in ns.fit_seeds:
        config = FitConfig.model_validate({**base, "seed": seed})
        print(f"\n=== fit seed {seed}: {len(sweep)} runs, ensemble {config.ensemble}, "
              f"{config.max_iterations} max iterations, {ns.workers} workers")
        t0 = time.perf_counter()
        result = fit_sweep(sweep, config, workers=ns.workers, progress=sys.stderr.isatty())
        wall = time.perf_counter() - t0
        prep = result.prepared
        grid = to_grid(fresh_runs, config.grid_points, prep.norm.transforms)
        fresh_t = SweepTensors.from_grid(grid, prep.norm)
        # The nearest-run baseline searches the whole sweep, as a user could.
        all_t = prep.tensors(np.arange(len(prep.runs)))
        fresh = forecast_report(
            result.bundle.forecaster, all_t, fresh_t, prep.norm, config.report_taus,
            config.window, grid.complete(),
        )
        assert result.report.holdout is not None
        print(f"fit wall time {wall:.1f} s (goal <= {GOAL_FIT_S:.0f} s); members "
              + ", ".join(f"{m['iterations']} it (best {m['best_iteration']})"
                          for m in result.report.members))
        scheme = (f"out of fold, {result.report.folds} folds" if result.report.scheme == "cross-fit"
                  else "held-out runs")
        print(f"\n-- the sweep's own runs, {scheme} (these also drive early stopping)")
        print(format_forecast(result.report.holdout, val_scale=100, val_unit="points"))
        print(f"\n-- fresh seeds {FRESH_SEEDS} ({len(fresh_runs)} runs, never seen by the fit)")
        print(format_forecast(fresh, val_scale=100, val_unit="points"))
        fits.append({
            "seed": seed,
            "wall_s": wall,
            "members": result.report.members,
            "holdout": result.report.holdout.model_dump(),
            "fresh": fresh.model_dump(),
            "goals": _goal_rows(fresh),
        })
        if first is None:
            first = (result, fresh_t, grid)

    print("\n=== goals, on fresh seeds "
          "(val accuracy forecast RMSE in points; model vs nearest run)")
    ok_all = True
    for fit in fits:
        print(f"fit seed {fit['seed']}: wall {fit['wall_s']:.0f} s "
              f"[{'ok' if fit['wall_s'] <= GOAL_FIT_S else 'MISS'}]")
        ok_all &= fit["wall_s"] <= GOAL_FIT_S
        for g in fit["goals"]:
            mid = abs(g["tau"] - 0.5) < 1e-9
            rho_ok = g["spearman_model"] is not None and g["spearman_model"] >= GOAL_RHO
            print(f"  tau {g['tau']:.2f}: pooled {g['model_pooled_pts']:.2f} vs "
                  f"{g['nearest_pooled_pts']:.2f} [{'ok' if g['pooled_ok'] else 'MISS'}]  "
                  f"median run {g['model_median_pts']:.2f} vs {g['nearest_median_pts']:.2f} "
                  f"[{'ok' if g['median_ok'] else 'MISS'}]  rank corr {g['spearman_model']:.3f}"
                  + (f" [{'ok' if rho_ok else 'MISS'}]" if mid else ""))
            ok_all &= g["pooled_ok"] and g["median_ok"] and (rho_ok or not mid)
    if len(fits) > 1:
        for tau_i, tau in enumerate(r["tau"] for r in fits[0]["goals"]):
            vals = [f["goals"][tau_i]["model_pooled_pts"] for f in fits]
            print(f"fit-seed spread at tau {tau:.2f}: pooled RMSE "
                  + " / ".join(f"{v:.2f}" for v in vals)
                  + f" (sd {statistics.stdev(vals):.2f})")
    print("all goals met" if ok_all else "some goals missed (see MISS above)")

    out = ns.out_dir / "fit_mnist1d.json"
    out.write_text(json.dumps({
        "command": "python -m benchmarks.fit_mnist1d " + " ".join(argv or sys.argv[1:]),
        "sweep_runs": len(sweep),
        "fresh_runs": len(fresh_runs),
        "generation_s": gen_s,
        "torch_threads_main": torch.get_num_threads(),
        "fit_config": FitConfig.model_validate(base).model_dump(mode="json"),
        "fits": fits,
        "all_goals_met": ok_all,
    }, indent=2))
    print(f"wrote {out}")
    if first is not None:
        try:
            from tracker_sched.fit.plots import plot_forecasts

            result, fresh_t, grid = first
            cfg = FitConfig.model_validate(base)
            # One seed-2 run per schedule family at two peak lrs near the sweep's best.
            pick = [i for i, rid in enumerate(grid.run_ids)
                    if rid.endswith("-s2") and ("-1e-02-" in rid or "-3e-02-" in rid)]
            ix = torch.as_tensor(pick)
            shown = SweepTensors(values=fresh_t.values[ix], mask=fresh_t.mask[ix])
            png = plot_forecasts(ns.out_dir / "fit_mnist1d_fresh.png", result.bundle.forecaster,
                                 shown, result.prepared.norm, [grid.run_ids[i] for i in pick],
                                 cfg.report_taus, cfg.window, max_runs=len(pick))
            print(f"wrote {png}")
        except ImportError as exc:
            print(f"no plot: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

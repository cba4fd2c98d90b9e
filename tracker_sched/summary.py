"""What a bundle remembers of its sweep: the best configuration, its schedule, the lr range."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np

from tracker_sched.bundle import RunTrace, SweepSummary
from tracker_sched.dataset import LOG_LR, TRAIN_LOSS, VAL_METRIC, GridSweep
from tracker_sched.errors import FitError
from tracker_sched.schema import Direction
from tracker_sched.validation import CleanRun

TOP_RUNS = 5


def _config_group(config: dict[str, Any]) -> str:
    """Runs that differ only in their seed belong to the same configuration."""
    core = {k: v for k, v in config.items() if "seed" not in k.lower()}
    return json.dumps(core, sort_keys=True, default=str)


def _listed(x: np.ndarray, m: np.ndarray) -> list[float | None]:
    return [float(v) if ok else None for v, ok in zip(x, m, strict=True)]


def summarise(
    runs: list[CleanRun], grid: GridSweep, direction: Direction
) -> SweepSummary:
    """Pick the best configuration by mean final validation metric over its seeds."""
    complete = grid.complete()
    if not complete.any():
        raise FitError("no run reached the end of its budget; cannot name the sweep's best run")
    sign = 1.0 if direction == "max" else -1.0
    finals = {run.run_id: run.final_val() for run, ok in zip(runs, complete, strict=True) if ok}
    groups: dict[str, list[CleanRun]] = defaultdict(list)
    for run, ok in zip(runs, complete, strict=True):
        if ok:
            groups[_config_group(dict(run.record.config))].append(run)
    # A configuration with any diverged seed is not a safe best.
    diverged_groups = {
        _config_group(dict(run.record.config)) for run in runs if run.diverged
    }
    safe = {k: v for k, v in groups.items() if k not in diverged_groups} or groups
    best_key = max(safe, key=lambda k: sign * float(np.mean([finals[r.run_id] for r in safe[k]])))
    best_group = safe[best_key]
    best_run = max(best_group, key=lambda r: sign * finals[r.run_id])
    b = runs.index(best_run)

    lr_all = np.concatenate([r.series["lr"].value for r in runs])
    ranked = sorted(finals, key=lambda rid: -sign * finals[rid])[:TOP_RUNS]
    index = {r.run_id: i for i, r in enumerate(runs)}
    top = []
    for rid in ranked:
        i = index[rid]
        top.append(RunTrace(
            run_id=rid,
            config=dict(runs[i].record.config),
            total_steps=runs[i].total_steps,
            final_val=finals[rid],
            train_loss=_listed(grid.values[i, :, TRAIN_LOSS], grid.mask[i, :, TRAIN_LOSS]),
            log_lr=_listed(grid.values[i, :, LOG_LR], grid.mask[i, :, LOG_LR]),
            val_metric=_listed(grid.values[i, :, VAL_METRIC], grid.mask[i, :, VAL_METRIC]),
        ))
    lr_grid = grid.values[b, :, LOG_LR]
    observed = grid.mask[b, :, LOG_LR]
    lr_grid = np.interp(grid.tau, grid.tau[observed], lr_grid[observed])  # fill the edges
    return SweepSummary(
        runs_used=len(runs),
        best_run_id=best_run.run_id,
        best_config=dict(best_run.record.config),
        best_config_mean_final_val=float(np.mean([finals[r.run_id] for r in best_group])),
        best_config_runs=len(best_group),
        lr_min=float(lr_all.min()),
        lr_max=float(lr_all.max()),
        best_peak_lr=float(best_run.series["lr"].value.max()),
        warmup_tau=[float(t) for t in grid.tau],
        warmup_lr=[float(10.0 ** v) for v in lr_grid],
        top_runs=top,
    )

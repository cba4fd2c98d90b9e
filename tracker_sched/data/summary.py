"""What a bundle remembers of its sweep: the best configuration, its schedule, the lr range."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracker_sched.data.grid import LOG_LR, TRAIN_LOSS, VAL_METRIC, GridSweep
from tracker_sched.data.validation import CleanRun
from tracker_sched.errors import FitError
from tracker_sched.identity import Configurations
from tracker_sched.schema import Direction

TOP_RUNS = 5


def _finite(x: float) -> bool:
    return math.isfinite(x)


class RunTrace(BaseModel):
    """A sweep run on the progress grid (transformed units; None where unobserved)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    config: dict[str, Any] = Field(default_factory=dict)
    config_id: str | None = Field(default=None, description="its configuration "
                                  "(tracker_sched.identity); None in bundles before 0.2")
    total_steps: int
    final_val: float | None
    train_loss: list[float | None]
    log_lr: list[float | None]
    val_metric: list[float | None]

    @model_validator(mode="after")
    def _finite_values(self) -> RunTrace:
        for name in ("train_loss", "log_lr", "val_metric"):
            if any(v is not None and not _finite(v) for v in getattr(self, name)):
                raise ValueError(f"top run {self.run_id}: {name} holds a non-finite value")
        if self.final_val is not None and not _finite(self.final_val):
            raise ValueError(f"top run {self.run_id}: final_val is not finite")
        return self


class SweepSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    runs_used: int
    best_run_id: str
    best_config: dict[str, Any]
    best_config_mean_final_val: float
    best_config_runs: int
    lr_min: float
    lr_max: float
    best_peak_lr: float
    warmup_tau: list[float] = Field(description="tau grid of the warm-up plan")
    warmup_lr: list[float] = Field(description="the best run's lr on that grid")
    top_runs: list[RunTrace] = Field(description="best runs first, for planners")
    configurations: int | None = Field(default=None, description="configurations among the "
                                       "runs used (seeds and run identity aside)")
    hyperparameters: list[str] = Field(default_factory=list, description="config keys that "
                                       "tell the sweep's configurations apart")
    best_hyperparameters: dict[str, Any] = Field(default_factory=dict, description="the best "
                                                 "configuration's values of those keys")
    runs_by_state: dict[str, int] = Field(default_factory=dict, description="runs used, by "
                                          "tracker state; only finished runs can be the best")
    runs_complete: int | None = Field(default=None, description="runs used that reached the "
                                      "end of their budget")
    budgets: list[int] = Field(default_factory=list, description="the distinct budgets "
                               "(total steps) of the runs used")

    @model_validator(mode="after")
    def _usable(self) -> SweepSummary:
        for name in ("lr_min", "lr_max", "best_peak_lr"):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not _finite(self.best_config_mean_final_val):
            raise ValueError("best_config_mean_final_val is not finite")
        tau, lr = self.warmup_tau, self.warmup_lr
        if len(tau) < 2 or len(tau) != len(lr):
            raise ValueError(f"the warm-up plan needs as many (>= 2) tau as lr values, got "
                             f"{len(tau)} and {len(lr)}")
        if any(not (_finite(t) and 0 <= t <= 1) for t in tau) or any(
                b < a for a, b in itertools.pairwise(tau)):
            raise ValueError("warmup_tau must rise from 0 to 1")
        if any(not (_finite(x) and x > 0) for x in lr):
            raise ValueError("warmup_lr must hold positive, finite learning rates")
        return self



def _listed(x: np.ndarray, m: np.ndarray) -> list[float | None]:
    return [float(v) if ok else None for v, ok in zip(x, m, strict=True)]


def summarise(
    runs: list[CleanRun], grid: GridSweep, direction: Direction,
    configurations: Configurations | None = None,
) -> SweepSummary:
    """Pick the best configuration by mean final validation metric over its seeds.

    Only runs that finished and reached the end of their budget without
    diverging count (:attr:`CleanRun.eligible`); runs group into configurations
    by their ``config_id`` (:mod:`tracker_sched.identity`). Pre-flight checks
    (:mod:`tracker_sched.data.preflight`) make sure one such run exists before any
    training, so the error here only meets callers that skip them.
    """
    eligible = [run for run, ok in zip(runs, grid.complete(), strict=True)
                if ok and run.eligible]
    if not eligible:
        raise FitError("no finished run reached the end of its budget; cannot name the "
                       "sweep's best run")
    sign = 1.0 if direction == "max" else -1.0
    finals = {run.run_id: run.final_val() for run in eligible}
    groups: dict[str, list[CleanRun]] = defaultdict(list)
    for run in eligible:
        groups[run.config_id].append(run)
    # A configuration with any diverged seed is not a safe best.
    diverged_groups = {run.config_id for run in runs if run.diverged}
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
            config_id=runs[i].config_id,
            total_steps=runs[i].total_steps,
            final_val=finals[rid],
            train_loss=_listed(grid.values[i, :, TRAIN_LOSS], grid.mask[i, :, TRAIN_LOSS]),
            log_lr=_listed(grid.values[i, :, LOG_LR], grid.mask[i, :, LOG_LR]),
            val_metric=_listed(grid.values[i, :, VAL_METRIC], grid.mask[i, :, VAL_METRIC]),
        ))
    lr_grid = grid.values[b, :, LOG_LR]
    observed = grid.mask[b, :, LOG_LR]
    lr_grid = np.interp(grid.tau, grid.tau[observed], lr_grid[observed])  # fill the edges
    best_config = dict(best_run.record.config)
    return SweepSummary(
        runs_used=len(runs),
        best_run_id=best_run.run_id,
        best_config=best_config,
        best_config_mean_final_val=float(np.mean([finals[r.run_id] for r in best_group])),
        best_config_runs=len(best_group),
        lr_min=float(lr_all.min()),
        lr_max=float(lr_all.max()),
        best_peak_lr=float(best_run.series["lr"].value.max()),
        warmup_tau=[float(t) for t in grid.tau],
        warmup_lr=[float(10.0 ** v) for v in lr_grid],
        top_runs=top,
        configurations=len({r.config_id for r in runs}),
        hyperparameters=list(configurations.hyperparameters) if configurations else [],
        best_hyperparameters=(configurations.hyperparameters_of(best_config)
                              if configurations else {}),
        runs_by_state=dict(sorted(Counter(r.record.state for r in runs).items())),
        runs_complete=sum(1 for r in runs if r.complete),
        budgets=sorted({r.total_steps for r in runs}),
    )

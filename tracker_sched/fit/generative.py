"""Fitting the latent ODE to a sweep: split, train with early stopping, report."""

from __future__ import annotations

import copy
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from tracker_sched.budget import BudgetSpec
from tracker_sched.bundle.folder import (
    SCHEMA_VERSION,
    Bundle,
    BundleManifest,
    MetricRoles,
    SweepSummary,
    now_iso,
    package_versions,
)
from tracker_sched.data.grid import (
    GridSweep,
    Normalisation,
    SweepTensors,
    choose_transforms,
    context_batch,
    fit_normalisation,
    target_batch,
    to_grid,
)
from tracker_sched.data.preflight import MIN_RUNS, Preflight, preflight
from tracker_sched.data.summary import summarise
from tracker_sched.data.validation import CleanRun, ValidatedSweep
from tracker_sched.fit.report import FitReport, cross_fit_report, forecast_report
from tracker_sched.limits import MAX_GRID_POINTS, MAX_MEMBERS
from tracker_sched.model.forecast import Forecaster
from tracker_sched.model.latent import LatentODE, ModelConfig, path_length_penalty
from tracker_sched.schema import Direction, MetricMap, RunIssue, RunRecord
from tracker_sched.util.workers import spawn_pool


class FitConfig(BaseModel):
    """Options of a fit. Defaults are sized for a ~50-run sweep on 2 CPU cores (a few minutes)."""

    model_config = ConfigDict(frozen=True)

    grid_points: int = Field(default=100, ge=10, le=MAX_GRID_POINTS,
                             description="points on the tau grid")
    window: int = Field(default=30, ge=2, description="live context window, grid points")
    window_range: tuple[float, float] = Field(
        default=(0.5, 2.0), description="training context lengths, as multiples of window"
    )
    min_end_tau: float = Field(default=0.05, ge=0.0, lt=1.0)
    holdout_fraction: float = Field(
        default=0.2, ge=0.0, lt=1.0,
        description="share of whole runs held out (single split: ensemble 1 or cross_fit off)",
    )
    cross_fit: bool = Field(
        default=True,
        description="with ensemble K >= 2: member k holds out fold k of K, so the ensemble "
        "sees every run and the report forecasts every run out of fold",
    )
    batch_size: int = Field(default=128, ge=1)
    max_iterations: int = Field(default=400, ge=1)
    eval_every: int = Field(default=50, ge=1)
    patience: int = Field(default=4, ge=1, description="evaluations without improvement")
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    path_weight: float = Field(default=0.01, ge=0)
    channel_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ensemble: int = Field(default=4, ge=1, le=MAX_MEMBERS,
                          description="fit seeds averaged in the forecast")
    seed: int = 0
    report_taus: tuple[float, ...] = (0.25, 0.5, 0.75)
    model: ModelConfig = Field(default_factory=ModelConfig)

    @model_validator(mode="after")
    def _check(self) -> FitConfig:
        lo, hi = self.window_range
        if not 0 < lo <= hi:
            raise ValueError(f"window_range must satisfy 0 < lo <= hi, got {self.window_range}")
        if self.window > self.grid_points:
            raise ValueError(f"window ({self.window}) cannot be longer than the grid "
                             f"({self.grid_points} points)")
        if any(not 0 < t < 1 for t in self.report_taus):
            raise ValueError(f"report_taus must lie in (0, 1), got {self.report_taus}")
        return self


@dataclass
class MemberHistory:
    seed: int
    iterations: int
    best_iteration: int
    best_holdout_loss: float | None
    train_loss: list[float] = field(default_factory=list)
    holdout_loss: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class PreparedSweep:
    """A validated sweep on the grid, split and standardised."""

    validated: ValidatedSweep
    direction: Direction
    val_key: str
    grid: GridSweep
    norm: Normalisation
    train_idx: np.ndarray
    holdout_idx: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, holdout) run indices per member
    summary: SweepSummary  # named before training, so no data error can come after it
    checked: Preflight

    @property
    def cross_fit(self) -> bool:
        return len(self.folds) > 1 and not np.array_equal(self.folds[0][1], self.folds[1][1])

    @property
    def runs(self) -> list[CleanRun]:
        return self.validated.runs

    @property
    def issues(self) -> list[RunIssue]:
        return self.validated.issues

    def tensors(self, idx: np.ndarray) -> SweepTensors:
        return SweepTensors.from_grid(self.grid.subset(idx), self.norm)


def run_counts(prep: PreparedSweep) -> dict[str, Any]:
    """The fit report's counts of the runs used: by state, complete, configurations."""
    return {"runs_by_state": prep.checked.runs_by_state(),
            "runs_complete": sum(1 for r in prep.runs if r.complete),
            "configurations": prep.checked.configurations.describe()}


def prepare(
    records: Sequence[RunRecord],
    config: FitConfig,
    metric_map: MetricMap | None = None,
    *,
    budget: BudgetSpec | None = None,
    ignore_config_keys: Sequence[str] = (),
    source_issues: Sequence[RunIssue] = (),
    checked: Preflight | None = None,
) -> PreparedSweep:
    """Check (:mod:`tracker_sched.data.preflight`: every error the data can cause is raised here,
    before any training), choose transforms, resample, name the sweep's best, split off
    whole runs and standardise. ``checked``: a pre-flight already run on ``records``."""
    if checked is None:
        checked = preflight(records, metric_map=metric_map, budget=budget,
                            ignore_config_keys=ignore_config_keys, source_issues=source_issues)
    checked.raise_for_problems()
    validated, direction = checked.validated, checked.direction
    assert direction is not None  # a problem otherwise
    transforms = choose_transforms(validated.runs, direction)
    grid = to_grid(validated.runs, config.grid_points, transforms)
    summary = summarise(validated.runs, grid, direction, validated.configurations)
    n = len(validated.runs)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    k = config.ensemble
    if config.cross_fit and k >= 2 and n // k >= 1 and n - (n + k - 1) // k >= MIN_RUNS:
        # Fold f holds out every k-th run of a seeded permutation: folds are disjoint
        # and cover the sweep. Standardisation uses all runs (a per-channel mean/std).
        folds = [
            (np.sort(np.setdiff1d(order, order[f::k])), np.sort(order[f::k])) for f in range(k)
        ]
        norm = fit_normalisation(grid, transforms)
    else:
        n_hold = round(config.holdout_fraction * n)
        if config.holdout_fraction > 0:
            n_hold = min(max(n_hold, 1), n - MIN_RUNS) if n > MIN_RUNS else 0
        split = (np.sort(order[n_hold:]), np.sort(order[:n_hold]))
        folds = [split] * k
        norm = fit_normalisation(grid.subset(split[0]), transforms)
    return PreparedSweep(
        validated=validated, direction=direction, val_key=checked.val_key, grid=grid, norm=norm,
        train_idx=folds[0][0], holdout_idx=folds[0][1], folds=folds, summary=summary,
        checked=checked,
    )


def report_windows(
    data: SweepTensors, config: FitConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed (run, end, length) windows the report and early stopping use."""
    g = data.grid_points
    runs, ends = [], []
    n = int(data.values.shape[0])
    for tau in config.report_taus:
        end = round(tau * (g - 1))
        for r in range(n):
            runs.append(r)
            ends.append(end)
    run_idx = torch.tensor(runs, dtype=torch.long)
    end_idx = torch.tensor(ends, dtype=torch.long)
    return run_idx, end_idx, torch.full_like(end_idx, config.window)


def _masked_mse(
    pred: torch.Tensor, y: torch.Tensor, m: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    w = m.to(pred.dtype) * weights
    return ((pred - y) ** 2 * w).sum() / w.sum().clamp_min(1.0)


def train_member(
    train: SweepTensors,
    holdout: SweepTensors | None,
    config: FitConfig,
    seed: int,
    *,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> tuple[LatentODE, MemberHistory]:
    """Train one latent ODE; early stopping on the holdout's report windows."""
    gen = torch.Generator().manual_seed(seed)
    model = LatentODE(config.model, generator=gen)
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total = config.max_iterations
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total)),
    )
    weights = torch.tensor(config.channel_weights, dtype=torch.float32)
    g = train.grid_points
    n_train = int(train.values.shape[0])
    observed = train.mask.any(dim=2)  # (runs, G)
    last_obs = torch.where(
        observed, torch.arange(g)[None, :], torch.zeros_like(observed, dtype=torch.long)
    ).max(dim=1).values
    min_end = max(1, round(config.min_end_tau * (g - 1)))
    lo = max(2, round(config.window * config.window_range[0]))
    hi = max(lo, round(config.window * config.window_range[1]))

    eval_windows = report_windows(holdout, config) if holdout is not None else None
    history = MemberHistory(seed=seed, iterations=0, best_iteration=0, best_holdout_loss=None)
    best_state = copy.deepcopy(model.state_dict())
    bad_evals = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"fit seed {seed}", disable=not progress, leave=False)
    for it in range(1, total + 1):
        model.train()
        run_idx = torch.randint(n_train, (config.batch_size,), generator=gen)
        top = torch.maximum(last_obs[run_idx], torch.full_like(run_idx, min_end))
        u = torch.rand(config.batch_size, generator=gen)
        end_idx = torch.minimum(min_end + (u * (top - min_end + 1)).long(), top)
        length = torch.randint(lo, hi + 1, (config.batch_size,), generator=gen)
        horizon = g - int(end_idx.min())
        offsets = torch.arange(horizon, dtype=torch.float32) / (g - 1)
        x, lengths = context_batch(train, run_idx, end_idx, length, config.model.encoder_direction)
        y, m = target_batch(train, run_idx, end_idx, horizon)
        pred, h = model(x, lengths, offsets)
        inside = (end_idx[:, None] + torch.arange(horizon)[None, :]) < g
        loss = _masked_mse(pred, y, m, weights)
        total_loss = loss + config.path_weight * path_length_penalty(h, inside)
        opt.zero_grad(set_to_none=True)
        total_loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.train_loss.append(float(loss.detach()))
        history.iterations = it
        if on_step is not None:
            on_step(it)
        bar.update(1)

        if eval_windows is not None and holdout is not None and (
            it % config.eval_every == 0 or it == total
        ):
            hl = holdout_loss(model, holdout, eval_windows, weights)
            history.holdout_loss.append((it, hl))
            if history.best_holdout_loss is None or hl < history.best_holdout_loss:
                history.best_holdout_loss = hl
                history.best_iteration = it
                best_state = copy.deepcopy(model.state_dict())
                bad_evals = 0
            else:
                bad_evals += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", holdout=f"{hl:.3f}")
            if bad_evals >= config.patience:
                break
    bar.close()
    if eval_windows is None:
        best_state = copy.deepcopy(model.state_dict())
        history.best_iteration = history.iterations
    model.load_state_dict(best_state)
    model.eval()
    history.wall_s = time.perf_counter() - t0
    return model, history


@torch.no_grad()
def holdout_loss(
    model: LatentODE,
    data: SweepTensors,
    windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: torch.Tensor,
) -> float:
    run_idx, end_idx, length = windows
    pred = Forecaster([model]).forecast(data, run_idx, end_idx, length)
    model.train()
    y, m = target_batch(data, run_idx, end_idx, pred.shape[1])
    return float(_masked_mse(pred, y, m, weights))



# --------------------------------------------------------------------------- orchestration


_PROGRESS: Any = None  # the worker process's progress queue (set by the pool initializer)


def _init_worker(queue: Any) -> None:
    global _PROGRESS
    _PROGRESS = queue
    torch.set_num_threads(1)  # one member per core; this worker process only


def _member_worker(
    args: tuple[SweepTensors, SweepTensors | None, FitConfig, int],
) -> tuple[dict[str, torch.Tensor], MemberHistory]:
    train, holdout, config, seed = args

    def tick(it: int) -> None:
        if it % 10 == 0 and _PROGRESS is not None:
            _PROGRESS.put(10)

    model, hist = train_member(train, holdout, config, seed, on_step=tick)
    return model.state_dict(), hist


def train_ensemble(
    data: Sequence[tuple[SweepTensors, SweepTensors | None]],
    config: FitConfig,
    *,
    workers: int = 1,
    progress: bool = True,
) -> tuple[list[LatentODE], list[MemberHistory]]:
    """Train one member per ``(train, holdout)`` pair, with seeds ``seed, seed + 1, ...``.

    With ``workers > 1`` members train in separate processes, one thread each.
    """
    seeds = [config.seed + i for i in range(len(data))]
    workers = max(1, min(workers, len(seeds)))
    if workers == 1:
        out = [train_member(tr, ho, config, s, progress=progress)
               for (tr, ho), s in zip(data, seeds, strict=True)]
        return [m for m, _ in out], [h for _, h in out]

    ctx = mp.get_context("spawn")  # fork after torch's threads start is unsafe
    queue = ctx.SimpleQueue()
    bar = tqdm(total=config.max_iterations * len(seeds), desc=f"fit {len(seeds)} members",
               disable=not progress)
    # Safe from any caller, a script without a __main__ guard included (tracker_sched.util.workers).
    pool = spawn_pool(workers, initializer=_init_worker, initargs=(queue,))
    try:
        result = pool.map_async(
            _member_worker, [(tr, ho, config, s) for (tr, ho), s in zip(data, seeds, strict=True)]
        )
        while not result.ready():
            result.wait(0.25)
            while not queue.empty():
                bar.update(queue.get())
        states = result.get()
        pool.close()  # let workers exit normally so their resources are released
        pool.join()
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    finally:
        queue.close()
    bar.update(bar.total - bar.n)  # members that stopped early
    bar.close()
    models, hists = [], []
    for sd, hist in states:
        m = LatentODE(config.model)
        m.load_state_dict(sd)
        m.eval()
        models.append(m)
        hists.append(hist)
    return models, hists


@dataclass
class FitResult:
    bundle: Bundle
    report: FitReport
    prepared: PreparedSweep


def fit_sweep(
    records: Sequence[RunRecord],
    config: FitConfig | None = None,
    metric_map: MetricMap | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    source_issues: Sequence[RunIssue] = (),
    budget: BudgetSpec | None = None,
    ignore_config_keys: Sequence[str] = (),
    checked: Preflight | None = None,
) -> FitResult:
    """Validate a sweep, fit the latent ODE ensemble, report holdout forecasts, build a bundle.

    ``source_issues`` are the runs a source could not read (``SourceResult.issues``):
    they are listed in the report with validation's own, so nothing is lost silently.
    ``budget`` and ``ignore_config_keys`` override how budgets and configurations are
    found (:mod:`tracker_sched.budget`, :mod:`tracker_sched.identity`). Every error the
    data can cause is raised before training starts (:mod:`tracker_sched.data.preflight`);
    ``checked``: that stage already run on ``records`` with these options.
    """
    config = config or FitConfig()
    t0 = time.perf_counter()
    prep = prepare(records, config, metric_map, budget=budget, checked=checked,
                   ignore_config_keys=ignore_config_keys, source_issues=source_issues)
    data = [
        (prep.tensors(tr), prep.tensors(ho) if ho.size else None) for tr, ho in prep.folds
    ]
    if workers is None:
        workers = min(config.ensemble, os.cpu_count() or 1)
    models, hists = train_ensemble(data, config, workers=workers, progress=progress)
    forecast = None
    if prep.cross_fit:
        # Every run is forecast by the one member that never trained on it.
        forecast = cross_fit_report(
            [(Forecaster([m]), tr, ho) for m, (tr, ho) in zip(models, prep.folds, strict=True)],
            prep.tensors(np.arange(len(prep.runs))), prep.norm, config.report_taus,
            config.window, prep.grid.complete(),
        )
        holdout_idx = np.arange(len(prep.runs))
    elif prep.holdout_idx.size:
        forecast = forecast_report(
            Forecaster(models), data[0][0], prep.tensors(prep.holdout_idx), prep.norm,
            config.report_taus, config.window, prep.grid.subset(prep.holdout_idx).complete(),
        )
        holdout_idx = prep.holdout_idx
    else:
        holdout_idx = prep.holdout_idx
    report = FitReport(
        runs_total=len(records),
        runs_used=len(prep.runs),
        runs_fit=int(prep.train_idx.size),
        runs_holdout=int(holdout_idx.size),
        scheme="cross-fit" if prep.cross_fit else "holdout",
        folds=len(prep.folds) if prep.cross_fit else 1,
        holdout_ids=[prep.grid.run_ids[i] for i in holdout_idx],
        issues=[*source_issues, *prep.issues],
        direction=prep.direction,
        val_key=prep.val_key,
        wall_s=time.perf_counter() - t0,
        members=[
            {"seed": h.seed, "iterations": h.iterations, "best_iteration": h.best_iteration,
             "best_holdout_loss": h.best_holdout_loss, "wall_s": round(h.wall_s, 2)}
            for h in hists
        ],
        holdout=forecast,
        **run_counts(prep),
    )
    keys = {role: prep.runs[0].record.metric_keys.get(role) for role in ("train_loss", "lr")}
    manifest = BundleManifest(
        schema_version=SCHEMA_VERSION,
        created_at=now_iso(),
        members=len(models),
        model=config.model,
        fit=config.model_dump(mode="json", exclude={"model"}),
        grid_points=config.grid_points,
        window=config.window,
        normalisation=prep.norm,
        metrics=MetricRoles(
            train_loss=keys["train_loss"], lr=keys["lr"], val_metric=prep.val_key,
            direction=prep.direction,
        ),
        sweep=prep.summary,
        report=report,
        versions=package_versions(),
    )
    return FitResult(bundle=Bundle(manifest, models), report=report, prepared=prep)

"""Fitting the latent ODE to a sweep: split, train with early stopping, report."""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tracker_sched.budget import BudgetSpec
from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import (
    FitReport,
)
from tracker_sched.data.grid import (
    SweepTensors,
    context_batch,
    target_batch,
)
from tracker_sched.data.preflight import Preflight
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.prepare import PreparedSweep, assemble_bundle, prepare, run_counts
from tracker_sched.fit.report import cross_fit_report, forecast_report
from tracker_sched.fit.stop_calibration import calibrate_prepared
from tracker_sched.fit.training import WindowSampler, masked_mse, optimizer, update
from tracker_sched.fit.trust import forecast_trust
from tracker_sched.model.forecast import Forecaster
from tracker_sched.model.latent import LatentODE, path_length_penalty
from tracker_sched.schema import MetricMap, RunIssue, RunRecord
from tracker_sched.util.workers import on_pool, spawn_pool


@dataclass
class MemberHistory:
    seed: int
    iterations: int
    best_iteration: int
    best_holdout_loss: float | None
    train_loss: list[float] = field(default_factory=list)
    holdout_loss: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0


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
    total = config.max_iterations
    opt, sched = optimizer(model, config.learning_rate, config.weight_decay, total)
    weights = torch.tensor(config.channel_weights, dtype=torch.float32)
    g = train.grid_points
    sampler = WindowSampler(train, window=config.window, window_range=config.window_range,
                            min_end_tau=config.min_end_tau, batch_size=config.batch_size,
                            generator=gen)

    eval_windows = report_windows(holdout, config) if holdout is not None else None
    history = MemberHistory(seed=seed, iterations=0, best_iteration=0, best_holdout_loss=None)
    best_state = copy.deepcopy(model.state_dict())
    bad_evals = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"fit seed {seed}", disable=not progress, leave=False)
    for it in range(1, total + 1):
        model.train()
        win = sampler.sample()
        run_idx, end_idx, length, horizon = win.run_idx, win.end_idx, win.length, win.horizon
        offsets = torch.arange(horizon, dtype=torch.float32) / (g - 1)
        x, lengths = context_batch(train, run_idx, end_idx, length, config.model.encoder_direction)
        y, m = target_batch(train, run_idx, end_idx, horizon)
        pred, h = model(x, lengths, offsets)
        inside = (end_idx[:, None] + torch.arange(horizon)[None, :]) < g
        loss = masked_mse(pred, y, m, weights)
        update(model, opt, sched, loss + config.path_weight * path_length_penalty(h, inside))
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
    return float(masked_mse(pred, y, m, weights))



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
    torch.set_num_threads(1)  # also on a caller's pool, whose workers _init_worker never saw

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
    pool: Pool | None = None,
) -> tuple[list[LatentODE], list[MemberHistory]]:
    """Train one member per ``(train, holdout)`` pair, with seeds ``seed, seed + 1, ...``.

    With ``workers > 1`` members train in separate processes, one thread each. With
    ``pool`` (a caller's :func:`~tracker_sched.util.workers.spawn_pool`, left open) they
    train on its workers instead, and ``workers`` is not used.
    """
    seeds = [config.seed + i for i in range(len(data))]
    jobs = [(tr, ho, config, s) for (tr, ho), s in zip(data, seeds, strict=True)]
    if pool is not None:
        states = on_pool(pool, _member_worker, jobs)
        return _members(states, config)
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
        result = pool.map_async(_member_worker, jobs)
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
    return _members(states, config)


def _members(
    states: Sequence[tuple[dict[str, torch.Tensor], MemberHistory]], config: FitConfig
) -> tuple[list[LatentODE], list[MemberHistory]]:
    """Models (in eval mode) and histories from the workers' state dicts."""
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
    pool: Pool | None = None,
) -> FitResult:
    """Validate a sweep, fit the latent ODE ensemble, report holdout forecasts, build a bundle.

    Every error the data can cause is raised before training starts
    (:mod:`tracker_sched.data.preflight`).

    Args:
        records: the sweep's runs (``read_sweep(...).runs`` or any source's).
        config: the fit's options; ``FitConfig()`` by default.
        metric_map: which logged keys are the train loss, the lr and the validation
            metric, and its direction; inferred from the runs by default.
        workers: processes that train members in parallel; one per member up to the
            CPU count by default.
        progress: show progress bars.
        source_issues: the runs a source could not read (``SourceResult.issues``); they
            are listed in the report with validation's own, so nothing is lost silently.
        budget: how each run's budget (total steps) is found (:mod:`tracker_sched.budget`).
        ignore_config_keys: config keys (globs) that do not tell configurations apart
            (:mod:`tracker_sched.identity`).
        checked: the pre-flight stage already run on ``records`` with these options.
        pool: train the members on this caller-owned pool
            (:func:`~tracker_sched.util.workers.spawn_pool`, left open), e.g. one shared by
            two fits run side by side so that neither leaves a core idle; ``workers`` is
            then not used. Members are seeded and train on one thread each, so the bundle
            is the same either way.

    Returns:
        A :class:`FitResult`: ``bundle`` (in memory; ``bundle.save(path)`` writes it),
        ``report`` (holdout forecasts against baselines) and the prepared sweep.

    Raises:
        FitError: the sweep cannot be fitted (too few usable runs, no validation metric,
            ...): every reason is listed, before any training.
        InputError: an option or a metric name is unusable.
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
    models, hists = train_ensemble(data, config, workers=workers, progress=progress, pool=pool)
    forecast = None
    if prep.cross_fit:
        # Every run is forecast by the one member that never trained on it.
        forecast = cross_fit_report(
            [(Forecaster([m]), tr, ho) for m, (tr, ho) in zip(models, prep.folds, strict=True)],
            prep.tensors(np.arange(len(prep.runs))), prep.norm, config.report_taus,
            config.window, prep.grid.complete(), direction=prep.direction,
        )
        holdout_idx = np.arange(len(prep.runs))
    elif prep.holdout_idx.size:
        forecast = forecast_report(
            Forecaster(models), data[0][0], prep.tensors(prep.holdout_idx), prep.norm,
            config.report_taus, config.window, prep.grid.subset(prep.holdout_idx).complete(),
            direction=prep.direction,
        )
        holdout_idx = prep.holdout_idx
    else:
        holdout_idx = prep.holdout_idx
    stopping = calibrate_prepared(models, prep, config)
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
        forecast_trust=forecast_trust(forecast),
        stop_reliability=stopping.reliability if stopping is not None else [],
        **run_counts(prep),
    )
    bundle = assemble_bundle(prep, config, config.model, models, report)
    bundle.manifest = bundle.manifest.model_copy(update={"stopping": stopping})
    return FitResult(bundle=bundle, report=report, prepared=prep)

"""The control-mode fit: the learning rate as an input of the latent dynamics.

The model is :mod:`tracker_sched.model.control`. The fit is a bootstrap ensemble
(each member trains on runs drawn with replacement) so that members disagree
where the sweep says little, and the planner can be pessimistic about that
disagreement. The checks that run after
the fit live in :mod:`tracker_sched.fit.checks`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from multiprocessing.pool import Pool
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from tracker_sched.budget import BudgetSpec
from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import (
    FitReport,
)
from tracker_sched.data.grid import (
    LOG_LR,
    SweepTensors,
    context_batch,
    target_batch,
)
from tracker_sched.data.preflight import Preflight
from tracker_sched.errors import InputError
from tracker_sched.fit.checks import ResponseCheckConfig, run_checks
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.prepare import PreparedSweep, assemble_bundle, prepare, run_counts
from tracker_sched.fit.training import WindowSampler, masked_mse, optimizer, update
from tracker_sched.limits import MAX_GRID_POINTS, MAX_MEMBERS
from tracker_sched.model.control import (
    KIND,
    OUTPUTS,
    ControlEnsemble,
    ControlODE,
    interp_input,
)
from tracker_sched.model.latent import ModelConfig
from tracker_sched.schema import MetricMap, RunIssue, RunRecord
from tracker_sched.util.workers import on_pool, spawn_pool

log = logging.getLogger("tracker_sched.control")

# --------------------------------------------------------------------------- fit


class ControlFitConfig(BaseModel):
    """Options of a control-mode fit. Small members: five of them train in about a minute
    each on one core for a ~50-run sweep."""

    model_config = ConfigDict(frozen=True)

    grid_points: int = Field(default=100, ge=10, le=MAX_GRID_POINTS)
    window: int = Field(default=30, ge=2, description="live context window, grid points")
    window_range: tuple[float, float] = (0.5, 2.0)
    min_end_tau: float = Field(default=0.05, ge=0.0, lt=1.0)
    batch_size: int = Field(default=64, ge=1)
    iterations: int = Field(default=600, ge=1)
    learning_rate: float = Field(default=5e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    channel_weights: tuple[float, float] = Field(
        default=(0.5, 1.0), description="train loss, val metric"
    )
    members: int = Field(default=5, ge=1, le=MAX_MEMBERS, description="bootstrap ensemble size")
    bootstrap: bool = Field(default=True, description="resample runs with replacement")
    seed: int = 0
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(
        latent_dim=8, ode_dim=16, hidden=32, encoder_hidden=32, step_points=4))
    checks: ResponseCheckConfig = Field(default_factory=ResponseCheckConfig)


def train_control_member(
    data: SweepTensors, config: ControlFitConfig, seed: int
) -> tuple[ControlODE, dict[str, float | int]]:
    """Train one member on ``data`` (already bootstrapped): random windows, whole futures."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    model = ControlODE(config.model, generator=gen)
    total = config.iterations
    opt, sched = optimizer(model, config.learning_rate, config.weight_decay, total)
    weights = torch.tensor(config.channel_weights, dtype=torch.float32)
    dt = 1.0 / (data.grid_points - 1)
    sampler = WindowSampler(data, window=config.window, window_range=config.window_range,
                            min_end_tau=config.min_end_tau, batch_size=config.batch_size,
                            generator=gen)
    idx = list(OUTPUTS)
    losses: list[float] = []
    for _ in range(total):
        win = sampler.sample()
        run_idx, end_idx, length, horizon = win.run_idx, win.end_idx, win.length, win.horizon
        offsets = torch.arange(horizon, dtype=torch.float32) * dt
        x, lengths = context_batch(data, run_idx, end_idx, length, config.model.encoder_direction)
        y, m = target_batch(data, run_idx, end_idx, horizon)
        pred, _ = model.forward_input(x, lengths, offsets, y[..., LOG_LR], dt)
        loss = masked_mse(pred, y[..., idx], m[..., idx], weights)
        update(model, opt, sched, loss)
        losses.append(float(loss.detach()))
    model.eval()
    tail = losses[-max(1, total // 10):]
    return model, {"seed": seed, "iterations": total, "final_train_loss": float(np.mean(tail)),
                   "wall_s": round(time.perf_counter() - t0, 2)}


def _worker(args: tuple[SweepTensors, ControlFitConfig, int]) -> tuple[
    dict[str, torch.Tensor], dict[str, float | int]
]:
    torch.set_num_threads(1)  # one member per core
    model, info = train_control_member(*args)
    return model.state_dict(), info


def bootstrap_indices(n: int, members: int, seed: int, bootstrap: bool) -> list[np.ndarray]:
    """Runs each member trains on: drawn with replacement (a bootstrap), seeded."""
    rng = np.random.default_rng(seed)
    if not bootstrap:
        return [np.arange(n)] * members
    return [np.sort(rng.integers(0, n, n)) for _ in range(members)]


def train_control_ensemble(
    prep: PreparedSweep, config: ControlFitConfig, workers: int = 1, pool: Pool | None = None
) -> tuple[list[ControlODE], list[dict[str, float | int]]]:
    """Train the bootstrap members: in this process, on ``workers`` processes, or on a
    caller's open ``pool`` (then ``workers`` is not used)."""
    draws = bootstrap_indices(len(prep.runs), config.members, config.seed, config.bootstrap)
    jobs = [(prep.tensors(ix), config, config.seed + k) for k, ix in enumerate(draws)]
    workers = max(1, min(workers, len(jobs)))
    if pool is not None:
        states = on_pool(pool, _worker, jobs)
    elif workers == 1:
        out = [train_control_member(*j) for j in jobs]
        return [m for m, _ in out], [i for _, i in out]
    else:
        # spawn, safe from any caller (tracker_sched.util.workers)
        with spawn_pool(workers) as own:
            states = own.map(_worker, jobs)
    models = []
    for sd, _ in states:
        m = ControlODE(config.model)
        m.load_state_dict(sd)
        m.eval()
        models.append(m)
    return models, [i for _, i in states]


# --------------------------------------------------------------------------- orchestration


def fit_control(
    records: Sequence[RunRecord],
    config: ControlFitConfig | None = None,
    metric_map: MetricMap | None = None,
    *,
    workers: int | None = None,
    source_issues: Sequence[RunIssue] = (),
    budget: BudgetSpec | None = None,
    ignore_config_keys: Sequence[str] = (),
    checked: Preflight | None = None,
    pool: Pool | None = None,
) -> Bundle:
    """Fit a control-mode bootstrap ensemble to a sweep and check its lr response.

    The bundle's manifest has ``kind="control_ode"`` and the checks under
    ``control``; :class:`~tracker_sched.planning.control.ControlPlanner` reads them.
    Every error the data can cause is raised before training (:func:`prepare`).
    With ``pool`` (a caller's open :func:`~tracker_sched.util.workers.spawn_pool`) the
    members train on its workers and ``workers`` is not used; the bundle is the same.
    """
    config = config or ControlFitConfig()
    t0 = time.perf_counter()
    base = FitConfig(grid_points=config.grid_points, window=config.window, ensemble=1,
                     holdout_fraction=0.0, cross_fit=False, seed=config.seed,
                     model=config.model)
    prep = prepare(records, base, metric_map, budget=budget, checked=checked,
                   ignore_config_keys=ignore_config_keys, source_issues=source_issues)
    if workers is None:
        workers = min(config.members, os.cpu_count() or 1)
    models, infos = train_control_ensemble(prep, config, workers, pool)
    fit_s = time.perf_counter() - t0
    ensemble = ControlEnsemble(models, prep.norm, config.grid_points)
    checks = run_checks(ensemble, prep, config.window, config.checks)
    for flag in checks.flags:
        log.warning("control model flagged: %s", flag)
    report = FitReport(
        runs_total=len(records), runs_used=len(prep.runs), runs_fit=len(prep.runs),
        runs_holdout=0, scheme="holdout", folds=1, holdout_ids=[],
        issues=[*source_issues, *prep.issues], direction=prep.direction, val_key=prep.val_key,
        wall_s=time.perf_counter() - t0, members=[dict(i) for i in infos], holdout=None,
        note=f"control mode: bootstrap ensemble of {len(models)} (fit {fit_s:.1f} s); no "
        "held-out forecast table, see the control checks", **run_counts(prep),
    )
    return assemble_bundle(prep, config, config.model, models, report, kind=KIND,
                           control=checks.model_dump(mode="json"))


def recheck(
    bundle: Bundle,
    records: Sequence[RunRecord],
    config: ResponseCheckConfig | None = None,
    metric_map: MetricMap | None = None,
) -> Bundle:
    """Rerun the fit checks of a control bundle on its sweep (e.g. with new thresholds)
    without refitting; returns a bundle with the new checks."""
    m = bundle.manifest
    if m.kind != KIND:
        raise InputError(f"only a control-mode bundle (kind {KIND!r}) has control checks")
    config = config or ResponseCheckConfig.model_validate(m.fit.get("checks", {}))
    base = FitConfig(grid_points=m.grid_points, window=m.window, ensemble=1,
                     holdout_fraction=0.0, cross_fit=False, model=m.model)
    prep = prepare(records, base, metric_map)
    ensemble = ControlEnsemble(bundle.models, m.normalisation, m.grid_points)
    prep = dataclasses.replace(prep, norm=m.normalisation)
    checks = run_checks(ensemble, prep, m.window, config)
    fit = {**m.fit, "checks": config.model_dump(mode="json")}
    manifest = m.model_copy(update={"control": checks.model_dump(mode="json"), "fit": fit})
    return Bundle(manifest, bundle.models)


ControlMode = Literal["generative", "control"]

__all__ = [
    "KIND", "ControlEnsemble", "ControlFitConfig", "ControlMode", "ControlODE", "fit_control",
    "interp_input", "recheck", "train_control_member",
]

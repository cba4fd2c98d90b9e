"""Control mode: the learning rate as an input of the latent dynamics.

The generative model decodes the lr as an output, so a planner built on it
can only pick among futures that resemble the sweep. Here the lr drives the
dynamics::

    encoder (GRU over the context window: tau, train loss, log lr, val metric, masks)
        -> z -> MLP lift -> h(now)
        -> dh/dtau = s * tanh(MLP([h, u(tau)])), u the standardised log10 lr
        -> linear decoder h -> (train loss, val metric)   (not the lr: it is known)

``u`` is known on the progress grid; the solver needs it at arbitrary tau, so
it is interpolated piecewise-linearly between grid values, batched over runs.

The fit is a bootstrap ensemble (each member trains on runs drawn with
replacement) so that members disagree where the sweep says little, and the
planner can be pessimistic about that disagreement. The checks that run after
the fit live in :mod:`tracker_sched.fit.checks`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchdiffeq import odeint

from tracker_sched.budget import BudgetSpec
from tracker_sched.bundle.folder import (
    SCHEMA_VERSION,
    Bundle,
    BundleManifest,
    MetricRoles,
    now_iso,
    package_versions,
)
from tracker_sched.data.grid import (
    LOG_LR,
    TRAIN_LOSS,
    VAL_METRIC,
    EncoderDirection,
    Normalisation,
    SweepTensors,
    context_batch,
    target_batch,
)
from tracker_sched.data.preflight import Preflight
from tracker_sched.errors import InputError
from tracker_sched.fit.checks import ResponseCheckConfig, run_checks
from tracker_sched.fit.generative import FitConfig, PreparedSweep, prepare, run_counts
from tracker_sched.fit.report import FitReport
from tracker_sched.limits import MAX_GRID_POINTS, MAX_MEMBERS
from tracker_sched.model.latent import LatentODE, ModelConfig, last_observation
from tracker_sched.schema import MetricMap, RunIssue, RunRecord
from tracker_sched.util.workers import spawn_pool

log = logging.getLogger("tracker_sched.control")

KIND: Literal["control_ode"] = "control_ode"
OUTPUTS = (TRAIN_LOSS, VAL_METRIC)  # decoded channels, in dataset channel indices
_OUT_VAL = 1  # index of the val metric among the decoded outputs


# --------------------------------------------------------------------------- model


def interp_input(u: torch.Tensor, t: torch.Tensor, dt: float) -> torch.Tensor:
    """``u (..., K)`` known at offsets ``0, dt, 2 dt, ...`` -> its value at offset ``t``.

    Piecewise-linear, clamped at both ends; ``t`` is the solver's scalar time,
    so one index serves the whole batch.
    """
    k = u.shape[-1]
    pos = (t / dt).clamp(0.0, float(k - 1))
    i0 = int(torch.floor(pos).clamp(max=max(k - 2, 0)))
    if k == 1:
        return u[..., 0]
    w = pos - i0
    return u[..., i0] * (1 - w) + u[..., i0 + 1] * w


class ControlField(nn.Module):
    """dh/dtau = s * tanh(MLP([h, u])): the lr enters every step of the dynamics."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, dim),
        )
        self.log_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_scale) * torch.tanh(self.net(torch.cat([h, u[..., None]], -1)))


class ControlODE(LatentODE):
    """The latent ODE with the lr as input; reuses the encoder and lift of :class:`LatentODE`."""

    def _build(self, config: ModelConfig) -> None:
        super()._build(config)
        self.field = ControlField(config.ode_dim, config.hidden)  # type: ignore[assignment]
        self.decoder = nn.Linear(config.ode_dim, len(OUTPUTS))
        self.log_anchor_tau = nn.Parameter(torch.full((len(OUTPUTS),), math.log(0.3)))

    def solve_input(
        self, h0: torch.Tensor, u: torch.Tensor, offsets: torch.Tensor, dt: float
    ) -> torch.Tensor:
        """Integrate ``h0 (B, D)`` driven by ``u (B, K)`` -> ``(B, K, D)`` at ``offsets (K,)``."""
        field = self.field
        assert isinstance(field, ControlField)

        def f(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = field(h, interp_input(u, t, dt))
            return out

        hs: torch.Tensor = odeint(f, h0, offsets, **_solver_kw(self.config, dt))
        return hs.transpose(0, 1)

    def forward_input(
        self, x: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor, u: torch.Tensor,
        dt: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast ``(B, K, 2)`` (train loss, val metric), anchored at the context's end."""
        h = self.solve_input(self.initial_state(self.encode(x, lengths)), u, offsets, dt)
        pred = self.decode(h)
        if self.config.anchor:
            value, observed = last_observation(x, lengths, self.config.encoder_direction)
            idx = list(OUTPUTS)
            shift = torch.where(observed[:, idx], value[:, idx] - pred[:, 0],
                                torch.zeros_like(pred[:, 0]))
            decay = torch.exp(-offsets[:, None] / torch.exp(self.log_anchor_tau))
            pred = pred + shift[:, None, :] * decay[None]
        return pred, h


def _linear(module: nn.Module) -> nn.Linear:
    assert isinstance(module, nn.Linear)
    return module


def _solver_kw(cfg: ModelConfig, dt: float) -> dict[str, Any]:
    """Fixed solvers step ``step_points`` grid intervals; the same grid in fit and plan."""
    if cfg.solver in ("rk4", "euler", "midpoint"):
        return {"method": cfg.solver, "options": {"step_size": dt * cfg.step_points,
                                                  "interp": "linear"}}
    return {"method": cfg.solver, "rtol": cfg.rtol, "atol": cfg.atol}


class ControlEnsemble:
    """Every member of a control bundle as one batched model: encode, solve, read the end.

    The members' fields are stacked into batched matrix products, so that one
    solve serves every member and every candidate schedule.
    """

    def __init__(self, models: Sequence[LatentODE], norm: Normalisation, grid_points: int) -> None:
        ms = [m for m in models if isinstance(m, ControlODE)]
        if not ms or len(ms) != len(models):
            raise InputError("the control planner needs a control-mode bundle "
                             f"(kind {KIND!r}); this bundle holds generative models")
        self.models = ms
        self.norm = norm
        self.grid_points = grid_points
        self.dt = 1.0 / (grid_points - 1)
        fields = [m.field for m in ms if isinstance(m.field, ControlField)]
        layers = [[_linear(f.net[i]) for f in fields] for i in (0, 2, 4)]
        self.w = [torch.stack([lin.weight.detach().T for lin in layer]) for layer in layers]
        self.b = [torch.stack([lin.bias.detach() for lin in layer])[:, None, :] for layer in layers]
        self.scale = torch.stack(
            [torch.exp(f.log_scale.detach()) for f in fields]
        )[:, None, None]
        self.dec_w = torch.stack([m.decoder.weight.detach().T for m in ms])
        self.dec_b = torch.stack([m.decoder.bias.detach() for m in ms])[:, None, :]
        self.anchor_tau = torch.stack([torch.exp(m.log_anchor_tau.detach()) for m in ms])

    @property
    def direction(self) -> EncoderDirection:
        return self.models[0].config.encoder_direction

    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Context windows ``(B, T, 7)`` -> initial states ``(M, B, D)``."""
        return torch.stack([m.initial_state(m.encode(x, lengths)) for m in self.models])

    @torch.no_grad()
    def final(
        self, h0: torch.Tensor, u: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Predicted val metric at the end of ``u``'s grid, transformed units: ``(M, B)``.

        ``h0 (M, B, D)``; ``u (B, K)`` standardised log lr from now to the end of
        the budget; ``x, lengths`` the contexts (for the anchor shift), batch 1
        or B.
        """
        k = int(u.shape[-1])
        w, b = self.w, self.b

        def f(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            ut = interp_input(u, t, self.dt)[None, :, None].expand(h.shape[0], -1, 1)
            z = nn.functional.silu(torch.baddbmm(b[0], torch.cat([h, ut], -1), w[0]))
            z = nn.functional.silu(torch.baddbmm(b[1], z, w[1]))
            return self.scale * torch.tanh(torch.baddbmm(b[2], z, w[2]))

        cfg = self.models[0].config
        t_end = (k - 1) * self.dt
        offsets = torch.tensor([0.0, t_end]) if k > 1 else torch.tensor([0.0])
        if k > 1:
            hs = odeint(f, h0, offsets, **_solver_kw(cfg, self.dt))
            h_end = hs[-1]
        else:
            h_end = h0
        dec0 = torch.baddbmm(self.dec_b, h0, self.dec_w)  # (M, B, 2)
        dec1 = torch.baddbmm(self.dec_b, h_end, self.dec_w)
        out = dec1[..., _OUT_VAL]
        if cfg.anchor:
            value, observed = last_observation(x, lengths, cfg.encoder_direction)
            obs_val = value[:, VAL_METRIC]
            shift = torch.where(observed[:, VAL_METRIC], obs_val[None] - dec0[..., _OUT_VAL],
                                torch.zeros_like(out))
            decay = torch.exp(-t_end / self.anchor_tau[:, _OUT_VAL])[:, None]
            out = out + shift * decay
        std, mean = self.norm.std[VAL_METRIC], self.norm.mean[VAL_METRIC]
        return out * std + mean

    def to_u(self, log_lr: torch.Tensor) -> torch.Tensor:
        """log10 lr -> the standardised input."""
        return (log_lr - self.norm.mean[LOG_LR]) / self.norm.std[LOG_LR]


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


def _masked_mse(pred: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    w = m.to(pred.dtype) * weights
    return ((pred - y) ** 2 * w).sum() / w.sum().clamp_min(1.0)


def train_control_member(
    data: SweepTensors, config: ControlFitConfig, seed: int
) -> tuple[ControlODE, dict[str, float | int]]:
    """Train one member on ``data`` (already bootstrapped): random windows, whole futures."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    model = ControlODE(config.model, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay)
    total = config.iterations
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, total)
                                                                      / total)))
    weights = torch.tensor(config.channel_weights, dtype=torch.float32)
    g = data.grid_points
    dt = 1.0 / (g - 1)
    n = int(data.values.shape[0])
    observed = data.mask.any(dim=2)
    last_obs = torch.where(observed, torch.arange(g)[None, :],
                           torch.zeros_like(observed, dtype=torch.long)).max(dim=1).values
    min_end = max(1, round(config.min_end_tau * (g - 1)))
    lo = max(2, round(config.window * config.window_range[0]))
    hi = max(lo, round(config.window * config.window_range[1]))
    idx = list(OUTPUTS)
    losses: list[float] = []
    for _ in range(total):
        run_idx = torch.randint(n, (config.batch_size,), generator=gen)
        top = torch.maximum(last_obs[run_idx], torch.full_like(run_idx, min_end))
        r = torch.rand(config.batch_size, generator=gen)
        end_idx = torch.minimum(min_end + (r * (top - min_end + 1)).long(), top)
        length = torch.randint(lo, hi + 1, (config.batch_size,), generator=gen)
        horizon = g - int(end_idx.min())
        offsets = torch.arange(horizon, dtype=torch.float32) * dt
        x, lengths = context_batch(data, run_idx, end_idx, length, config.model.encoder_direction)
        y, m = target_batch(data, run_idx, end_idx, horizon)
        pred, _ = model.forward_input(x, lengths, offsets, y[..., LOG_LR], dt)
        loss = _masked_mse(pred, y[..., idx], m[..., idx], weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
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
    prep: PreparedSweep, config: ControlFitConfig, workers: int = 1
) -> tuple[list[ControlODE], list[dict[str, float | int]]]:
    draws = bootstrap_indices(len(prep.runs), config.members, config.seed, config.bootstrap)
    jobs = [(prep.tensors(ix), config, config.seed + k) for k, ix in enumerate(draws)]
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        out = [train_control_member(*j) for j in jobs]
        return [m for m, _ in out], [i for _, i in out]
    with spawn_pool(workers) as pool:  # spawn, safe from any caller (tracker_sched.util.workers)
        states = pool.map(_worker, jobs)
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
) -> Bundle:
    """Fit a control-mode bootstrap ensemble to a sweep and check its lr response.

    The bundle's manifest has ``kind="control_ode"`` and the checks under
    ``control``; :class:`~tracker_sched.planning.control.ControlPlanner` reads them.
    Every error the data can cause is raised before training (:func:`prepare`).
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
    models, infos = train_control_ensemble(prep, config, workers)
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
    keys = {role: prep.runs[0].record.metric_keys.get(role) for role in ("train_loss", "lr")}
    manifest = BundleManifest(
        schema_version=SCHEMA_VERSION, kind=KIND, created_at=now_iso(), members=len(models),
        model=config.model, fit=config.model_dump(mode="json", exclude={"model"}),
        grid_points=config.grid_points, window=config.window, normalisation=prep.norm,
        metrics=MetricRoles(train_loss=keys["train_loss"], lr=keys["lr"],
                            val_metric=prep.val_key, direction=prep.direction),
        sweep=prep.summary, report=report,
        versions=package_versions(), control=checks.model_dump(mode="json"),
    )
    return Bundle(manifest, list(models))


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

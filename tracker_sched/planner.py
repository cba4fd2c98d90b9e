"""The generative planner: candidate futures from the fitted model, the best one's schedule.

Given a live run's history, its progress ``tau_now`` and a bundle, one replan

1. resamples the history onto the bundle's grid and encodes the last
   ``window`` points to a latent per ensemble member;
2. draws candidate latents: the live latent itself (the current course),
   seeded Gaussian noise around it (``sigma * |z|``), the latents of the
   sweep's best runs at the same point of training, and interpolations from
   the live latent towards them (the regimes "between grid points" that a
   coarse sweep leaves out);
3. decodes every candidate of every member in one batched ODE solve per member;
4. phase alignment, rule ``"now"``: a candidate is accepted if its decoded
   state at ``tau_now`` matches the live run's on train loss and the
   validation metric, within a tolerance set by the window's own noise;
5. scores candidates by the predicted validation metric at the end of the
   budget (``tau = 1``, inside the horizon the model was trained on), as the
   ensemble mean, respecting the metric's direction;
6. averages the lr trajectories of the best ``top_k``; and
7. applies the guards: a cap relative to the sweep's best peak lr, no rise
   late in training, a limit on the change per replan, a trust region around
   the incumbent (the sweep's best schedule), and a fallback (keep
   the current plan, with the reason) when nothing is accepted or the best
   prediction does not beat the current course by ``min_gain``.

All of it is tensor code: no Python loop over candidates or time points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from tracker_sched.bundle import Bundle
from tracker_sched.dataset import (
    LOG_LR,
    N_CHANNELS,
    TRAIN_LOSS,
    VAL_METRIC,
    SweepTensors,
    context_batch,
    resample,
)
from tracker_sched.errors import InputError
from tracker_sched.model import LatentODE, solve_stacked
from tracker_sched.schema import Recommendation, Schedule


class PlannerConfig(BaseModel):
    """Knobs of the generative planner. Every guard is on by default."""

    model_config = ConfigDict(frozen=True)

    candidates: int = Field(default=64, ge=2, description="candidate latents per replan")
    noise_sigma: float = Field(default=0.15, ge=0, description="noise, relative to |z|")
    regimes: int = Field(default=5, ge=0, description="sweep's best runs used as regimes")
    interpolations: tuple[float, ...] = (0.25, 0.5, 0.75)
    top_k: int = Field(default=3, ge=1)
    match: Literal["now"] = Field(
        default="now",
        description="phase alignment: 'now' reads every candidate from the live time. The "
        "paper's 'largest lr among matched times' replays earlier, higher-lr phases (a "
        "selection bias measured in the pre-study) and is not offered.",
    )
    tolerance: float = Field(default=2.0, gt=0, description="match tolerance, in noise sds")
    min_tolerance: float = Field(default=0.05, gt=0, description="floor, standardised units")
    lr_cap: float = Field(
        default=1.0, gt=0,
        description="max lr / the sweep's best peak lr. 1.0 (no extrapolation above the best "
        "peak) was chosen on the benchmark's validation block: at 1.5 the MNIST-1D CNN, whose "
        "best peak is at the edge of stability, collapsed (-12.5 points)",
    )
    no_rise_after_tau: float = Field(default=0.5, ge=0, le=1)
    max_change_dex: float = Field(default=0.3, gt=0, description="per replan, log10 units")
    trust_region_dex: float | None = Field(
        default=0.3, gt=0,
        description="band around the incumbent (the sweep's best run's schedule, stretched to "
        "the run's budget), log10 units; None turns it off. Without it, per-replan limits "
        "ratchet: the first benchmark drifted to the lr cap and never annealed.",
    )
    min_gain: float = Field(default=0.0, ge=0, description="needed over the current course")
    seed: int = 0


@dataclass(frozen=True)
class LiveHistory:
    """What a live run has logged so far; each series on its own steps."""

    train_loss: tuple[np.ndarray, np.ndarray]  # (steps, values)
    lr: tuple[np.ndarray, np.ndarray]
    val_metric: tuple[np.ndarray, np.ndarray]


class GenerativePlanner:
    """Plans the remaining schedule of a live run from a fitted bundle."""

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or PlannerConfig()
        m = bundle.manifest
        self.norm = m.normalisation
        self.grid_points = m.grid_points
        self.window = m.window
        self.sign = 1.0 if m.metrics.direction == "max" else -1.0
        self._top = self._regime_tensors()

    # ------------------------------------------------------------------ inputs
    def _regime_tensors(self) -> SweepTensors | None:
        runs = self.bundle.manifest.sweep.top_runs[: self.config.regimes]
        if not runs:
            return None
        vals = np.array(
            [[[np.nan if v is None else v for v in (r.train_loss[i], r.log_lr[i],
                                                     r.val_metric[i])]
              for i in range(self.grid_points)] for r in runs], dtype=np.float64,
        )
        mask = ~np.isnan(vals)
        z = np.where(mask, self.norm.normalise(np.nan_to_num(vals)), 0.0)
        return SweepTensors(values=torch.as_tensor(z, dtype=torch.float32),
                            mask=torch.as_tensor(mask))

    def live_tensors(self, history: LiveHistory, total_steps: int) -> SweepTensors:
        """The live run on the grid, standardised: ``(1, G, 3)``."""
        g = self.grid_points
        vals = np.full((1, g, N_CHANNELS), np.nan)
        mask = np.zeros((1, g, N_CHANNELS), dtype=bool)
        series = {TRAIN_LOSS: history.train_loss, LOG_LR: history.lr,
                  VAL_METRIC: history.val_metric}
        for c, (steps, values) in series.items():
            steps = np.asarray(steps, dtype=np.int64)
            values = np.asarray(values, dtype=np.float64)
            ok = np.isfinite(values) & (steps >= 0)
            if c == LOG_LR:
                ok &= values > 0
            x = self.norm.transform(c, values[ok])
            vals[0, :, c], mask[0, :, c] = resample(steps[ok], x, total_steps, g)
        z = np.where(mask, self.norm.normalise(np.nan_to_num(vals)), 0.0)
        return SweepTensors(values=torch.as_tensor(z, dtype=torch.float32),
                            mask=torch.as_tensor(mask))

    # ------------------------------------------------------------------ planning
    @torch.no_grad()
    def plan(
        self,
        history: LiveHistory,
        *,
        step: int,
        total_steps: int,
        current: Schedule | None = None,
    ) -> Recommendation:
        """One replan. Raises :class:`InputError` on unusable input; the advisor catches it."""
        cfg = self.config
        g = self.grid_points
        if total_steps <= 0 or not 0 <= step <= total_steps:
            raise InputError(f"step {step} is outside the budget [0, {total_steps}]")
        live = self.live_tensors(history, total_steps)
        observed = live.mask[0].all(dim=1)
        if not bool(observed.any()):
            raise InputError("the live window has no point with train loss, lr and val metric")
        end = min(int(torch.nonzero(observed).max()), g - 2)
        k_len = g - end
        offsets = torch.arange(k_len, dtype=torch.float32) / (g - 1)
        window = torch.tensor([self.window])
        x_live, len_live = context_batch(live, torch.tensor([0]), torch.tensor([end]), window,
                                         self.bundle.models[0].config.encoder_direction)
        gen = torch.Generator().manual_seed(cfg.seed + step)

        models = self.bundle.models
        h0, decays = [], []
        for model in models:  # encoding: one small GRU pass per member
            z_live = model.encode(x_live, len_live)  # (1, D)
            h0.append(model.initial_state(self._candidates(model, z_live, end, gen)))
            decays.append(torch.exp(-offsets[:, None] / torch.exp(model.log_anchor_tau)))
        # One solve for every member and candidate: (M, N, K, D).
        hs = solve_stacked(models, torch.stack(h0), offsets, interp="linear")
        dec_all = torch.stack([m.decode(h) for m, h in zip(models, hs, strict=True)])
        obs = x_live[0, len_live[0] - 1, 1 : 1 + N_CHANNELS]
        shifts = [obs - dec_all[i, 0, 0] for i in range(len(models))]
        anchored = dec_all + (torch.stack(shifts)[:, None, None, :]
                              * torch.stack(decays)[:, None, :, :])
        mean = anchored.mean(dim=0)  # (N, K, 3)

        # Phase alignment ("now"): the candidate's decoded state at now vs the live latent's.
        noise = self._noise(live, end)
        tol = torch.clamp(cfg.tolerance * noise, min=cfg.min_tolerance)
        raw0 = dec_all.mean(dim=0)[:, 0]  # (N, 3)
        diff = (raw0 - raw0[0:1]).abs()
        accepted = (diff[:, TRAIN_LOSS] <= tol[TRAIN_LOSS]) & (
            diff[:, VAL_METRIC] <= tol[VAL_METRIC]
        )
        accepted[0] = True  # the current course is always a valid comparison

        std_val = self.norm.std[VAL_METRIC]
        final = anchored[:, :, -1, VAL_METRIC] * std_val + self.norm.mean[VAL_METRIC]  # (M, N)
        score = self.sign * final.mean(dim=0)
        spread = final.std(dim=0) if final.shape[0] > 1 else torch.zeros_like(score)
        n_acc = int(accepted.sum())

        future_steps = np.rint(np.linspace(0, 1, g)[end:] * total_steps).astype(np.int64)
        future_steps[0] = min(int(future_steps[0]), step)  # the plan starts now
        base_log_lr = self._log_lr(mean[0, :, LOG_LR])
        current_log_lr = self._current(current, future_steps)
        fallback_log_lr = current_log_lr if current_log_lr is not None else base_log_lr

        def fallback(reason: str) -> Recommendation:
            sched = self._guard(fallback_log_lr, end)
            return self._recommendation("fallback", reason, step, future_steps, sched,
                                        float(final.mean(dim=0)[0]), float(spread[0]), n_acc)

        if n_acc <= 1:
            return fallback("no candidate matches the live state (phase alignment); "
                            "keeping the current plan")
        masked = torch.where(accepted, score, torch.full_like(score, -torch.inf))
        masked[0] = -torch.inf  # candidates other than the current course
        k = min(cfg.top_k, n_acc - 1)
        best = torch.topk(masked, k).indices
        gain = float(score[best].mean() - score[0])
        if gain <= cfg.min_gain:
            return fallback(f"no candidate beats the current course (best gain {gain:+.4f}); "
                            "keeping the current plan")
        log_lr = self._log_lr(mean[best, :, LOG_LR].mean(dim=0))
        sched = self._guard(log_lr, end, current=current_log_lr,
                            incumbent=self.incumbent(future_steps, total_steps))
        pred = float(final.mean(dim=0)[best].mean())
        return self._recommendation(
            "planned", f"top {k} of {n_acc} accepted candidates; predicted gain {gain:+.4f}",
            step, future_steps, sched, pred, float(spread[best].mean()), n_acc,
        )

    def _candidates(
        self, model: LatentODE, z_live: torch.Tensor, end: int, gen: torch.Generator
    ) -> torch.Tensor:
        cfg = self.config
        parts = [z_live]
        if self._top is not None:
            t = self._top
            n_top = int(t.values.shape[0])
            ends = torch.full((n_top,), end)
            x, lengths = context_batch(t, torch.arange(n_top), ends,
                                       torch.full((n_top,), self.window),
                                       self.bundle.models[0].config.encoder_direction)
            z_top = model.encode(x, lengths)
            alphas = torch.tensor(cfg.interpolations, dtype=torch.float32)
            interp = z_live[None] + alphas[:, None, None] * (z_top[None] - z_live[None])
            parts += [z_top, interp.reshape(-1, z_live.shape[1])]
        n_fixed = sum(int(p.shape[0]) for p in parts)
        n_noise = max(0, cfg.candidates - n_fixed)
        eps = torch.randn(n_noise, z_live.shape[1], generator=gen)
        parts.append(z_live + cfg.noise_sigma * z_live.norm() * eps / z_live.shape[1] ** 0.5)
        return torch.cat(parts)[: max(cfg.candidates, 2)]

    def _noise(self, live: SweepTensors, end: int) -> torch.Tensor:
        """Per-channel noise sd of the live window (first differences / sqrt 2)."""
        lo = max(0, end - self.window + 1)
        v, m = live.values[0, lo : end + 1], live.mask[0, lo : end + 1]
        d = (v[1:] - v[:-1]) * (m[1:] & m[:-1])
        n = (m[1:] & m[:-1]).sum(dim=0).clamp_min(1)
        return (((d**2).sum(dim=0) / n).sqrt() / 2**0.5).to(torch.float32)

    def _log_lr(self, z: torch.Tensor) -> np.ndarray:
        """Standardised lr channel -> log10 lr."""
        return np.asarray(z.numpy() * self.norm.std[LOG_LR] + self.norm.mean[LOG_LR])

    @staticmethod
    def _current(current: Schedule | None, steps: np.ndarray) -> np.ndarray | None:
        if current is None or not current.step:
            return None
        s = np.asarray(current.step, dtype=np.float64)
        lr = np.log10(np.asarray(current.lr, dtype=np.float64))
        return np.asarray(np.interp(steps, s, lr))

    def incumbent(self, steps: np.ndarray, total_steps: int) -> np.ndarray:
        """log10 lr of the sweep's best run's schedule at ``steps`` of a ``total_steps`` run."""
        sweep = self.bundle.manifest.sweep
        return np.asarray(np.interp(np.asarray(steps) / total_steps, sweep.warmup_tau,
                                    np.log10(sweep.warmup_lr)))

    def _guard(
        self,
        log_lr: np.ndarray,
        end: int,
        *,
        current: np.ndarray | None = None,
        incumbent: np.ndarray | None = None,
    ) -> np.ndarray:
        """Apply the guards in order: change per replan, trust region, cap, no late rise."""
        cfg = self.config
        out = np.array(log_lr, dtype=np.float64)
        if current is not None:  # limited change per replan
            out = np.clip(out, current - cfg.max_change_dex, current + cfg.max_change_dex)
        band = cfg.trust_region_dex
        if incumbent is not None and band is not None:  # the incumbent's band wins a conflict
            out = np.clip(out, incumbent - band, incumbent + band)
        cap = np.log10(cfg.lr_cap * self.bundle.manifest.sweep.best_peak_lr)
        out = np.minimum(out, cap)
        tau = np.linspace(0, 1, self.grid_points)[end:]
        late = tau >= cfg.no_rise_after_tau
        if late.any():  # no rise late in training: a running minimum from the first late point
            i = int(np.argmax(late))
            out[i:] = np.minimum.accumulate(out[i:])
        return out

    def _recommendation(
        self, status: Literal["planned", "fallback"], reason: str, step: int,
        steps: np.ndarray, log_lr: np.ndarray, pred: float, spread: float, accepted: int,
    ) -> Recommendation:
        lr = np.power(10.0, log_lr)
        return Recommendation(
            status=status, reason=reason, step=step, lr_now=float(np.interp(step, steps, lr)),
            schedule=Schedule(step=[int(s) for s in steps], lr=[float(v) for v in lr]),
            predicted_final=pred, predicted_spread=spread, samples_accepted=accepted,
            samples_drawn=self.config.candidates,
            model_version=self.bundle.manifest.created_at,
        )


__all__ = ["GenerativePlanner", "LiveHistory", "PlannerConfig"]

"""The generative planner: candidate futures from the fitted model, the best one's schedule.

Given a live run's history, its progress ``tau_now`` and a bundle, one replan

1. resamples the history onto the bundle's grid and encodes the last
   ``window`` points to a latent per ensemble member;
2. draws candidate latents: the live latent itself (the current course),
   seeded Gaussian noise around it (``sigma * |z|``), the latents of the
   sweep's best runs at the same point of training, and interpolations from
   the live latent towards them (the regimes "between grid points" that a
   coarse sweep leaves out);
3. phase alignment, rule ``"now"``: a candidate is accepted if its decoded
   state at ``tau_now`` matches the live run's on train loss and the
   validation metric, within a tolerance set by the window's own noise
   (the state at now needs no solve);
4. decodes every accepted candidate of every member in one batched ODE solve;
5. scores candidates by the predicted validation metric at the end of the
   budget (``tau = 1``, inside the horizon the model was trained on), as the
   ensemble mean in the metric's own units (not the model's log10 of a positive
   minimised metric), respecting the metric's direction;
6. moves the current plan by the difference between the best ``top_k``'s mean decoded lr
   and the live course's (``lr_target="relative"``, the default; ``"absolute"``: follows
   the top ``top_k``'s mean decoded lr itself); and
7. applies the guards: a cap relative to the sweep's best peak lr, no rise
   late in training, a limit on the change per replan, a trust region around
   the incumbent (the sweep's best schedule), and a fallback (keep
   the current plan, with the reason) when nothing is accepted or the best
   prediction does not beat the current course by ``min_gain``.

All of it is tensor code: no Python loop over candidates or time points (the
only loops are the solver's steps and the encoder's window, batched over
members and candidates).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from tracker_sched.bundle.folder import Bundle
from tracker_sched.data.grid import (
    LOG_LR,
    N_CHANNELS,
    TRAIN_LOSS,
    VAL_METRIC,
    VALUES,
    SweepTensors,
    context_batch,
)
from tracker_sched.model.latent import solve_stacked
from tracker_sched.planning.base import Planner, PlanWindow
from tracker_sched.planning.history import LiveHistory
from tracker_sched.planning.kernels import PlanEncoder, PlanField, Stacked, rk4_nodes, step_grid
from tracker_sched.schema import Recommendation

_TIE = 1e-6  # relative: gains below this are float32 rounding, not a better candidate


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
        description="max lr / the sweep's best peak lr: 1.0, no extrapolation above the best "
        "peak (why: docs/planner.md)",
    )
    no_rise_after_tau: float = Field(default=0.5, ge=0, le=1)
    max_change_dex: float = Field(default=0.3, gt=0, description="per replan, log10 units")
    trust_region_dex: float | None = Field(
        default=0.3, gt=0,
        description="band around the incumbent (the sweep's best run's schedule, stretched to "
        "the run's budget), log10 units; None turns it off (docs/planner.md: without it "
        "per-replan limits ratchet up to the cap)",
    )
    min_gain: float = Field(default=0.0, ge=0, description="needed over the current course")
    lr_target: Literal["absolute", "relative"] = Field(
        default="relative",
        description="how the top candidates' decoded lr becomes the plan. 'relative' (the "
        "default): the current plan plus (their mean decoded log-lr minus the live "
        "course's), so a bias the decoder shares across candidates (on the suite's friedman "
        "bundle it forecasts decay for every candidate) cancels and only the decoded "
        "difference moves the plan. 'absolute' (the default before): their mean decoded "
        "log-lr. Chosen leave one task out on the suite's design block "
        "(docs/planner-modes.md, lr target)",
    )
    solver_step_points: int | None = Field(
        default=None, ge=1,
        description="grid intervals per rk4 step while planning; None: the bundle's own "
        "(ModelConfig.step_points). Coarser steps are faster and change the plan only through "
        "the linear interpolation between steps: at 3 on the MNIST-1D bundle, at most 5e-4 "
        "decades of lr and the same candidates chosen (docs/planner.md, Latency)",
    )
    seed: int = 0


class GenerativePlanner(Planner):
    """Plans the remaining schedule of a live run from a fitted bundle, by sampling candidate
    futures (the module docstring has the steps).

    Args:
        bundle: the fitted model (a generative bundle).
        config: the planner's options and guards.
    """

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None) -> None:
        self.config = config or PlannerConfig()
        super().__init__(bundle, self.config)
        self._top = self._regime_tensors()
        self._stacked: Stacked | None = None  # built at the first replan

    @property
    def _fast(self) -> Stacked:
        """The members' encoders, fields and decoders stacked for batched products: built
        once per planner, not per replan."""
        if self._stacked is None:
            models = self.bundle.models
            with torch.inference_mode():
                self._stacked = Stacked(
                    field=PlanField([mod.field for mod in models]),
                    encoder=PlanEncoder(models),
                    dec_w=torch.stack([mod.decoder.weight.T for mod in models]).contiguous(),
                    dec_b=torch.stack([mod.decoder.bias for mod in models])[:, None, :],
                    anchor_tau=torch.stack([torch.exp(mod.log_anchor_tau) for mod in models]),
                )
        return self._stacked

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

    # ------------------------------------------------------------------ planning
    @torch.inference_mode()
    def _search(self, w: PlanWindow) -> Recommendation:
        cfg = self.config
        g = self.grid_points
        live, end, step = w.live, w.end, w.step
        k_len = g - end
        offsets = torch.arange(k_len, dtype=torch.float32) / (g - 1)
        # The live window and the regimes' windows ending at the same grid point: one batch,
        # so each member encodes them in one GRU pass.
        windows = live if self._top is None else SweepTensors(
            values=torch.cat([live.values, self._top.values]),
            mask=torch.cat([live.mask, self._top.mask]),
        )
        n_win = int(windows.values.shape[0])
        x_all, len_all = context_batch(windows, torch.arange(n_win), torch.full((n_win,), end),
                                       torch.full((n_win,), self.window),
                                       self.bundle.models[0].config.encoder_direction)
        x_live, len_live = x_all[:1], len_all[:1]
        gen = torch.Generator().manual_seed(cfg.seed + step)

        z_all = self._fast.encoder(x_all)  # (M, 1 + regimes, latent): all windows have one length
        h0 = []
        for model, z in zip(self.bundle.models, z_all, strict=True):
            z_top = z[1:] if self._top is not None else None
            h0.append(model.initial_state(self._candidates(z[:1], z_top, gen)))
        h0_all = torch.stack(h0)  # (M, N, D)

        # Phase alignment ("now"): the candidate's decoded state at now vs the live latent's.
        # It needs no solve (the state at now is h0), so only accepted candidates are solved.
        noise = self._noise(live, end)
        tol = torch.clamp(cfg.tolerance * noise, min=cfg.min_tolerance)
        raw0 = self._decode(h0_all[:, :, None, :]).mean(dim=0)[:, 0]  # (N, 3)
        diff = (raw0 - raw0[0:1]).abs()
        accepted = (diff[:, TRAIN_LOSS] <= tol[TRAIN_LOSS]) & (
            diff[:, VAL_METRIC] <= tol[VAL_METRIC]
        )
        accepted[0] = True  # the current course is always a valid comparison
        idx = torch.nonzero(accepted)[:, 0]  # accepted candidates; the current course first
        n_acc = int(idx.numel())

        # One solve for every member and accepted candidate, decoded: (M, A, K, 3).
        dec_all = self._decode_path(h0_all[:, idx], offsets)
        decays = torch.exp(-offsets[None, :, None] / self._fast.anchor_tau[:, None, :])  # (M, K, 3)
        obs = x_live[0, len_live[0] - 1, VALUES]
        shifts = obs - dec_all[:, 0, 0]  # (M, 3)
        anchored = dec_all + shifts[:, None, None, :] * decays[:, None, :, :]
        mean = anchored.mean(dim=0)  # (A, K, 3)

        std_val = self.norm.std[VAL_METRIC]
        final_t = anchored[:, :, -1, VAL_METRIC] * std_val + self.norm.mean[VAL_METRIC]
        # In the metric's own units (log10 is the model's unit for a positive minimised
        # metric): the recommendation's predicted_final, spread and gain, as the control
        # planner reports them. (M, A)
        final = torch.as_tensor(self.norm.untransform(VAL_METRIC, final_t.double().numpy()))
        score = self.sign * final.mean(dim=0)
        spread = final.std(dim=0) if final.shape[0] > 1 else torch.zeros_like(score)

        # A fallback keeps the current plan; before there is one, the current course's lrs.
        keep = w.current_log_lr if w.current_log_lr is not None else self._log_lr(
            mean[0, :, LOG_LR])

        def fallback(reason: str) -> Recommendation:
            return self._fallback(w, reason, keep, pred=float(final.mean(dim=0)[0]),
                                  spread=float(spread[0]), accepted=n_acc, drawn=cfg.candidates)

        if n_acc <= 1:
            return fallback("no candidate matches the live state (phase alignment); "
                            "keeping the current plan")
        masked = score.clone()
        masked[0] = -torch.inf  # candidates other than the current course
        k = min(cfg.top_k, n_acc - 1)
        best = torch.topk(masked, k).indices
        gain = float(score[best].mean() - score[0])
        # A copy of the current course can score a float32 rounding error above it: a tie.
        if gain <= cfg.min_gain + _TIE * max(1.0, abs(float(score[0]))):
            return fallback(f"no candidate beats the current course (best gain {gain:+.4f}); "
                            "keeping the current plan")
        log_lr = self._log_lr(mean[best, :, LOG_LR].mean(dim=0))
        incumbent = self.incumbent(w.future_steps, w.total_steps)
        if cfg.lr_target == "relative":
            # Candidate 0 is the live course: the decoder's error common to every candidate
            # cancels in the difference, which moves the plan the run follows now. A caller
            # that sends no current plan (recommend, the served model without `current`)
            # has no plan to move: `keep` is then the decoded live course, and the plan is
            # the absolute one (assuming the sweep's best schedule instead would move a run
            # on another schedule onto the best's course for no reason the model gave).
            log_lr = keep + (log_lr - self._log_lr(mean[0, :, LOG_LR]))
        sched = self._guard(log_lr, end, current=w.current_log_lr, incumbent=incumbent)
        pred = float(final.mean(dim=0)[best].mean())
        return self._recommendation(
            "planned", f"top {k} of {n_acc} accepted candidates; predicted gain {gain:+.4f}",
            w, sched, pred, float(spread[best].mean()), n_acc, cfg.candidates,
        )

    def _decode_path(self, h0: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Solve ``h0 (M, N, D)`` over ``offsets (K,)`` and decode: ``(M, N, K, 3)``.

        Bundles solve with fixed-step rk4: that solve runs here as a plain loop
        (:func:`rk4_nodes`), the solver steps are decoded, and the grid points in
        between are interpolated linearly in the 3 decoded channels rather than
        the ``D`` latent ones (the decoder is linear, so the order does not matter).
        Other solvers go through torchdiffeq.
        """
        models = self.bundle.models
        cfg = models[0].config
        if cfg.solver != "rk4" or offsets.numel() < 2:
            hs = solve_stacked(models, h0, offsets, interp="linear")
            return self._decode(hs)
        grid = step_grid(offsets, self.config.solver_step_points or cfg.step_points)
        nodes = self._decode(rk4_nodes(self._fast.field, h0, grid))  # (M, N, S + 1, 3)
        # Output k lies in solver step i: the first i whose right end reaches offsets[k].
        steps = grid.numel() - 1
        idx = torch.searchsorted(grid[1:], offsets).clamp(max=steps - 1)
        slope = (offsets - grid[idx]) / (grid[idx + 1] - grid[idx])
        on_node = slope >= 1.0  # a grid point on a step's end: that node, exactly
        idx = torch.where(on_node, idx + 1, idx)
        slope = torch.where(on_node, torch.zeros_like(slope), slope)
        lo, hi = nodes[:, :, idx], nodes[:, :, (idx + 1).clamp(max=steps)]
        return lo + slope[None, None, :, None] * (hi - lo)

    def _decode(self, h: torch.Tensor) -> torch.Tensor:
        """Every member's linear decoder at once: ``(M, N, K, D) -> (M, N, K, 3)``."""
        m, n, k, d = h.shape
        fast = self._fast
        out = torch.baddbmm(fast.dec_b, h.reshape(m, n * k, d), fast.dec_w)
        return out.reshape(m, n, k, N_CHANNELS)

    def _candidates(
        self, z_live: torch.Tensor, z_top: torch.Tensor | None, gen: torch.Generator
    ) -> torch.Tensor:
        """``(candidates, latent_dim)``: the live latent, the regimes ``z_top`` and
        interpolations towards them, then seeded noise around the live latent."""
        cfg = self.config
        parts = [z_live]
        if z_top is not None:
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


__all__ = ["GenerativePlanner", "LiveHistory", "PlannerConfig"]

"""The control planner: the remaining lr curve optimised through the fitted dynamics.

One replan

1. refuses a model whose fit checks flagged it (monotone or exploitable lr
   response, see :mod:`tracker_sched.fit.control`) and keeps the current plan,
   with the reason;
2. encodes the live window once per ensemble member;
3. parameterises the remaining log10-lr curve by a few knots (piecewise
   linear in tau), confined to a trust region: a band around the *incumbent*
   (the sweep's best run's schedule stretched to the budget) and a limit on the
   change from the current plan. The union of the lrs the sweep visited is
   no trust region: in the pre-study an optimiser given it found the model's
   blind spot ("warm up, then hold a low lr") and lost 6.9 points;
4. starts from the current plan, the incumbent and the sweep's best runs'
   schedules continued from now, and runs a cross-entropy search: every
   candidate of a generation, for every member, in ONE batched ODE solve;
5. scores a candidate by the ensemble mean of the predicted final validation
   metric minus ``pessimism`` times the members' spread (bootstrap members
   disagree where the sweep says little);
6. applies the generative planner's guards (lr cap, no late rise, change per
   replan, the incumbent's band) and its fallbacks: keep the current plan
   when no candidate beats it, or when the best prediction is beyond
   anything the sweep observed (an exploited model, not a discovery).

No Python loop over candidates or time points: knots -> curves -> solve are
tensor operations; the loop is over the few generations of the search.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from tracker_sched.bundle.folder import Bundle
from tracker_sched.data.grid import VAL_METRIC, context_batch
from tracker_sched.errors import InputError
from tracker_sched.fit.checks import ControlChecks
from tracker_sched.model.control import KIND, ControlEnsemble
from tracker_sched.planning.base import Planner, PlanWindow
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.schema import Recommendation


class ControlPlannerConfig(BaseModel):
    """Knobs of the control planner. Every guard is on by default."""

    model_config = ConfigDict(frozen=True)

    knots: int = Field(default=6, ge=2, description="knots of the remaining log-lr curve")
    population: int = Field(default=48, ge=4, description="candidates per generation")
    generations: int = Field(default=6, ge=1)
    elite: int = Field(default=8, ge=1)
    init_sigma: float = Field(default=0.5, gt=0, description="first spread, share of the band")
    pessimism: float = Field(
        default=1.0, ge=0,
        description="score = mean - this * spread: 0 lets the optimiser exploit the members' "
        "disagreement (docs/control.md)",
    )
    trust_region_dex: float = Field(
        default=0.3, gt=0,
        description="band around the incumbent schedule, log10 units (the choice of 0.3: "
        "docs/control.md)",
    )
    max_change_dex: float = Field(default=0.3, gt=0,
                                  description="limit per replan from the current plan")
    lr_cap: float = Field(default=1.0, gt=0, description="max lr / the sweep's best peak lr")
    no_rise_after_tau: float = Field(default=0.5, ge=0, le=1)
    non_increasing: bool = Field(default=False,
                                 description="force the whole remaining curve to anneal")
    min_gain: float = Field(default=0.0, ge=0, description="needed over the current plan")
    move_penalty: float = Field(
        default=0.0, ge=0,
        description="score penalty per decade of mean distance from the current plan (metric "
        "units): for replanning, where the pre-study's replans drifted back towards the "
        "model's low-lr bias. 0 for the default single open-loop plan",
    )
    exploit_margin: float = Field(
        default=2.0, ge=0,
        description="refuse a plan predicted above the sweep's best observed final by more "
        "than this many sds of the leading configurations' finals (from the fit checks)",
    )
    require_checks: bool = Field(default=True,
                                 description="refuse a model its fit checks flagged")
    seed: int = 0


class ControlPlanner(Planner):
    """Plans the remaining schedule of a live run from a control-mode bundle.

    Shares the planner base's live-run resampling, incumbent, guards, fallback and
    recommendation format with the generative planner; only the search differs.

    Args:
        bundle: the fitted model (a control-mode bundle).
        config: the planner's options and guards.

    Raises:
        InputError: the bundle is not a control-mode one.
    """

    MODE = "control"

    def __init__(self, bundle: Bundle, config: ControlPlannerConfig | None = None) -> None:
        cc = config or ControlPlannerConfig()
        super().__init__(bundle, cc)
        self.control = cc
        m = bundle.manifest
        if m.kind != KIND:
            raise InputError(f"the control planner needs a control-mode bundle (kind {KIND!r}); "
                             f"this one is {m.kind!r}: fit it with the control mode")
        self.ensemble = ControlEnsemble(bundle.models, m.normalisation, m.grid_points)
        self.checks = ControlChecks.model_validate(m.control) if m.control else None
        self._best_observed = m.sweep.best_config_mean_final_val
        if self.checks is not None and self.checks.response is not None:
            self._final_sd = self.checks.response.final_sd
        else:
            finals = [r.final_val for r in m.sweep.top_runs if r.final_val is not None]
            self._final_sd = float(np.std(finals)) if len(finals) > 1 else 0.0

    def refusal(self) -> str | None:
        """Why this model must not be planned with, or None."""
        if not self.control.require_checks:
            return None
        if self.checks is None:
            return "the control bundle has no fit checks; refit it"
        if self.checks.flags:
            return "control model refused: " + "; ".join(self.checks.flags)
        return None

    @torch.no_grad()
    def _search(self, w: PlanWindow) -> Recommendation:
        cc = self.control
        g = self.grid_points
        live, end, step = w.live, w.end, w.step
        incumbent = self.incumbent(w.future_steps, w.total_steps)
        current_log_lr = w.current_log_lr
        # A fallback keeps the current plan; before there is one, the incumbent.
        fallback_log_lr = current_log_lr if current_log_lr is not None else incumbent

        def fallback(reason: str, pred: float | None = None, spread: float | None = None,
                     drawn: int = 0) -> Recommendation:
            return self._fallback(w, reason, fallback_log_lr, pred=pred, spread=spread,
                                  accepted=0, drawn=drawn)

        refused = self.refusal()
        if refused is not None:
            return fallback(refused + "; keeping the current plan")

        x, lengths = context_batch(live, torch.tensor([0]), torch.tensor([end]),
                                   torch.tensor([self.window]), self.ensemble.direction)
        h0 = self.ensemble.encode(x, lengths)  # (M, 1, D)
        lo, hi = self._bounds(incumbent, current_log_lr)
        tau = torch.as_tensor(np.linspace(0, 1, g)[end:], dtype=torch.float32)
        knot_tau = torch.linspace(float(tau[0]), 1.0, cc.knots)
        basis = _hat_basis(tau, knot_tau)  # (K, J): curve = knots @ basis.T
        lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(
            hi, dtype=torch.float32)
        late = tau >= cc.no_rise_after_tau

        def curves(knots: torch.Tensor) -> torch.Tensor:
            c = torch.minimum(torch.maximum(knots @ basis.T, lo_t), hi_t)
            if cc.non_increasing:
                c = torch.cummin(c, dim=1).values
            elif bool(late.any()):
                i = int(torch.nonzero(late)[0])
                c = torch.cat([c[:, :i], torch.cummin(c[:, i:], dim=1).values], dim=1)
            return c

        anchor = torch.as_tensor(fallback_log_lr, dtype=torch.float32)

        def score(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            n = int(c.shape[0])
            f = self.ensemble.final(h0.expand(-1, n, -1), self.ensemble.to_u(c),
                                    x, lengths)  # (M, N) transformed units
            v = torch.as_tensor(self.norm.untransform(VAL_METRIC, f.numpy()))
            mean = v.mean(dim=0)
            spread = v.std(dim=0) if v.shape[0] > 1 else torch.zeros_like(mean)
            out = self.sign * mean - cc.pessimism * spread
            if cc.move_penalty > 0:
                out = out - cc.move_penalty * (c - anchor).abs().mean(dim=1)
            return out, mean, spread

        # Starts: the current plan, the incumbent, the sweep's best runs continued from now.
        starts = [fallback_log_lr, incumbent]
        for r in self.bundle.manifest.sweep.top_runs:
            lr = np.array([np.nan if v is None else v for v in r.log_lr], dtype=np.float64)
            if np.isfinite(lr[end:]).all():
                starts.append(lr[end:])
        starts = starts[: cc.population]  # a small population keeps the first (best) starts
        at_knots = np.stack([np.interp(knot_tau.numpy(), tau.numpy(), s) for s in starts])
        start_knots = torch.as_tensor(at_knots, dtype=torch.float32)
        # The reference is the current plan itself (what a fallback keeps), not its knot fit.
        ref_score, ref_mean, ref_spread = score(anchor[None])
        gen = torch.Generator().manual_seed(cc.seed + step)
        band = torch.as_tensor(np.interp(knot_tau.numpy(), tau.numpy(), hi - lo) / 2,
                               dtype=torch.float32).clamp_min(1e-3)
        pop = start_knots
        drawn = 0
        best_k, best_s = start_knots[:1], score(curves(start_knots[:1]))[0]
        mu, sigma = start_knots[:1], cc.init_sigma * band[None]
        for gi in range(cc.generations):
            if gi == 0:
                noise = torch.randn(cc.population - pop.shape[0], cc.knots, generator=gen)
                parents = pop[torch.arange(noise.shape[0]) % pop.shape[0]]
                cand = torch.cat([pop, parents + noise * sigma]) if noise.shape[0] > 0 else pop
            else:
                noise = torch.randn(cc.population, cc.knots, generator=gen)
                cand = torch.cat([best_k, mu + noise * sigma])
            c = curves(cand)
            s, _, _ = score(c)
            drawn += int(cand.shape[0])
            top = torch.topk(s, min(cc.elite, int(s.shape[0]))).indices
            elite = cand[top]
            if float(s[top[0]]) > float(best_s[0]):
                best_k, best_s = cand[top[:1]], s[top[:1]]
            mu = elite.mean(dim=0, keepdim=True)
            sigma = elite.std(dim=0, keepdim=True).clamp_min(0.02) if elite.shape[0] > 1 \
                else sigma * 0.5
        plan = curves(best_k)
        final_s, final_mean, final_spread = score(plan)
        pred, spread = float(final_mean[0]), float(final_spread[0])
        gain = float(final_s[0] - ref_score[0])
        ref_pred = float(ref_mean[0])
        if gain <= cc.min_gain:
            return fallback(f"no schedule beats the current plan (best gain {gain:+.4f}); "
                            "keeping the current plan", ref_pred, float(ref_spread[0]), drawn)
        ceiling = self._best_observed + self.sign * cc.exploit_margin * self._final_sd
        if self.sign * pred > self.sign * ceiling:
            return fallback(f"the best plan is predicted at {pred:.4g}, beyond anything the "
                            f"sweep observed (best {self._best_observed:.4g}): the model is "
                            "being exploited; keeping the current plan", ref_pred,
                            float(ref_spread[0]), drawn)
        sched = self._guard(plan[0].numpy().astype(np.float64), end, current=current_log_lr,
                            incumbent=incumbent)
        return self._recommendation(
            "planned", f"cross-entropy search over {cc.knots} knots, {drawn} candidates; "
            f"predicted gain {gain:+.4f} (pessimism {cc.pessimism:g})",
            w, sched, pred, spread, drawn, drawn,
        )

    def _bounds(
        self, incumbent: np.ndarray, current: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-point log-lr bounds: the incumbent's band, the change limit, the cap."""
        cc = self.control
        lo, hi = incumbent - cc.trust_region_dex, incumbent + cc.trust_region_dex
        if current is not None:
            lo2 = np.maximum(lo, current - cc.max_change_dex)
            hi2 = np.minimum(hi, current + cc.max_change_dex)
            ok = lo2 <= hi2  # where they conflict, the incumbent's band wins (as in _guard)
            lo, hi = np.where(ok, lo2, lo), np.where(ok, hi2, hi)
        cap = np.log10(cc.lr_cap * self.bundle.manifest.sweep.best_peak_lr)
        hi = np.minimum(hi, cap)
        lo = np.minimum(lo, hi)
        return lo, hi


def _hat_basis(tau: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation weights ``(K, J)`` of ``tau`` between ``knots``."""
    j = int(knots.shape[0])
    pos = (tau - knots[0]) / (knots[-1] - knots[0]).clamp_min(1e-9) * (j - 1)
    pos = pos.clamp(0, j - 1)
    idx = torch.arange(j, dtype=tau.dtype)
    out: torch.Tensor = (1 - (pos[:, None] - idx[None, :]).abs()).clamp_min(0)
    return out


PlannerMode = Literal["generative", "control", "best", "auto"]


def mode_for(bundle: Bundle) -> Literal["generative", "control", "best"]:
    """The planner mode a bundle trusts: a control-mode bundle's is control; an auto
    bundle's is its fit-time decision (``manifest.planner``); any other is generative."""
    m = bundle.manifest
    if m.kind == KIND:
        return "control"
    return m.planner.mode if m.planner is not None else "generative"


def mode_reason(bundle: Bundle, mode: PlannerMode | None = None) -> str:
    """Why a planner of ``mode`` (default: auto) follows ``bundle``, in one sentence."""
    m = bundle.manifest
    if mode not in (None, "auto"):
        return f"{mode}: forced (the bundle's own decision: {mode_for(bundle)})"
    if m.kind == KIND:
        return "control: a control-mode bundle (fitted with --mode control)"
    if m.planner is not None:
        return m.planner.reason
    return "generative: a generative bundle without an auto decision (fitted before 0.3)"


def make_planner(
    bundle: Bundle,
    mode: PlannerMode | None = None,
    *,
    config: PlannerConfig | None = None,
    control: ControlPlannerConfig | None = None,
) -> Planner:
    """The planner of ``mode`` for ``bundle``.

    ``None`` or ``"auto"``: the mode the bundle trusts (:func:`mode_for`). ``"control"``
    needs a control-mode bundle or an auto bundle that carries a control ensemble;
    ``"generative"`` needs a generative (or auto) bundle; ``"best"`` works with any.

    Args:
        bundle: the fitted model.
        mode: ``"auto"``, ``"generative"``, ``"control"`` or ``"best"``; None: auto.
        config: the generative (and best) planner's options.
        control: the control planner's options.

    Returns:
        A :class:`~tracker_sched.planning.generative.GenerativePlanner`, a
        :class:`ControlPlanner` or a :class:`~tracker_sched.planning.best.BestPlanner`.

    Raises:
        InputError: the bundle cannot plan in ``mode``.
    """
    from tracker_sched.planning.best import BestPlanner

    chosen = mode_for(bundle) if mode in (None, "auto") else mode
    if chosen == "best":
        return BestPlanner(bundle, config)
    if chosen == "control":
        if bundle.manifest.kind == KIND:
            return ControlPlanner(bundle, control)
        view = bundle.control_view()
        if view is None:
            raise InputError("the control planner needs a control-mode bundle; this one has "
                             "no control model: fit it with --mode control (or --mode auto, "
                             "where the rule could pick control)")
        return ControlPlanner(view, control)
    if chosen != "generative":
        raise InputError(f"unknown planner mode {chosen!r}: generative, control, best or auto")
    if bundle.manifest.kind == KIND:
        raise InputError("this bundle was fitted in control mode; plan with mode 'control'")
    return GenerativePlanner(bundle, config)


__all__ = ["ControlPlanner", "ControlPlannerConfig", "PlannerMode", "make_planner", "mode_for",
           "mode_reason"]

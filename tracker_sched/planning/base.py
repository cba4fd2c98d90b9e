"""What every planner shares: the live run on the bundle's grid, the incumbent, the guards, the
fallback and the recommendation format.

:class:`Planner` holds ``plan()`` once: it reads the live window, fixes the plan's future
steps and the current plan on them (a :class:`PlanWindow`), and hands that to the planner's
own search (``_search``). :class:`~tracker_sched.planning.generative.GenerativePlanner` and
:class:`~tracker_sched.planning.control.ControlPlanner` differ only there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from tracker_sched.bundle.folder import Bundle
from tracker_sched.data.grid import (
    LOG_LR,
    N_CHANNELS,
    TRAIN_LOSS,
    VAL_METRIC,
    SweepTensors,
    resample,
)
from tracker_sched.errors import InputError
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import Recommendation, Schedule


class Guards(Protocol):
    """The guard settings every planner's configuration carries (see :meth:`Planner._guard`)."""

    @property
    def lr_cap(self) -> float: ...  # max lr / the sweep's best peak lr

    @property
    def no_rise_after_tau(self) -> float: ...

    @property
    def max_change_dex(self) -> float: ...  # per replan, log10 units

    @property
    def trust_region_dex(self) -> float | None: ...  # band around the incumbent; None: off


@dataclass(frozen=True)
class PlanWindow:
    """One replan's fixed inputs: the live run on the grid and the steps the plan covers."""

    live: SweepTensors  # the live run on the grid, standardised: (1, G, 3)
    end: int  # its last fully observed grid point ("now")
    step: int  # the run's step now
    total_steps: int
    future_steps: np.ndarray  # (G - end,) int64: the plan's steps, from now to total_steps
    current_log_lr: np.ndarray | None  # the current plan at future_steps (log10); None: none


class Planner:
    """The planner base: plans the remaining schedule of a live run from a fitted bundle.

    Args:
        bundle: the fitted model.
        guards: the guard settings (the planner's configuration).
    """

    #: the mode its recommendations name (:attr:`Recommendation.mode`)
    MODE: Literal["generative", "control", "best"] = "generative"

    def __init__(self, bundle: Bundle, guards: Guards) -> None:
        self.bundle = bundle
        self.guards = guards
        m = bundle.manifest
        self.norm = m.normalisation
        self.grid_points = m.grid_points
        self.window = m.window
        self.sign = 1.0 if m.metrics.direction == "max" else -1.0

    # ------------------------------------------------------------------ the one entry point
    def plan(
        self,
        history: LiveHistory,
        *,
        step: int,
        total_steps: int,
        current: Schedule | None = None,
    ) -> Recommendation:
        """One replan of the remaining schedule.

        Args:
            history: what the live run has logged so far.
            step: the run's step now (``0 <= step <= total_steps``).
            total_steps: the run's planned budget.
            current: the schedule the run follows now (the guards limit the change from it,
                and a fallback keeps it); None: none yet.

        Returns:
            The :class:`~tracker_sched.schema.Recommendation`: a plan, or a fallback that
            keeps the current plan with the reason.

        Raises:
            InputError: unusable input (a step outside the budget, no fully observed point);
                the advisor catches it.
        """
        live, end = self.live_window(history, step, total_steps)
        future = np.rint(np.linspace(0, 1, self.grid_points)[end:] * total_steps).astype(np.int64)
        future[0] = min(int(future[0]), step)  # the plan starts now
        return self._search(PlanWindow(live, end, step, total_steps, future,
                                       self._current(current, future)))

    def _search(self, w: PlanWindow) -> Recommendation:
        """The planner's own search from the window to a recommendation."""
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs
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

    def live_window(self, history: LiveHistory, step: int,
                    total_steps: int) -> tuple[SweepTensors, int]:
        """The live run on the grid and its last fully observed grid point ("now").

        Raises :class:`InputError` when the step is outside the budget or no grid point has
        train loss, lr and the validation metric together.
        """
        if total_steps <= 0 or not 0 <= step <= total_steps:
            raise InputError(f"step {step} is outside the budget [0, {total_steps}]")
        live = self.live_tensors(history, total_steps)
        observed = live.mask[0].all(dim=1)
        if not bool(observed.any()):
            raise InputError("the live window has no point with train loss, lr and val metric")
        return live, min(int(torch.nonzero(observed).max()), self.grid_points - 2)

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

    # ------------------------------------------------------------------ guards and answers
    def _guard(
        self,
        log_lr: np.ndarray,
        end: int,
        *,
        current: np.ndarray | None = None,
        incumbent: np.ndarray | None = None,
    ) -> np.ndarray:
        """Apply the guards in order: change per replan, trust region, cap, no late rise."""
        cfg = self.guards
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
        self, status: Literal["planned", "fallback"], reason: str, w: PlanWindow,
        log_lr: np.ndarray, pred: float | None, spread: float | None, accepted: int,
        drawn: int,
    ) -> Recommendation:
        lr = np.power(10.0, log_lr)
        return Recommendation(
            status=status, reason=reason, step=w.step,
            lr_now=float(np.interp(w.step, w.future_steps, lr)),
            schedule=Schedule(step=[int(s) for s in w.future_steps], lr=[float(v) for v in lr]),
            predicted_final=pred, predicted_spread=spread, samples_accepted=accepted,
            samples_drawn=drawn, model_version=self.bundle.manifest.created_at,
            mode=self.MODE,
        )

    def _fallback(self, w: PlanWindow, reason: str, keep_log_lr: np.ndarray, *,
                  pred: float | None, spread: float | None, accepted: int,
                  drawn: int) -> Recommendation:
        """Keep ``keep_log_lr`` (the current plan where there is one), guarded, with why."""
        return self._recommendation("fallback", reason, w, self._guard(keep_log_lr, w.end),
                                    pred, spread, accepted, drawn)


__all__ = ["Guards", "PlanWindow", "Planner"]

"""The ``best`` planner: follow the sweep's best configuration's schedule, as it was logged.

An ``auto`` bundle that trusts no planner (:mod:`tracker_sched.planning.auto`) advises the
lr the sweep's best configuration used at the same progress: a live run advised in this
mode reproduces the sweep's best schedule (stretched to its own budget). The schedule is
the best run's logged lr, simplified at fit time (:func:`simplify`) and stored in the
bundle (:class:`~tracker_sched.bundle.decision.BestSchedule`); a bundle without one uses the
warm-up plan on its grid.

A best plan carries a forecast, as a generative one does: the generative model's predicted
final validation metric (in the metric's own units) and its ensemble spread, for the live run
going on as it has. A run advised in this mode has followed this schedule from its start
(the warm-up plan is the same schedule), so that is the forecast of following it. The
forecast is the generative planner's own (its current-course candidate, read from a
:class:`~tracker_sched.planning.generative.GenerativePlanner` that no candidate may beat),
made only once the live window is full and the bundle has generative members; else, or if it
fails, ``predicted_final`` is None and the plan stands.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from tracker_sched.bundle.decision import MAX_BEST_POINTS, BestSchedule
from tracker_sched.bundle.folder import Bundle
from tracker_sched.data.validation import CleanRun
from tracker_sched.errors import InputError
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.planning.history import LiveHistory, spans_window
from tracker_sched.schema import Recommendation, Schedule

log = logging.getLogger("tracker_sched.planning.best")

#: largest log10 error the stored schedule may have at a logged step (0.005 dex: 1.2 %)
TOLERANCE_DEX = 0.005
_MAX_INPUT = 20_000  # logged points looked at (a uniform subsample beyond)
#: The generative planner that forecasts a best plan: no candidate may beat the current
#: course (its answer is then the current course's forecast), and the fewest candidates.
_FORECAST_ONLY = {"candidates": 2, "regimes": 0, "interpolations": (), "min_gain": math.inf}


def simplify(x: np.ndarray, y: np.ndarray, tol: float) -> np.ndarray:
    """Indices of the points of the polyline ``(x, y)`` that reproduce it within ``tol`` in
    ``y`` (Ramer-Douglas-Peucker, vertical distance), first and last always kept."""
    keep = np.zeros(x.size, dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, x.size - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        xs, ys = x[a + 1:b], y[a + 1:b]
        span = x[b] - x[a]
        line = y[a] + (y[b] - y[a]) * ((xs - x[a]) / span if span > 0 else 0.0)
        err = np.abs(ys - line)
        i = int(np.argmax(err))
        if err[i] > tol:
            k = a + 1 + i
            keep[k] = True
            stack.extend([(a, k), (k, b)])
    return np.flatnonzero(keep)


def best_schedule(run: CleanRun) -> BestSchedule:
    """``run``'s logged lr as a :class:`BestSchedule` (see the module docstring).

    Raises:
        ValueError: the run logged no positive lr.
    """
    s = run.series["lr"]
    ok = s.value > 0
    steps, lr = s.step[ok].astype(np.float64), s.value[ok]
    if steps.size == 0:
        raise ValueError(f"run {run.run_id} logged no positive lr")
    if steps.size > _MAX_INPUT:
        idx = np.unique(np.linspace(0, steps.size - 1, _MAX_INPUT).round().astype(np.int64))
        steps, lr = steps[idx], lr[idx]
    tau = np.clip(steps / run.total_steps, 0.0, 1.0)
    log_lr = np.log10(lr)
    if tau[0] > 0:  # hold the first and last logged values to the ends of the budget
        tau, log_lr = np.r_[0.0, tau], np.r_[log_lr[0], log_lr]
    if tau[-1] < 1:
        tau, log_lr = np.r_[tau, 1.0], np.r_[log_lr, log_lr[-1]]
    tol = TOLERANCE_DEX
    idx = simplify(tau, log_lr, tol)
    while idx.size > MAX_BEST_POINTS:
        tol *= 2
        idx = simplify(tau, log_lr, tol)
    return BestSchedule(run_id=run.run_id, tau=[float(t) for t in tau[idx]],
                        lr=[float(10.0 ** v) for v in log_lr[idx]], tolerance_dex=tol)


def stretched(tau: list[float], lr: list[float], total_steps: int) -> Schedule:
    """A ``(tau, lr)`` schedule on a run of ``total_steps``: one point per step (a step two
    points fall on keeps the later one, as a drop logged at that step does)."""
    steps = np.rint(np.asarray(tau) * total_steps).astype(np.int64)
    last = np.r_[steps[1:] != steps[:-1], True]
    return Schedule(step=[int(s) for s in steps[last]],
                    lr=[float(v) for v in np.asarray(lr)[last]])


class BestPlanner(GenerativePlanner):
    """Answers every replan with the sweep's best configuration's schedule (from ``step`` on
    nothing is planned: the schedule is the best run's, stretched to ``total_steps``), with
    the generative model's forecast of the final metric (see the module docstring).

    Args:
        bundle: the fitted model (any kind; only a bundle with generative members forecasts).
        config: the generative planner's options (its ``seed`` and ``top_k`` are unused).
    """

    MODE = "best"

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None) -> None:
        super().__init__(bundle, config)
        self._forecaster: GenerativePlanner | None = None  # built at the first forecast
        self._warned = False

    def plan(self, history: LiveHistory, *, step: int, total_steps: int,
             current: Schedule | None = None) -> Recommendation:
        """The best schedule at ``step`` of a ``total_steps`` run; ``history`` is read only
        for the forecast (:meth:`forecast`)."""
        m = self.bundle.manifest
        best = m.planner.best_schedule if m.planner is not None else None
        if best is not None:
            sched = stretched(best.tau, best.lr, total_steps)
            what = f"the sweep's best configuration's schedule (run {best.run_id}, as logged)"
        else:
            sched = stretched(m.sweep.warmup_tau, m.sweep.warmup_lr, total_steps)
            what = "the sweep's best run's schedule (on the bundle's grid)"
        with np.errstate(divide="ignore"):
            lr_now = float(10 ** np.interp(step, sched.step, np.log10(sched.lr)))
        pred, spread = self.forecast(history, step=step, total_steps=total_steps)
        return Recommendation(
            status="planned", reason=f"following {what}", step=int(step), lr_now=lr_now,
            schedule=sched, predicted_final=pred, predicted_spread=spread,
            model_version=m.created_at, mode="best",
        )

    def forecast(self, history: LiveHistory, *, step: int,
                 total_steps: int) -> tuple[float | None, float | None]:
        """The generative model's forecast of the run's final validation metric, in the
        metric's own units, and its ensemble spread. Never raises.

        Args:
            history: what the live run has logged so far.
            step: the run's step now.
            total_steps: the run's planned budget.

        Returns:
            ``(predicted_final, predicted_spread)``; ``(None, None)`` for a bundle without
            generative members (a control-mode bundle), before the live window is full, or
            when the forecast fails (logged once).
        """
        m = self.bundle.manifest
        try:
            first = history.first_step
            if (m.kind != "latent_ode" or first is None or total_steps <= 0
                    or not spans_window(m.grid_points, m.window, step, total_steps, first)):
                return None, None
            if self._forecaster is None:
                self._forecaster = GenerativePlanner(
                    self.bundle, self.config.model_copy(update=_FORECAST_ONLY))
            rec = self._forecaster.plan(history, step=step, total_steps=total_steps)
        except InputError as exc:  # the window lacks a point with all three metrics
            log.debug("no forecast for the best plan: %s", exc)
            return None, None
        except Exception as exc:  # a plan is never lost to its forecast
            if not self._warned:
                self._warned = True
                log.warning("tracker-sched: no forecast for the best plan: %s: %s",
                            type(exc).__name__, exc)
            return None, None
        pred, spread = rec.predicted_final, rec.predicted_spread
        if pred is None or not math.isfinite(pred):
            return None, None
        return pred, (spread if spread is not None and math.isfinite(spread) else None)


__all__ = ["TOLERANCE_DEX", "BestPlanner", "best_schedule", "simplify", "stretched"]

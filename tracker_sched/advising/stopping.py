"""The stop decision inside a live run: forecast the final metric, calibrated odds, a rule.

>>> # stopper = Stopper(Bundle.load("bundle/"), total_steps=840)  # rule: StopRule()
>>> # decision = stopper.decide(history, step=300, incumbent=0.91)  # best finished run so far
>>> # if decision.stop: break                                       # the run keeps its logs

:meth:`Stopper.decide` never raises: any failure is a decision not to stop, with the reason
(logged once). The odds come from the bundle's
:class:`~tracker_sched.model.stop_odds.StopCalibration` (written at fit time); a bundle
without one (fitted before stop decisions existed) never stops a run and says to refit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tracker_sched.advising.serving import whole_steps, window_ready
from tracker_sched.bundle.folder import Bundle
from tracker_sched.fit.stop_calibration import member_finals
from tracker_sched.model.stop_odds import (
    StopCalibration,
    StopDecision,
    StopRequest,
    StopRule,
    judge,
)
from tracker_sched.planning.generative import GenerativePlanner
from tracker_sched.planning.history import LiveHistory

log = logging.getLogger("tracker_sched.advising.stopping")

#: Why a control bundle (``fit --mode control``) never stops a run, the reason its decisions
#: carry everywhere (Advisor, RemoteAdvisor, the served model, the deployments target).
NO_STOP_CONTROL = (
    "no stop decisions from a control bundle: its model forecasts the metric only under an "
    "lr schedule it is given, and its fit calibrates no odds of beating the incumbent; fit "
    "with --mode auto or generative (generative members, which forecast the final metric and "
    "are calibrated) to have stop decisions, in any planner mode")


@dataclass(frozen=True)
class FinalForecast:
    """The ensemble's forecast of a run's final metric from the window ending at ``tau``.

    ``mean`` and ``spread`` in transformed units (see :mod:`tracker_sched.model.stop_odds`).
    """

    tau: float
    mean: float
    spread: float


def forecast_final(bundle: Bundle, history: LiveHistory, step: int, total_steps: int, *,
                   planner: GenerativePlanner | None = None) -> FinalForecast:
    """Forecast the final validation metric of a live run (every member, one batched solve).

    ``planner``: one built on ``bundle`` to reuse (only its resampling of the run is used).

    Raises:
        InputError: the step is outside the budget, or no grid point has all three channels.
    """
    planner = planner or GenerativePlanner(bundle)
    live, end = planner.live_window(history, step, total_steps)
    m = bundle.manifest
    finals = member_finals(bundle.models, m.normalisation, live, np.zeros(1, dtype=np.int64),
                           np.asarray([end]), m.window)[:, 0]
    spread = float(finals.std()) if finals.size > 1 else 0.0
    return FinalForecast(tau=end / (m.grid_points - 1), mean=float(finals.mean()), spread=spread)


class Stopper:
    """Stop decisions for one live run.

    Args:
        bundle: a fitted bundle with a stop calibration (``bundle.manifest.stopping``).
        total_steps: the run's planned budget.
        rule: threshold, grace period and patience (default :class:`StopRule`).

    It remembers how many decisions in a row were below the threshold; asking again at the
    same step does not count twice.
    """

    def __init__(self, bundle: Bundle, total_steps: int, rule: StopRule | None = None) -> None:
        self.bundle = bundle
        self.total_steps = whole_steps(total_steps, "total_steps", minimum=1)
        self.rule = rule or StopRule()
        self.calibration: StopCalibration | None = bundle.manifest.stopping
        self._below = 0  # consecutive decisions below the threshold, the last one included
        self._below_before_last = 0
        self._last_step: int | None = None
        self._warned: set[str] = set()
        self._planner: GenerativePlanner | None = None
        self.last: StopDecision = StopDecision(reason="no decision asked for yet")

    def decide(self, history: LiveHistory, step: int, incumbent: float | None) -> StopDecision:
        """Should the run stop at ``step``? Never raises (a failure is "do not stop").

        Args:
            history: what the run has logged so far.
            step: the run's current step.
            incumbent: the final validation metric to beat, as logged (the best finished
                run so far, or a target); None: nothing to beat yet, never stop.
        """
        try:
            decision = self._decide(history, step, incumbent)
        except Exception as exc:  # a training loop never dies because of us
            reason = f"stop decision failed, not stopping: {type(exc).__name__}: {exc}"
            key = reason[:80]
            if key not in self._warned:
                self._warned.add(key)
                log.warning("tracker-sched: %s", reason)
            decision = StopDecision(incumbent=incumbent, reason=reason)
        self.last = decision
        return decision

    def _decide(self, history: LiveHistory, step: int, incumbent: float | None) -> StopDecision:
        at = whole_steps(step, "step")
        cal = self.calibration
        if self.bundle.manifest.kind != "latent_ode":
            return StopDecision(incumbent=incumbent, reason=NO_STOP_CONTROL)
        if cal is None:
            return StopDecision(incumbent=incumbent, reason="the bundle has no stop "
                                "calibration (fitted before stop decisions): refit it")
        tau_now = at / self.total_steps
        if at >= self.total_steps:  # a stop there would save nothing and lose a finished run
            return StopDecision(incumbent=incumbent, tau=tau_now,
                                reason="the run has reached its budget: nothing left to save")
        first = history.first_step
        if first is None or not window_ready(self.bundle, at, self.total_steps, first):
            return StopDecision(incumbent=incumbent, tau=tau_now,
                                reason="the context window is not full yet")
        self._planner = self._planner or GenerativePlanner(self.bundle)
        fc = forecast_final(self.bundle, history, at, self.total_steps, planner=self._planner)
        shown = float(cal.from_transformed(fc.mean + cal.bucket(fc.tau).bias))
        if incumbent is None:
            return StopDecision(predicted_final=shown, predicted_spread=fc.spread, tau=fc.tau,
                                reason="no incumbent yet (no finished run to beat)")
        bar = self.rule.bar(float(incumbent), cal.direction)
        p = cal.p_beat(fc.tau, fc.mean, fc.spread, cal.to_transformed(bar))
        if at == self._last_step:
            before = self._below_before_last  # the same step again: do not count twice
        else:
            before, self._below_before_last = self._below, self._below
        self._last_step = at
        decision = judge(self.rule, p_beat=p, tau=tau_now, window_full=True,
                         below_before=before, incumbent=float(incumbent),
                         predicted_final=shown, predicted_spread=fc.spread)
        self._below = decision.below
        return decision


def decide_once(bundle: Bundle, history: LiveHistory, step: int, total_steps: int,
                ask: StopRequest) -> StopDecision:
    """One stateless decision (what a served model answers): the count of decisions below
    the threshold comes with the request. Never raises."""
    try:
        stopper = Stopper(bundle, total_steps, ask.rule)
    except Exception as exc:
        return StopDecision(incumbent=ask.incumbent,
                            reason=f"stop decision failed, not stopping: {exc}")
    stopper._below = ask.below
    return stopper.decide(history, step, ask.incumbent)


__all__ = ["NO_STOP_CONTROL", "FinalForecast", "Stopper", "decide_once", "forecast_final"]

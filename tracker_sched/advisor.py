"""The advisor: the client inside a live run. It never raises into the training loop.

>>> # advisor = Advisor(Bundle.load("bundle/"), total_steps=840)
>>> # for step in ...:
>>> #     advisor.observe(step, train_loss=loss, val_metric=acc, lr=current_lr)
>>> #     lr = advisor.lr(step)
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from tracker_sched.bundle import Bundle
from tracker_sched.control_planner import ControlPlannerConfig, make_planner, mode_for
from tracker_sched.following import PlanFollower
from tracker_sched.planner import LiveHistory, PlannerConfig
from tracker_sched.schema import Recommendation, Schedule

log = logging.getLogger("tracker_sched.advisor")

MAX_FAILURES = 3  # replans that may raise before the advisor keeps its current plan for good


class Advisor(PlanFollower):
    """Observe metrics, get the lr to use now; replans every ``replan_every`` observations.

    By default (``max_replans=1``) it makes one open-loop plan once a full
    window exists: on the MNIST-1D benchmark's validation block, replanning every
    10 observations lost 12.5 points and cost 18% overhead, one plan lost 1.9 at
    3%. ``max_replans=None`` replans for the whole run.

    Before the live run covers a full context window it follows the warm-up
    plan: the schedule of the sweep's best run, stored in the bundle, stretched
    to ``total_steps``. Any error becomes a fallback recommendation (the current
    plan kept, with the reason), logged once per distinct reason. A replan that
    raises does not count as the run's plan: it is tried again at the next due point,
    up to ``MAX_FAILURES`` times.

    ``mode="control"`` plans with :class:`~tracker_sched.control_planner.ControlPlanner`
    from a control-mode bundle (``control`` holds its settings); the default stays
    ``"generative"`` until the benchmark shows the control mode winning on validation.
    """

    def __init__(
        self,
        bundle: Bundle,
        total_steps: int,
        *,
        config: PlannerConfig | None = None,
        replan_every: int = 10,
        max_replans: int | None = 1,
        mode: Literal["generative", "control"] | None = None,
        control: ControlPlannerConfig | None = None,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        super().__init__(log)
        self.bundle = bundle
        self.total_steps = int(total_steps)
        self.replan_every = max(1, replan_every)
        self.max_replans = max_replans
        self.replans = 0  # plans made (a failed attempt does not count)
        self.failures = 0  # replans that raised; the advisor stops trying after MAX_FAILURES
        self.planner = make_planner(bundle, mode, config=config, control=control)
        self.mode = mode_for(bundle) if mode is None else mode
        self._obs: dict[str, tuple[list[int], list[float]]] = {
            "train_loss": ([], []), "lr": ([], []), "val_metric": ([], []),
        }
        self._since_plan = 0
        sweep = bundle.manifest.sweep
        steps = [round(t * self.total_steps) for t in sweep.warmup_tau]
        self._plan = Recommendation(
            status="warmup", reason="following the sweep's best run until a full window exists",
            step=0, lr_now=sweep.warmup_lr[0],
            schedule=Schedule(step=steps, lr=list(sweep.warmup_lr)),
            model_version=bundle.manifest.created_at,
        )

    def observe(
        self,
        step: int,
        *,
        train_loss: float | None = None,
        val_metric: float | None = None,
        lr: float | None = None,
    ) -> Recommendation:
        """Record what the run logged at ``step``; replan when due. Never raises."""
        try:
            for key, value in (("train_loss", train_loss), ("val_metric", val_metric),
                               ("lr", lr)):
                if value is None:
                    continue
                steps, values = self._obs[key]
                if steps and step <= steps[-1]:
                    continue  # repeated or out-of-order step: ignore, keep the series clean
                steps.append(int(step))
                values.append(float(value))
            self._since_plan += 1
            due = self._since_plan >= self.replan_every and self._window_ready(step)
            if (due and (self.max_replans is None or self.replans < self.max_replans)
                    and self.failures < MAX_FAILURES):
                self._since_plan = 0
                try:
                    self._replan(step)
                except Exception:
                    # A failed replan does not use up the run's plans: try again at the
                    # next due point, up to MAX_FAILURES times in all.
                    self.failures += 1
                    raise
                self.replans += 1
        except Exception as exc:  # the training loop must never die because of us
            self._fallback(step, f"advisor error: {type(exc).__name__}: {exc}")
        return self._plan

    def lr(self, step: int) -> float:
        """The lr to use at ``step`` (log-linear between planned points). Never raises."""
        out = self._scheduled_lr(step)
        return self._plan.lr_now if out is None else out

    # ------------------------------------------------------------------ internals
    def _window_ready(self, step: int) -> bool:
        g = self.bundle.manifest.grid_points
        return step / self.total_steps * (g - 1) >= self.bundle.manifest.window - 1

    def _history(self) -> LiveHistory:
        def arr(key: str) -> tuple[np.ndarray, np.ndarray]:
            s, v = self._obs[key]
            return np.asarray(s, dtype=np.int64), np.asarray(v, dtype=np.float64)

        return LiveHistory(train_loss=arr("train_loss"), lr=arr("lr"),
                           val_metric=arr("val_metric"))

    def _replan(self, step: int) -> None:
        rec = self.planner.plan(self._history(), step=step, total_steps=self.total_steps,
                                current=self._plan.schedule)
        if rec.status == "fallback":
            self._warn_once(rec.reason)
            if self._plan.status == "warmup":
                rec = rec.model_copy(update={"schedule": self._plan.schedule,
                                             "lr_now": self.lr(step)})
        self._plan = rec

    def _fallback(self, step: object, reason: str) -> None:
        self._warn_once(reason)
        self._plan = self._plan.model_copy(update={"status": "fallback", "reason": reason,
                                                   "step": self._safe_step(step)})

"""The advisor: the client inside a live run. It never raises into the training loop.

>>> # advisor = Advisor(Bundle.load("bundle/"), total_steps=840)
>>> # for step in ...:
>>> #     advisor.observe(step, train_loss=loss, val_metric=acc, lr=current_lr)
>>> #     lr = advisor.lr(step)
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from tracker_sched.advising.following import PlanFollower
from tracker_sched.advising.serving import warmup_plan, window_ready
from tracker_sched.advising.stopping import Stopper
from tracker_sched.bundle.decision import DecidedMode
from tracker_sched.bundle.folder import Bundle
from tracker_sched.model.stop_odds import StopDecision, StopRule
from tracker_sched.planning.control import (
    ControlPlannerConfig,
    PlannerMode,
    make_planner,
    mode_reason,
)
from tracker_sched.planning.generative import PlannerConfig
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import Recommendation

log = logging.getLogger("tracker_sched.advisor")

MAX_FAILURES = 3  # replans that may raise before the advisor keeps its current plan for good
HEAL_AFTER = 3  # observations behind the newest step that make the newest one the outlier


class Advisor(PlanFollower):
    """Observe metrics, get the lr to use now; replans every ``replan_every`` observations.

    By default (``max_replans=1``) it makes one open-loop plan once a full
    window exists (``docs/planner.md`` has the benchmark behind that default);
    ``max_replans=None`` replans for the whole run.

    Before the live run covers a full context window it follows the warm-up
    plan: the schedule of the sweep's best run, stored in the bundle, stretched
    to ``total_steps``. Any error becomes a fallback recommendation (the current
    plan kept, with the reason), logged once per distinct reason. A replan that
    raises does not count as the run's plan: it is tried again at the next due point,
    up to ``MAX_FAILURES`` times.

    Observations may arrive late or out of order: each series takes only steps after its
    last one, and a step far ahead of the run's next ones is dropped as an outlier (see
    ``HEAL_AFTER``).

    ``mode="auto"`` (the default) follows the planner the bundle trusts: an auto bundle's
    fit-time decision (control, generative, or ``best``: the sweep's best configuration's
    schedule), else the bundle's kind. ``mode`` and ``mode_reason`` say which and why;
    every recommendation names its ``mode``. ``"generative"``, ``"control"`` or
    ``"best"`` force a mode (``control`` holds the control planner's settings).

    Args:
        bundle: the fitted model (:func:`tracker_sched.load_bundle`).
        total_steps: the run's planned budget, in the unit of the steps it will observe.
        config: the generative planner's options (candidates, guards).
        replan_every: observations between replans.
        max_replans: plans made once the window is ready (None: no limit).
        mode: ``"auto"`` (default, also ``None``), ``"generative"``, ``"control"`` or
            ``"best"``.
        control: the control planner's options.

    Raises:
        InputError: ``total_steps`` is not a positive whole number, or ``mode`` does not
            fit the bundle (a control mode needs a control model). After construction
            nothing raises.
    """

    def __init__(
        self,
        bundle: Bundle,
        total_steps: int,
        *,
        config: PlannerConfig | None = None,
        replan_every: int = 10,
        max_replans: int | None = 1,
        mode: PlannerMode | None = "auto",
        control: ControlPlannerConfig | None = None,
    ) -> None:
        super().__init__(log, total_steps, replan_every=replan_every, max_replans=max_replans)
        self.bundle = bundle
        self.failures = 0  # replans that raised; the advisor stops trying after MAX_FAILURES
        self.planner = make_planner(bundle, mode, config=config, control=control)
        #: the mode followed (never "auto": what auto resolved to) and why
        self.mode: DecidedMode = self.planner.MODE
        self.mode_reason = mode_reason(bundle, mode)
        log.info("tracker-sched: planner mode %s: %s", self.mode, self.mode_reason)
        self._obs: dict[str, tuple[list[int], list[float]]] = {
            "train_loss": ([], []), "lr": ([], []), "val_metric": ([], []),
        }
        self._since_plan = 0
        # The steps of the latest accepted observations (bounded: a run may log millions).
        self._accepted: deque[int] = deque(maxlen=4096)
        self._behind: list[tuple[int, dict[str, float]]] = []  # see _take_behind
        self._undo: tuple[int, Recommendation, int] | None = None  # (made at, before, replans)
        self._stopper: Stopper | None = None
        self._plan = warmup_plan(bundle, self.total_steps, mode=self.mode)  # the served one

    # ------------------------------------------------------------------ the follower's hooks
    def _take(self, at: int, values: dict[str, float]) -> None:
        """Each series takes only steps after its last one (a late validation metric for an
        earlier step than the last loss is fine). An observation behind every series it
        carries is set aside; if the run goes on behind ``HEAL_AFTER`` times in a row, the
        newer points were the outliers (a step in another unit): they are dropped, with any
        plan made from them, and the set-aside observations are kept."""
        lasts = [self._obs[key][0][-1] for key in values if self._obs[key][0]]
        if values and len(lasts) == len(values) and all(at < last for last in lasts):
            self._take_behind(at, values)  # behind every series it would extend
        else:
            self._behind.clear()  # stragglers: the run is back on course
            self._record(at, values)
            self._maybe_replan(at)

    def _decide_stop(self, incumbent: float | None, rule: StopRule | None) -> StopDecision:
        if self._stopper is None or (rule is not None and rule != self._stopper.rule):
            self._stopper = Stopper(self.bundle, self.total_steps, rule)
        step = self._accepted[-1] if self._accepted else 0
        return self._stopper.decide(self._history(), step, incumbent)

    # ------------------------------------------------------------------ internals
    def _record(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            steps, vals = self._obs[key]
            if steps and step <= steps[-1]:
                continue  # a repeated step of this series: the first value stands
            steps.append(step)
            vals.append(value)
        self._accepted.append(step)
        self._since_plan += 1

    def _take_behind(self, step: int, values: dict[str, float]) -> None:
        if self._behind and step < self._behind[-1][0]:
            self._behind.clear()
        self._behind.append((step, values))
        if len(self._behind) < HEAL_AFTER:
            return
        cut = self._behind[0][0]
        dropped = sorted({s for s in self._accepted if s > cut})
        for steps, vals in self._obs.values():
            keep = [i for i, s in enumerate(steps) if s <= cut]
            steps[:], vals[:] = [steps[i] for i in keep], [vals[i] for i in keep]
        self._since_plan = max(0, self._since_plan - sum(s > cut for s in self._accepted))
        self._accepted = deque((s for s in self._accepted if s <= cut), maxlen=4096)
        self._warn_once(f"dropped the observation at step {', '.join(map(str, dropped))}: the "
                        f"run's next {HEAL_AFTER} steps came before it (a step in another unit?)")
        if self._undo is not None and self._undo[0] > cut:
            _, self._plan, self.replans = self._undo  # that plan was made from the outlier
            self._undo = None
        behind, self._behind = self._behind, []
        for at, vals_at in behind:
            self._record(at, vals_at)
        self._maybe_replan(step)

    def _maybe_replan(self, step: int) -> None:
        first = min((s[0] for s, _ in self._obs.values() if s), default=None)
        due = (self._since_plan >= self.replan_every and first is not None
               and window_ready(self.bundle, step, self.total_steps, first))
        if (due and (self.max_replans is None or self.replans < self.max_replans)
                and self.failures < MAX_FAILURES):
            self._since_plan = 0
            before = (self._plan, self.replans)
            try:
                self._replan(step)
            except Exception:
                # A failed replan does not use up the run's plans: try again at the
                # next due point, up to MAX_FAILURES times in all.
                self.failures += 1
                raise
            self.replans += 1
            self._undo = (step, *before)

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

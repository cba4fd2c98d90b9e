"""What every advisor shares: the advisor interface, the plan it follows, the lr lookup on it,
the step checks, the never-raise guards and warnings once.

:class:`~tracker_sched.advising.advisor.Advisor` (in-process) and
:class:`~tracker_sched.advising.remote.RemoteAdvisor` (a served model) differ in how they get a
plan, not in how a training loop follows one: :class:`PlanFollower` holds the public methods
(``observe``, ``lr``, ``stop_decision``) once, and each advisor fills in the hooks
(``_take``, ``_decide_stop``, ``_fallback``, ``_unplanned_lr``). Torch-free, like the remote
client.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tracker_sched.advising.serving import whole_steps
from tracker_sched.errors import InputError
from tracker_sched.model.stop_odds import StopDecision, StopRule
from tracker_sched.schema import Recommendation


@runtime_checkable
class AdvisorLike(Protocol):
    """The advisor interface, the one definition: what a training loop, :class:`AdvisorLR`
    and the tracker callbacks use. :class:`~tracker_sched.advising.advisor.Advisor` and
    :class:`~tracker_sched.advising.remote.RemoteAdvisor` both are one."""

    @property
    def plan(self) -> Recommendation:
        """The plan the run follows now."""
        ...

    def observe(self, step: int, *, train_loss: float | None = None,
                val_metric: float | None = None, lr: float | None = None) -> Recommendation:
        """Record what the run logged at ``step``; return the plan to follow."""
        ...

    def lr(self, step: int) -> float:
        """The learning rate to use at ``step``."""
        ...


class PlanFollower:
    """The advisor interface, said once: holds the current :class:`Recommendation`, checks
    and records observations, answers ``lr(step)`` from the plan, and keeps every error out
    of the training loop.

    Args:
        log: where the warnings (once per distinct reason) go.
        total_steps: the run's planned budget, in the unit of the steps it will observe.
        replan_every: observations between plans.
        max_replans: plans made once the window is ready (None: no limit).

    Raises:
        InputError: ``total_steps`` is not a positive whole number.
    """

    #: Names the advisor in the reason of a fallback caused by an error of ours.
    _error_label = "advisor"

    def __init__(self, log: logging.Logger, total_steps: int, *, replan_every: int = 10,
                 max_replans: int | None = 1) -> None:
        self.total_steps = whole_steps(total_steps, "total_steps", minimum=1)
        self.replan_every = max(1, replan_every)
        self.max_replans = max_replans
        self.replans = 0  # plans made (a failed attempt does not count)
        self._log = log
        self._warned: set[str] = set()
        # (steps, log10 lr) of the plan, one attribute: RemoteAdvisor swaps plans from its
        # request thread while the training thread reads them, and must never see a mix.
        self._sched: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

    # ------------------------------------------------------------------ the advisor interface
    def observe(
        self,
        step: int,
        *,
        train_loss: float | None = None,
        val_metric: float | None = None,
        lr: float | None = None,
    ) -> Recommendation:
        """Record what the run logged at ``step``; plan when due. Never raises.

        A step that is no whole number in ``[0, total_steps]`` is refused (logged once) and
        changes nothing. An error of ours becomes a fallback recommendation (the current plan
        kept, with the reason).

        Args:
            step: the training step the values were logged at, in the unit of
                ``total_steps``.
            train_loss: the training loss at ``step``, if logged.
            val_metric: the validation metric at ``step``, if logged.
            lr: the lr the run used at ``step``, if known.

        Returns:
            The :class:`~tracker_sched.schema.Recommendation` to follow now.
        """
        try:
            values = {key: float(v) for key, v in (("train_loss", train_loss),
                                                    ("val_metric", val_metric), ("lr", lr))
                      if v is not None}
            at = self._valid_step(step)
            if at is not None:
                self._take(at, values)
        except Exception as exc:  # the training loop must never die because of us
            self._observe_failed(step, f"{self._error_label} error: {type(exc).__name__}: "
                                 f"{exc}")
        return self._plan

    def lr(self, step: int) -> float:
        """The lr to use at ``step`` (log-linear between planned points). Never raises.

        Args:
            step: the training step about to run.

        Returns:
            The learning rate (positive, finite): the plan's, or the last known one.
        """
        out = self._scheduled_lr(step)
        return self._unplanned_lr() if out is None else out

    def stop_decision(self, incumbent: float | None, *,
                      rule: StopRule | None = None) -> StopDecision:
        """Should the run stop now? The odds that its final validation metric beats
        ``incumbent`` (the best finished run's, or a target; as logged), from what it has
        observed (:mod:`tracker_sched.advising.stopping`). Never raises: a failure is "do
        not stop".

        Args:
            incumbent: the value to beat; None: nothing to beat yet (never stops).
            rule: threshold, grace period, patience (default :class:`StopRule`); a new rule
                starts a new count of decisions below the threshold.

        Returns:
            The :class:`~tracker_sched.model.stop_odds.StopDecision`.
        """
        try:
            return self._decide_stop(incumbent, rule)
        except Exception as exc:  # the training loop must never die because of us
            self._warn_once(f"stop decision failed: {type(exc).__name__}: {exc}")
            return StopDecision(incumbent=None, reason=f"stop decision failed, not stopping: "
                                f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ what each advisor fills in
    def _take(self, step: int, values: dict[str, float]) -> None:
        """Record a checked observation (finite or not, as logged) and plan when due."""
        raise NotImplementedError

    def _decide_stop(self, incumbent: float | None, rule: StopRule | None) -> StopDecision:
        raise NotImplementedError

    def _fallback(self, step: Any, reason: str) -> None:
        """Keep the plan the run follows, marked as a fallback with ``reason``."""
        raise NotImplementedError

    def _observe_failed(self, step: Any, reason: str) -> None:
        self._fallback(step, reason)

    def _unplanned_lr(self) -> float:
        """The lr while the plan has no schedule to look it up in."""
        return self._plan.lr_now

    # ------------------------------------------------------------------ shared internals
    def _valid_step(self, step: object) -> int | None:
        """``step`` as a whole number in ``[0, total_steps]``; None (logged once) if not."""
        try:
            at = whole_steps(step, "step")
        except InputError as exc:
            self._warn_once(f"observation refused: {exc}")
            return None
        if at > self.total_steps:
            self._warn_once(f"observation refused: step {at} is past total_steps="
                            f"{self.total_steps} (a step in another unit?)")
            return None
        return at

    @property
    def plan(self) -> Recommendation:
        return self._plan

    @property
    def _plan(self) -> Recommendation:
        return self.__plan

    @_plan.setter
    def _plan(self, rec: Recommendation) -> None:
        # lr() runs at every training step: convert the schedule once per plan, not per call.
        steps = np.asarray(rec.schedule.step, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_lr = np.log10(np.asarray(rec.schedule.lr, dtype=np.float64))
        self._sched = (steps, log_lr)
        self.__plan = rec

    @property
    def _sched_steps(self) -> np.ndarray:
        return self._sched[0]

    def _scheduled_lr(self, step: int) -> float | None:
        """The planned lr at ``step`` (log-linear between points); None without a usable one."""
        steps, log_lr = self._sched
        if not steps.size:
            return None
        try:
            out = float(10 ** np.interp(step, steps, log_lr))
        except Exception as exc:
            self._warn_once(f"lr lookup failed: {exc}")
            return None
        return out if math.isfinite(out) and out > 0 else None

    def _safe_step(self, step: Any) -> int:
        """``step`` as an int, else the plan's own: an error path must not raise again."""
        try:
            return int(step)
        except (TypeError, ValueError, OverflowError):  # None, "x", nan, inf
            return self._plan.step

    def _warn_once(self, reason: str) -> None:
        key = reason.split(";")[0][:80]
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning("tracker-sched: %s", reason)

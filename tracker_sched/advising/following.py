"""What every advisor shares: the plan it follows, the lr lookup on it, and warnings once.

:class:`~tracker_sched.advising.advisor.Advisor` (in-process) and
:class:`~tracker_sched.advising.remote.RemoteAdvisor` (a served model) differ in how they get a
plan, not in how a training loop follows one. Torch-free, like the remote client.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

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
    """Holds the current :class:`Recommendation` and answers ``lr(step)`` from it."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._warned: set[str] = set()
        # (steps, log10 lr) of the plan, one attribute: RemoteAdvisor swaps plans from its
        # request thread while the training thread reads them, and must never see a mix.
        self._sched: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

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

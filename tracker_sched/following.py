"""What every advisor shares: the plan it follows, the lr lookup on it, and warnings once.

:class:`~tracker_sched.advisor.Advisor` (in-process) and
:class:`~tracker_sched.remote.RemoteAdvisor` (a served model) differ in how they get a
plan, not in how a training loop follows one. Torch-free, like the remote client.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from tracker_sched.schema import Recommendation


class PlanFollower:
    """Holds the current :class:`Recommendation` and answers ``lr(step)`` from it."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._warned: set[str] = set()
        self._sched_steps = np.zeros(0)
        self._sched_log_lr = np.zeros(0)

    @property
    def plan(self) -> Recommendation:
        return self._plan

    @property
    def _plan(self) -> Recommendation:
        return self.__plan

    @_plan.setter
    def _plan(self, rec: Recommendation) -> None:
        # lr() runs at every training step: convert the schedule once per plan, not per call.
        self.__plan = rec
        self._sched_steps = np.asarray(rec.schedule.step, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            self._sched_log_lr = np.log10(np.asarray(rec.schedule.lr, dtype=np.float64))

    def _scheduled_lr(self, step: int) -> float | None:
        """The planned lr at ``step`` (log-linear between points); None without a usable one."""
        if not self._sched_steps.size:
            return None
        try:
            out = float(10 ** np.interp(step, self._sched_steps, self._sched_log_lr))
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

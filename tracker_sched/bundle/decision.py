"""The planner decision a bundle carries (``--mode auto``): which planner it trusts, and why.

An ``auto`` fit (:mod:`tracker_sched.design.auto_fit`) stores a :class:`PlannerDecision` in the
manifest's ``planner`` field: the mode (``generative``, ``control`` or ``best``), the
reason in words, the evidence and the rule that decided it, the sweep's best
configuration's schedule as logged (what the ``best`` mode follows), and, when the
decision could pick the control planner, the control ensemble's description (its
weights sit in ``weights.pt`` beside the generative members', as ``control_member_<i>``).
Bundles written before the field existed have ``planner=None`` and behave as before.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracker_sched import limits
from tracker_sched.data.grid import Normalisation
from tracker_sched.model.latent import ModelConfig

#: The modes a bundle's decision can name; ``auto`` (a request) resolves to one of them.
DecidedMode = Literal["generative", "control", "best"]

#: Points the stored best schedule keeps at most (the warm-up plan travels in every answer).
MAX_BEST_POINTS = 400


class BestSchedule(BaseModel):
    """The sweep's best run's lr as logged, on its own progress axis (``tau`` = step / its
    budget), simplified to at most :data:`MAX_BEST_POINTS` points that reproduce it within
    ``tolerance_dex`` (log-linear between points).

    Attributes:
        run_id: the run it was read from (a seed of the best configuration).
        tau: progress of each point, rising from 0 to 1.
        lr: the lr at each point (positive, finite).
        tolerance_dex: the largest log10 error of the simplification at a logged step.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    tau: list[float]
    lr: list[float]
    tolerance_dex: float = Field(ge=0)

    @model_validator(mode="after")
    def _usable(self) -> BestSchedule:
        if len(self.tau) < 2 or len(self.tau) != len(self.lr) or len(self.tau) > MAX_BEST_POINTS:
            raise ValueError(f"the best schedule needs 2..{MAX_BEST_POINTS} (tau, lr) pairs, "
                             f"got {len(self.tau)} and {len(self.lr)}")
        if any(not (math.isfinite(t) and 0 <= t <= 1) for t in self.tau) or any(
                b < a for a, b in zip(self.tau, self.tau[1:], strict=False)):
            raise ValueError("the best schedule's tau must rise within [0, 1]")
        if any(not (math.isfinite(x) and x > 0) for x in self.lr):
            raise ValueError("the best schedule's lr must be positive and finite")
        return self


class ControlPart(BaseModel):
    """The control ensemble an ``auto`` bundle carries beside its generative members.

    Attributes:
        members: control members (``control_member_<i>`` in ``weights.pt``).
        model: their model config.
        fit: the control fit's options (``ControlFitConfig`` as JSON).
        window: their live context window (the grid is the bundle's).
        normalisation: the statistics they were fitted with.
        checks: their fit checks and the sweep's confounding report, as JSON
            (``tracker_sched.fit.checks.ControlChecks`` plus ``confounding``).
    """

    model_config = ConfigDict(frozen=True)

    members: int = Field(ge=1, le=limits.MAX_MEMBERS)
    model: ModelConfig
    fit: dict[str, Any]
    window: int = Field(ge=2)
    normalisation: Normalisation
    checks: dict[str, Any]


class PlannerDecision(BaseModel):
    """Which planner the bundle trusts, decided at fit time from the sweep's own runs.

    Attributes:
        mode: ``generative``, ``control`` or ``best`` (follow the sweep's best
            configuration's schedule).
        reason: why, in one sentence with its numbers.
        evidence: the inputs of the rule (``tracker_sched.planning.auto.AutoEvidence``).
        rule: the rule's thresholds (``tracker_sched.planning.auto.AutoRule``).
        best_schedule: the best configuration's schedule as logged (None: the warm-up
            plan on the bundle's grid is used).
        control: the control ensemble, when the fit made one.
    """

    model_config = ConfigDict(frozen=True)

    mode: DecidedMode
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    rule: dict[str, Any] = Field(default_factory=dict)
    best_schedule: BestSchedule | None = None
    control: ControlPart | None = None

    @model_validator(mode="after")
    def _control_present(self) -> PlannerDecision:
        if self.mode == "control" and self.control is None:
            raise ValueError("a decision for the control planner needs its control ensemble")
        return self


__all__ = ["MAX_BEST_POINTS", "BestSchedule", "ControlPart", "DecidedMode", "PlannerDecision"]

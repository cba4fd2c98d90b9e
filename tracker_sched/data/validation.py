"""Semantic checks on a sweep, once, at the boundary.

Nothing is dropped silently: every run that is excluded, truncated or repaired
gets a :class:`~tracker_sched.schema.RunIssue` that the fit report lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tracker_sched.budget import (
    LAST_STEP,
    Budget,
    BudgetSpec,
    resolve,
    sweep_budget,
    unit_mismatch,
)
from tracker_sched.identity import Configurations, configurations
from tracker_sched.schema import ROLES, Role, RunIssue, RunRecord

MIN_POINTS = 5  # train loss, the densest series
MIN_VAL_POINTS = 2  # the validation metric is often logged once per epoch
FLOAT32_MAX = float(np.finfo(np.float32).max)
# An lr logged at a slower cadence than the loss needs one point: it is held between them.


def logging_interval(steps: np.ndarray) -> float:
    """A series' own logging interval: the median gap between its steps (0 for < 2 points)."""
    return float(np.median(np.diff(steps))) if steps.size >= 2 else 0.0


@dataclass(frozen=True)
class CleanSeries:
    """A validated series: strictly increasing steps in [0, total_steps], finite values."""

    step: np.ndarray  # (n,) int64
    value: np.ndarray  # (n,) float64

    @property
    def interval(self) -> float:
        return logging_interval(self.step)


@dataclass(frozen=True)
class CleanRun:
    """A validated run. ``complete``: every series ends within one logging interval of the
    budget (see :func:`validate_sweep`); ``config_id``: its configuration
    (:mod:`tracker_sched.identity`)."""

    record: RunRecord
    total_steps: int
    series: dict[Role, CleanSeries]
    diverged_at: int | None = None  # step of the first non-finite loss/metric, if any
    budget_source: str = ""
    complete: bool = True
    config_id: str = ""

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def finished(self) -> bool:
        return self.record.state == "finished"

    @property
    def eligible(self) -> bool:
        """Whether the run can be (part of) the sweep's best: finished, complete, not diverged."""
        return self.finished and self.complete and not self.diverged

    def final_val(self) -> float:
        return float(self.series["val_metric"].value[-1])


@dataclass
class ValidatedSweep:
    runs: list[CleanRun]
    issues: list[RunIssue] = field(default_factory=list)
    configurations: Configurations | None = None  # of the runs in ``runs``, in order

    def excluded_ids(self) -> list[str]:
        return [i.run_id for i in self.issues if i.action == "excluded"]


class _Excluded(Exception):
    pass


def _first_non_increasing(steps: np.ndarray) -> int | None:
    bad = np.nonzero(np.diff(steps) <= 0)[0]
    return int(bad[0]) + 1 if bad.size else None


def _last_step(record: RunRecord) -> int | None:
    ends = [max(s.step) for r in ROLES if (s := record.series(r)) is not None and len(s)]
    return max(ends) if ends else None


def _hold(lr: tuple[np.ndarray, np.ndarray], loss_steps: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """The lr as a step function on the loss's steps (from its first logged point on), for an
    lr logged at a slower cadence than the loss: logged at its changes, or once per epoch, it
    holds until the next point (which is how a tracker draws it)."""
    steps, values = lr
    at = np.union1d(steps, loss_steps[loss_steps >= steps[0]])
    return at, values[np.searchsorted(steps, at, side="right") - 1]


def _missing(record: RunRecord, role: Role) -> str:
    what = {"lr": "learning rate", "train_loss": "train loss",
            "val_metric": "validation metric"}[role]
    seen = record.config.get("_keys_seen")
    if isinstance(seen, list):
        flag = {"train_loss": "--train-loss-key", "lr": "--lr-key", "val_metric": "--val-key"}
        keys = ", ".join(str(k) for k in seen) or "none"
        return (f"no {what} logged under a known name; keys seen: {keys}; set it with "
                f"{flag[role]}")
    return f"no {what} logged ({role} series missing or empty)"


def _validate_run(
    record: RunRecord, issues: list[RunIssue], min_points: int, spec: BudgetSpec,
    sweep_budget: int | None,
) -> CleanRun:
    rid = record.run_id

    def note(action: str, reason: str) -> None:
        issues.append(RunIssue(run_id=rid, action=action, reason=reason))  # type: ignore[arg-type]

    raw: dict[Role, tuple[np.ndarray, np.ndarray]] = {}
    for role in ROLES:
        s = record.series(role)
        if s is None or len(s) == 0:
            raise _Excluded(_missing(record, role))
        if max(s.step) >= 2**62:
            raise _Excluded(f"{role} has an implausibly large step ({max(s.step)})")
        steps = np.asarray(s.step, dtype=np.int64)
        values = np.asarray(s.value, dtype=np.float64)
        if steps.min() < 0:
            raise _Excluded(f"{role} has a negative step ({int(steps.min())})")
        i = _first_non_increasing(steps)
        if i is not None:
            raise _Excluded(
                f"{role} steps are not strictly increasing (step {int(steps[i])} follows "
                f"{int(steps[i - 1])} at index {i}); a resumed run logs repeated steps: "
                "export it without the repeated section"
            )
        raw[role] = (steps, values)

    last_logged = max(int(v[0][-1]) for v in raw.values())
    lr_steps = raw["lr"][0]
    sparse_lr = lr_steps.size < 2 or logging_interval(lr_steps) > logging_interval(
        raw["train_loss"][0])
    budget = resolve(spec, record.config, record.total_steps, record.budget_source,
                     last_logged, record.state == "finished", sweep_budget)
    if isinstance(budget, str):
        raise _Excluded(budget)
    total = budget.steps
    if total <= 0:
        raise _Excluded(f"total_steps must be positive, got {total}")
    mismatch = unit_mismatch(budget, record.config, last_logged,
                             logging_interval(raw["train_loss"][0]))
    if mismatch is not None:
        raise _Excluded(mismatch)
    for role, (steps, values) in list(raw.items()):
        beyond = steps > total
        if beyond.any():
            note("truncated", f"dropped {int(beyond.sum())} {role} points logged after "
                              f"total_steps={total}")
            raw[role] = (steps[~beyond], values[~beyond])

    # Learning rate: modelled on a log scale, so it must be positive and finite.
    steps, lr = raw["lr"]
    if lr.size == 0:
        raise _Excluded(f"no lr points at or before total_steps={total}")
    bad_lr = ~np.isfinite(lr) | (lr <= 0)
    if bad_lr.all():
        raise _Excluded("no usable learning rate: every lr value is <= 0 or not finite")
    if bad_lr.any():
        note("repaired", f"dropped {int(bad_lr.sum())} lr points that were <= 0 or not finite "
                         "(lr is modelled on a log scale)")
        raw["lr"] = (steps[~bad_lr], lr[~bad_lr])

    # Divergence: the first non-finite loss or metric ends the usable run. The model computes
    # in float32: a value beyond its range (1e308 in one step) is not finite to it either.
    diverged_at: int | None = None
    for role in ("train_loss", "val_metric"):
        steps, values = raw[role]
        bad = ~(np.abs(values) <= FLOAT32_MAX)
        if bad.any():
            at = int(steps[np.argmax(bad)])
            diverged_at = at if diverged_at is None else min(diverged_at, at)
    if diverged_at is not None:
        kept = {}
        for role, (steps, values) in raw.items():
            keep = steps < diverged_at
            kept[role] = (steps[keep], values[keep])
        raw = kept
        note("truncated", f"diverged at step {diverged_at} of {total} (non-finite loss or "
                          "metric, or beyond float32's range): kept the points before it and "
                          "marked the run diverged")

    if sparse_lr and raw["lr"][0].size:
        raw["lr"] = _hold(raw["lr"], raw["train_loss"][0])
    need = {"train_loss": min_points, "lr": 1 if sparse_lr else min_points,
            "val_metric": min(min_points, MIN_VAL_POINTS)}
    for role, (steps, _) in raw.items():
        if steps.size < need[role]:
            raise _Excluded(f"too few points: {role} has {steps.size} usable (need >= "
                            f"{need[role]})")

    short = _short_series(raw, total, budget)
    if diverged_at is None and (short or record.state != "finished"):
        state = "finished" if record.state == "finished" else f"state {record.state!r}"
        note("partial", f"{state}; " + ("; ".join(short) if short else "reached its budget")
             + ": kept as evidence of dynamics, never the sweep's best")
    return CleanRun(
        record=record,
        total_steps=int(total),
        series={role: CleanSeries(step=s, value=v) for role, (s, v) in raw.items()},
        diverged_at=diverged_at,
        budget_source=budget.source,
        complete=not short,
    )


def _short_series(raw: dict[Role, tuple[np.ndarray, np.ndarray]], total: int,
                  budget: Budget) -> list[str]:
    """Why a run is not complete: the series whose last point is more than one of its own
    logging intervals before the budget ([] for a complete run)."""
    if budget.from_last_step and budget.source != LAST_STEP:
        return [f"it states no budget and is not finished (used {budget.steps}, "
                f"{budget.source})"]
    short = []
    for role, (steps, _) in raw.items():
        gap = total - int(steps[-1])
        interval = logging_interval(steps)
        if gap > interval:
            short.append(f"{role} at step {int(steps[-1])} (logging interval {interval:g})")
    if not short:
        return []
    return [f"its series end more than one logging interval before its budget {total} "
            f"({budget.source}): " + ", ".join(short)]


def validate_sweep(
    records: Sequence[RunRecord],
    *,
    min_points: int = MIN_POINTS,
    budget: BudgetSpec | None = None,
    ignore_config_keys: Sequence[str] = (),
) -> ValidatedSweep:
    """Check every run; return the usable ones and a reason for each exclusion or change.

    Rules: duplicate run ids keep the first occurrence; a run without a train
    loss, lr or validation metric is excluded; steps must be strictly increasing
    and non-negative; the budget follows :mod:`tracker_sched.budget` (``budget``:
    the ``--total-steps`` / ``--total-steps-key`` choice), and a budget whose unit
    differs from the step axis's excludes the run, naming both; points after the
    budget are dropped; lr values that are <= 0 or not finite are dropped (a run
    with none left is excluded); an lr logged at fewer points than the loss is
    held between its points; at the first non-finite loss or metric the run is
    truncated and marked diverged; a run with fewer than ``min_points`` train-loss
    points, or fewer than 2 validation points, is excluded.

    Completion: a run is complete when the last point of each series lies within
    one logging interval (that series' median gap) of the budget; a run whose
    budget is its own last step is complete only if it finished. A run that is
    not complete, or not finished, is kept as ``partial`` evidence: the fit learns
    its dynamics, but it is never the sweep's best. Runs are grouped into
    configurations by :func:`tracker_sched.identity.configurations`.
    """
    spec = budget or BudgetSpec()
    issues: list[RunIssue] = []
    unique: list[RunRecord] = []
    seen: set[str] = set()
    for record in records:
        if record.run_id in seen:
            issues.append(RunIssue(run_id=record.run_id, action="excluded",
                                   reason="duplicate run_id: the first run with this id is kept"))
            continue
        seen.add(record.run_id)
        unique.append(record)
    finished_budgets = []
    for record in unique:
        last = _last_step(record)
        if record.state == "finished" and last is not None and last > 0:
            b = resolve(spec, record.config, record.total_steps, record.budget_source, last,
                        True, None)
            if not isinstance(b, str):
                finished_budgets.append(b.steps)
    fallback = sweep_budget(finished_budgets)
    groups = configurations([r.config for r in unique], ignore_config_keys)
    group_of = dict(zip([r.run_id for r in unique], groups.ids, strict=True))
    runs: list[CleanRun] = []
    for record in unique:
        try:
            run = _validate_run(record, issues, min_points, spec, fallback)
        except _Excluded as exc:
            issues.append(RunIssue(run_id=record.run_id, action="excluded", reason=str(exc)))
            continue
        runs.append(replace(run, config_id=group_of[record.run_id]))
    kept = Configurations(
        ids=tuple(r.config_id for r in runs), hyperparameters=groups.hyperparameters,
        seed_keys=groups.seed_keys, dropped=groups.dropped)
    return ValidatedSweep(runs=runs, issues=issues, configurations=kept)

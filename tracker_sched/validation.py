"""Semantic checks on a sweep, once, at the boundary.

Nothing is dropped silently: every run that is excluded, truncated or repaired
gets a :class:`~tracker_sched.schema.RunIssue` that the fit report lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tracker_sched.schema import ROLES, Role, RunIssue, RunRecord

MIN_POINTS = 5
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class CleanSeries:
    """A validated series: strictly increasing steps in [0, total_steps], finite values."""

    step: np.ndarray  # (n,) int64
    value: np.ndarray  # (n,) float64


@dataclass(frozen=True)
class CleanRun:
    record: RunRecord
    total_steps: int
    series: dict[Role, CleanSeries]
    diverged_at: int | None = None  # step of the first non-finite loss/metric, if any

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def final_val(self) -> float:
        return float(self.series["val_metric"].value[-1])


@dataclass
class ValidatedSweep:
    runs: list[CleanRun]
    issues: list[RunIssue] = field(default_factory=list)

    def excluded_ids(self) -> list[str]:
        return [i.run_id for i in self.issues if i.action == "excluded"]


class _Excluded(Exception):
    pass


def _first_non_increasing(steps: np.ndarray) -> int | None:
    bad = np.nonzero(np.diff(steps) <= 0)[0]
    return int(bad[0]) + 1 if bad.size else None


def _validate_run(
    record: RunRecord, issues: list[RunIssue], min_points: int
) -> CleanRun:
    rid = record.run_id

    def note(action: str, reason: str) -> None:
        issues.append(RunIssue(run_id=rid, action=action, reason=reason))  # type: ignore[arg-type]

    raw: dict[Role, tuple[np.ndarray, np.ndarray]] = {}
    for role in ROLES:
        s = record.series(role)
        if s is None or len(s) == 0:
            what = {"lr": "learning rate", "train_loss": "train loss",
                    "val_metric": "validation metric"}[role]
            raise _Excluded(f"no {what} logged ({role} series missing or empty)")
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
    total = record.total_steps if record.total_steps is not None else last_logged
    if total <= 0:
        raise _Excluded(f"total_steps must be positive, got {total}")
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

    for role, (steps, _) in raw.items():
        if steps.size < min_points:
            raise _Excluded(f"too few points: {role} has {steps.size} usable (need >= "
                            f"{min_points})")

    return CleanRun(
        record=record,
        total_steps=int(total),
        series={role: CleanSeries(step=s, value=v) for role, (s, v) in raw.items()},
        diverged_at=diverged_at,
    )


def validate_sweep(records: Sequence[RunRecord], *, min_points: int = MIN_POINTS) -> ValidatedSweep:
    """Check every run; return the usable ones and a reason for each exclusion or change.

    Rules: duplicate run ids keep the first occurrence; a run without a train
    loss, lr or validation metric is excluded; steps must be strictly increasing
    and non-negative; points after ``total_steps`` are dropped; lr values that
    are <= 0 or not finite are dropped (a run with none left is excluded); at
    the first non-finite loss or metric the run is truncated and marked
    diverged; a run with fewer than ``min_points`` points in any role is
    excluded.
    """
    issues: list[RunIssue] = []
    runs: list[CleanRun] = []
    seen: set[str] = set()
    for record in records:
        if record.run_id in seen:
            issues.append(RunIssue(run_id=record.run_id, action="excluded",
                                   reason="duplicate run_id: the first run with this id is kept"))
            continue
        seen.add(record.run_id)
        try:
            runs.append(_validate_run(record, issues, min_points))
        except _Excluded as exc:
            issues.append(RunIssue(run_id=record.run_id, action="excluded", reason=str(exc)))
    return ValidatedSweep(runs=runs, issues=issues)

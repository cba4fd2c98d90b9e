"""Sweep design: how confounded a sweep is, and which runs to add to make it learnable.

In a sweep of parametric schedules the log lr at each progress point tau is
fixed by the configuration (family and peak), so a model with the lr as a
control input cannot separate the effect of the lr from the effect of the
configuration and of tau: the second pre-study in ``shared/notes/method.md``
saw a control model learn the immediate gain of a low lr without its long-run
cost, and a planner exploit it (-6.9 points). Runs with randomised schedules
broke the tie. :func:`~tracker_sched.design.confounding.confounding` measures the
tie; :func:`suggest_runs` proposes the runs that break it;
:mod:`tracker_sched.design.export` writes them as files. ``docs/suggest-runs.md``
documents all three, the thresholds and the output formats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from tracker_sched.data.validation import ValidatedSweep
from tracker_sched.design.confounding import (
    clean_runs,
)
from tracker_sched.errors import InputError
from tracker_sched.identity import config_id
from tracker_sched.schema import Direction, MetricMap, RunRecord

if TYPE_CHECKING:  # the summary imports the grid, which imports torch
    from tracker_sched.data.summary import SweepSummary

Kind = Literal["perturbed", "non_monotone", "hold_low"]
KINDS: tuple[Kind, ...] = ("perturbed", "non_monotone", "hold_low")
SCHEDULE_PARAM = "tracker_sched_schedule"  # W&B sweep parameter (a JSON string)
MLFLOW_SCHEDULE_PARAM = "tracker_sched.schedule"




# --------------------------------------------------------------------------- suggestions


class KnotSchedule(BaseModel):
    """An lr schedule as knots, log-linear between them: what a training script follows.

    >>> s = KnotSchedule(tau=[0.0, 1.0], lr=[1e-2, 1e-4])
    >>> round(s.lr_at(50, 100), 6)
    0.001
    """

    model_config = ConfigDict(frozen=True)

    tau: list[float] = Field(min_length=2)
    lr: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self) -> KnotSchedule:
        if len(self.tau) != len(self.lr):
            raise ValueError(f"tau and lr need the same length, got {len(self.tau)} and "
                             f"{len(self.lr)}")
        if self.tau[0] != 0.0 or self.tau[-1] != 1.0 or any(
            b <= a for a, b in zip(self.tau, self.tau[1:], strict=False)
        ):
            raise ValueError("knot taus must increase strictly from 0.0 to 1.0")
        if not all(math.isfinite(x) and x > 0 for x in self.lr):
            raise ValueError("every knot lr must be positive and finite")
        return self

    def lr_at(self, step: int, total_steps: int) -> float:
        """The lr at ``step`` of a ``total_steps`` budget (tau clipped to [0, 1])."""
        if total_steps <= 0:
            raise InputError(f"total_steps must be > 0, got {total_steps}")
        tau = min(max(step / total_steps, 0.0), 1.0)
        return float(10.0 ** np.interp(tau, self.tau, np.log10(self.lr)))

    def to_param(self) -> str:
        """Compact JSON, as stored in a W&B sweep value or an MLflow param."""
        return json.dumps({"tau": self.tau, "lr": self.lr}, separators=(",", ":"))

    @classmethod
    def from_param(cls, value: str | dict[str, Any]) -> KnotSchedule:
        """Parse what :meth:`to_param` wrote (a training script's entry point)."""
        try:
            obj = json.loads(value) if isinstance(value, str) else value
            return cls.model_validate({"tau": obj["tau"], "lr": obj["lr"]})
        except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
            raise InputError(f"not a tracker-sched schedule: {exc}") from exc


class SuggestedRun(BaseModel):
    """A run to add to the sweep: a base configuration and a schedule to follow."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    base_run_id: str = Field(description="the sweep run whose schedule this perturbs")
    config: dict[str, JsonValue]
    total_steps: int = Field(gt=0)
    band_dex: float = Field(description="max |log10 lr - base log10 lr| at the knots")
    schedule: KnotSchedule

    def lr_at(self, step: int, total_steps: int | None = None) -> float:
        """The lr at ``step`` (budget: this run's ``total_steps`` unless given)."""
        return self.schedule.lr_at(step, total_steps or self.total_steps)


@dataclass(frozen=True)
class _Base:
    run_id: str
    config: dict[str, Any]
    total_steps: int
    log_lr: list[float]  # on an even tau grid, edges filled


def _bases(summary: SweepSummary, k: int) -> list[_Base]:
    """Up to ``k`` best runs of distinct configurations (seeds aside), best first."""
    out: list[_Base] = []
    seen: set[str] = set()
    for tr in summary.top_runs:
        key = tr.config_id or config_id(tr.config)
        if key in seen or len(out) >= k:
            continue
        seen.add(key)
        x = np.array([np.nan if v is None else v for v in tr.log_lr], dtype=np.float64)
        ok = np.isfinite(x)
        if not ok.any():
            continue
        g = np.linspace(0.0, 1.0, x.size)
        out.append(_Base(run_id=tr.run_id, config=tr.config, total_steps=tr.total_steps,
                         log_lr=np.interp(g, g[ok], x[ok]).tolist()))
    if not out:
        raise InputError("the sweep summary names no run with an lr curve to perturb")
    return out


def _offset_knots(kind: Kind, rng: np.random.Generator, band: float, peak_tau: float
                  ) -> tuple[list[float], list[float]]:
    """A smooth random offset (in decades) as a few knots; 0 at tau = 0 (same start)."""
    if kind == "hold_low":
        a = min(max(peak_tau, 0.1), 0.3)
        b = a + float(rng.uniform(0.2, 0.3))
        depth = -band * float(rng.uniform(0.7, 1.0))
        back = band * float(rng.uniform(-0.3, 1.0))
        return ([0.0, a, a + 0.05, b, min(b + 0.1, 0.95), 1.0],
                [0.0, 0.0, depth, depth, back, band * float(rng.uniform(-1.0, 1.0))])
    k = int(rng.integers(3, 6))
    # one knot in each of k equal slots of [0.1, 0.95], jittered: random but never bunched
    width = 0.85 / k
    taus = 0.1 + width * (np.arange(k) + rng.uniform(0.2, 0.8, size=k))
    if kind == "perturbed":
        vals = rng.uniform(-band, band, size=k)
    else:  # alternate sign so that the lr falls and rises again
        sign = 1.0 if rng.random() < 0.5 else -1.0
        vals = np.array([sign * (-1.0) ** i for i in range(k)]) * rng.uniform(0.5, 1.0, k) * band
    end = float(rng.uniform(-band, band))
    return [0.0, *taus.tolist(), 1.0], [0.0, *vals.tolist(), end]


def _make_schedule(base: _Base, kind: Kind, rng: np.random.Generator, band: float,
                   log_lr_cap: float, knots: int) -> KnotSchedule:
    g = np.linspace(0.0, 1.0, len(base.log_lr))
    b = np.asarray(base.log_lr)
    peak_tau = float(g[int(np.argmax(b))])
    ot, ov = _offset_knots(kind, rng, band, peak_tau)
    tau = np.unique(np.round(np.concatenate([np.linspace(0.0, 1.0, knots), ot]), 6))
    log_lr = np.interp(tau, g, b) + np.interp(tau, ot, ov)
    log_lr = np.minimum(log_lr, max(log_lr_cap, float(b.max())))
    return KnotSchedule(tau=tau.tolist(), lr=(10.0 ** log_lr).tolist())


def sweep_summary(
    runs: Sequence[RunRecord] | ValidatedSweep,
    *,
    metric_map: MetricMap | None = None,
    direction: Direction | None = None,
    grid_points: int = 101,
) -> SweepSummary:
    """The sweep's best configurations and schedules, as a fitted bundle would store them."""
    from tracker_sched.data.grid import choose_transforms, to_grid
    from tracker_sched.data.summary import summarise

    clean = clean_runs(runs)
    mm = metric_map or MetricMap()
    if direction is None:
        keys = {r.record.metric_keys.get("val_metric") for r in clean} - {None}
        key = next(iter(keys)) if len(keys) == 1 else (mm.val_metric or "val_metric")
        direction = mm.direction_for(str(key))
    grid = to_grid(clean, grid_points, choose_transforms(clean, direction))
    return summarise(clean, grid, direction)


def suggest_runs(
    runs: Sequence[RunRecord] | ValidatedSweep,
    *,
    n: int = 12,
    seed: int = 0,
    families: Sequence[Kind] = KINDS,
    band_dex: float = 0.5,
    bases: int = 3,
    knots: int = 11,
    summary: SweepSummary | None = None,
    metric_map: MetricMap | None = None,
    direction: Direction | None = None,
) -> list[SuggestedRun]:
    """Runs to add to a sweep so that the lr's effect can be learned from it.

    Each suggestion takes one of the ``bases`` best configurations (seeds aside;
    the best first, then round robin) and perturbs that run's log10-lr curve by
    a smooth random offset of at most ``band_dex`` decades, cycling through
    ``families``: ``perturbed`` (a few random knots), ``non_monotone`` (offsets of
    alternating sign: the lr falls and rises again), ``hold_low`` (the base's
    warm-up, then a low lr held early, then back). The schedule's knots are
    ``knots`` even taus plus the offset's own; the lr never exceeds the largest
    lr the sweep ran (or the base's peak). Same ``seed``, same suggestions.
    ``summary`` (a bundle's :class:`SweepSummary`) saves recomputing the best runs.
    """
    if n <= 0:
        raise InputError(f"n must be a positive number of runs, got {n}")
    if not families:
        raise InputError(f"families must name at least one of {', '.join(KINDS)}")
    unknown = sorted(set(families) - set(KINDS))
    if unknown:
        raise InputError(f"unknown families {unknown}; choose from {', '.join(KINDS)}")
    if not 0 < band_dex <= 2:
        raise InputError(f"band_dex must be in (0, 2] decades, got {band_dex}")
    if bases < 1 or knots < 2:
        raise InputError(f"bases must be >= 1 and knots >= 2, got {bases} and {knots}")
    if summary is None:
        summary = sweep_summary(runs, metric_map=metric_map, direction=direction)
    chosen = _bases(summary, bases)
    rng = np.random.default_rng(seed)
    cap = math.log10(summary.lr_max)
    out: list[SuggestedRun] = []
    for i in range(n):
        base = chosen[0] if i % 2 == 0 or len(chosen) == 1 else chosen[1 + (i // 2) % (
            len(chosen) - 1)]
        kind = families[i % len(families)]
        out.append(SuggestedRun(
            name=f"tracker-sched-suggest-s{seed}-{i:03d}-{kind}",
            kind=kind, base_run_id=base.run_id, config=base.config,
            total_steps=base.total_steps, band_dex=band_dex,
            schedule=_make_schedule(base, kind, rng, band_dex, cap, knots),
        ))
    return out

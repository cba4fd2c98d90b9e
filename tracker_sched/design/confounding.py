"""How confounded a sweep is: can a model with the lr as an input learn the lr's effect?

In a sweep of parametric schedules the log lr at each progress point tau is
fixed by the configuration (family and peak), so a model with the lr as a
control input cannot separate the effect of the lr from the effect of the
configuration and of tau: the second pre-study in ``shared/notes/method.md``
saw a control model learn the immediate gain of a low lr without its long-run
cost, and a planner exploit it (-6.9 points). :func:`confounding` measures the
tie; :mod:`tracker_sched.design.suggest` proposes the runs that break it;
``docs/suggest-runs.md`` documents the thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tracker_sched.data.grid import resample
from tracker_sched.data.validation import CleanRun, ValidatedSweep, validate_sweep
from tracker_sched.errors import InputError
from tracker_sched.schema import RunRecord

FLOOR_DEX = -3.0  # an lr 1000x below a run's own peak counts as "off"; keeps log(0) out


class ConfoundingThresholds(BaseModel):
    """When a sweep counts as learnable; defaults justified in ``docs/suggest-runs.md``."""

    model_config = ConfigDict(frozen=True)

    min_shapes: int = Field(default=12, ge=1, description="distinct peak-normalised shapes")
    min_shape_dims: int = Field(
        default=6, ge=1,
        description="independent shape directions: at least the control planner's knot count")
    min_breaking_shapes: int = Field(
        default=3, ge=0,
        description="shapes that change direction or hold a low lr early (the pre-study's "
        "blind spot)")
    shape_tol_dex: float = Field(
        default=0.1, gt=0, description="two shapes within this (max over tau) are one")
    dim_tol_dex: float = Field(
        default=0.15, gt=0,
        description="a direction counts when the shapes together move along it by this much "
        "(root sum of squares over shapes, RMS over tau)")
    turn_dex: float = Field(
        default=0.2, gt=0, description="fall, then rise, needed for a direction change")
    low_dex: float = Field(
        default=0.3, gt=0, description="how far below its own peak a run is 'low'")
    hold_tau: float = Field(
        default=0.15, gt=0, le=0.5, description="how long a low lr is held before tau = 0.5")


class CellCoverage(BaseModel):
    """How many runs visit each (tau, log10 lr) cell, and how many distinct shapes do."""

    model_config = ConfigDict(frozen=True)

    tau_edges: list[float]
    log_lr_edges: list[float]
    runs: list[list[int]] = Field(description="(tau bins, lr bins) run counts")
    shapes: list[list[int]] = Field(description="(tau bins, lr bins) distinct shape counts")

    @property
    def shared_fraction(self) -> float:
        """Share of visited cells reached by two or more shapes (1.0: no cell is tied)."""
        s = np.asarray(self.shapes)
        visited = s > 0
        return float((s >= 2).sum() / max(int(visited.sum()), 1))


class ConfoundingReport(BaseModel):
    """How much a sweep ties the lr to progress and configuration, and a verdict."""

    model_config = ConfigDict(frozen=True)

    runs: int
    distinct_shapes: int = Field(description="lr curves that differ after removing the peak")
    shape_dims: int = Field(description="independent directions the shapes span")
    direction_change_shapes: int = Field(description="shapes whose lr falls, then rises again")
    early_low_shapes: int = Field(description="shapes that hold a low lr before tau = 0.5")
    breaking_shapes: int = Field(description="shapes that do either (counted once)")
    lr_spread_dex: float = Field(description="median over tau of the std of log10 lr")
    shape_spread_dex: float = Field(description="same after removing each run's peak")
    coverage: CellCoverage
    learnable: bool
    reasons: list[str]
    thresholds: ConfoundingThresholds

    def summary(self) -> str:
        """One line for the fit report and the CLI."""
        head = "learnable" if self.learnable else "too confounded to plan from"
        t = self.thresholds
        return (
            f"{head}: {self.runs} runs, {self.distinct_shapes} lr shapes (need {t.min_shapes}), "
            f"{self.shape_dims} shape directions (need {t.min_shape_dims}), "
            f"{self.breaking_shapes} shapes that turn or hold low early "
            f"(need {t.min_breaking_shapes})"
        )


def clean_runs(runs: Sequence[RunRecord] | ValidatedSweep) -> list[CleanRun]:
    clean = runs.runs if isinstance(runs, ValidatedSweep) else validate_sweep(list(runs)).runs
    if not clean:
        raise InputError("the sweep has no usable runs (none left after validation); "
                         "run `tracker-sched validate` to see why")
    return clean


def log_lr_grid(runs: Sequence[CleanRun], grid_points: int) -> np.ndarray:
    """Each run's log10 lr on the progress grid, edges held constant: ``(runs, G)``."""
    tau = np.linspace(0.0, 1.0, grid_points)
    out = np.empty((len(runs), grid_points))
    for i, run in enumerate(runs):
        s = run.series["lr"]
        v, m = resample(s.step, np.log10(s.value), run.total_steps, grid_points,
                        hold=s.interval)
        out[i] = np.interp(tau, tau[m], v[m])
    return out


def _shapes(rel: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy clusters of peak-normalised curves; returns (representatives, label per run)."""
    reps: list[np.ndarray] = []
    labels = np.empty(rel.shape[0], dtype=np.int64)
    for i, curve in enumerate(rel):
        for k, rep in enumerate(reps):
            if float(np.abs(curve - rep).max()) <= tol:
                labels[i] = k
                break
        else:
            labels[i] = len(reps)
            reps.append(curve)
    return np.stack(reps), labels


def _turns(curve: np.ndarray, dex: float) -> bool:
    """Whether the curve falls by ``dex`` from a high and later rises ``dex`` from a low."""
    high, low, fallen = -math.inf, math.inf, False
    for x in curve:
        if not fallen:
            high = max(high, float(x))
            if high - x >= dex:
                fallen, low = True, float(x)
        else:
            low = min(low, float(x))
            if x - low >= dex:
                return True
    return False


def _holds_low(rel: np.ndarray, tau: np.ndarray, t: ConfoundingThresholds) -> bool:
    """High (within 0.1 dex of its peak) first, then >= ``low_dex`` below it for ``hold_tau``.

    Only tau < 0.5 counts: a low lr late in training is what every decaying
    schedule does, so it carries no news; low early after a high is what the
    pre-study's model never saw.
    """
    early = tau < 0.5
    reached = np.maximum.accumulate(rel >= -0.1)
    low = (rel <= -t.low_dex) & reached & early
    step = float(tau[1] - tau[0])
    run = best = 0
    for flag in low:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best * step >= t.hold_tau - 1e-9


def _coverage(log_lr: np.ndarray, labels: np.ndarray, tau: np.ndarray) -> CellCoverage:
    tau_edges = np.linspace(0.0, 1.0, 11)
    lo = math.floor(float(log_lr.min()) * 4) / 4
    hi = math.ceil(float(log_lr.max()) * 4) / 4
    lr_edges = np.arange(lo, hi + 0.25 + 1e-9, 0.25)
    ti = np.clip(np.searchsorted(tau_edges, tau, side="right") - 1, 0, 9)
    li = np.clip(np.searchsorted(lr_edges, log_lr, side="right") - 1, 0, lr_edges.size - 2)
    n_lr = lr_edges.size - 1
    runs = np.zeros((10, n_lr), dtype=np.int64)
    shape_sets: list[list[set[int]]] = [[set() for _ in range(n_lr)] for _ in range(10)]
    for r in range(log_lr.shape[0]):
        cells = set(zip(ti.tolist(), li[r].tolist(), strict=True))
        for a, b in cells:
            runs[a, b] += 1
            shape_sets[a][b].add(int(labels[r]))
    return CellCoverage(
        tau_edges=tau_edges.tolist(), log_lr_edges=lr_edges.tolist(), runs=runs.tolist(),
        shapes=[[len(s) for s in row] for row in shape_sets],
    )


def confounding(
    runs: Sequence[RunRecord] | ValidatedSweep,
    *,
    grid_points: int = 51,
    thresholds: ConfoundingThresholds | None = None,
) -> ConfoundingReport:
    """Measure how much a sweep ties the lr to progress, and say whether it is learnable.

    Each run's log10 lr is resampled onto ``grid_points`` values of tau; its
    *shape* is that curve minus its own peak (floored 3 decades down). A sweep
    of one family at several peaks has one shape, so the lr at each tau is a
    function of the peak: no amount of runs separates the lr's effect from the
    configuration's. Raises :class:`InputError` for a sweep with no usable run.
    """
    t = thresholds or ConfoundingThresholds()
    if grid_points < 10:
        raise InputError(f"grid_points must be >= 10, got {grid_points}")
    clean = clean_runs(runs)
    tau = np.linspace(0.0, 1.0, grid_points)
    log_lr = log_lr_grid(clean, grid_points)
    rel = np.maximum(log_lr - log_lr.max(axis=1, keepdims=True), FLOOR_DEX)
    reps, labels = _shapes(rel, t.shape_tol_dex)
    centred = reps - reps.mean(axis=0, keepdims=True)
    sv = np.linalg.svd(centred, compute_uv=False) / math.sqrt(grid_points)
    dims = int((sv >= t.dim_tol_dex).sum())
    turns = [_turns(r, t.turn_dex) for r in reps]
    lows = [_holds_low(r, tau, t) for r in reps]
    turning, low_early = sum(turns), sum(lows)
    breaking = sum(a or b for a, b in zip(turns, lows, strict=True))

    reasons: list[str] = []
    if len(reps) < t.min_shapes:
        reasons.append(f"only {len(reps)} distinct lr shape(s) (need {t.min_shapes}): the lr at "
                       "each tau is fixed by the configuration's peak")
    if dims < t.min_shape_dims:
        reasons.append(f"the shapes span {dims} independent direction(s) (need "
                       f"{t.min_shape_dims}, one per planner knot)")
    if breaking < t.min_breaking_shapes:
        reasons.append(f"{breaking} shape(s) change direction or hold a low lr early (need "
                       f"{t.min_breaking_shapes}): a planner would extrapolate there")
    learnable = not reasons
    if learnable:
        reasons.append(f"{len(reps)} shapes spanning {dims} directions, {breaking} of them "
                       "turning or holding low early")
    return ConfoundingReport(
        runs=len(clean),
        distinct_shapes=len(reps),
        shape_dims=dims,
        direction_change_shapes=int(turning),
        early_low_shapes=int(low_early),
        breaking_shapes=int(breaking),
        lr_spread_dex=float(np.median(log_lr.std(axis=0))),
        shape_spread_dex=float(np.median(rel.std(axis=0))),
        coverage=_coverage(log_lr, labels, tau),
        learnable=learnable,
        reasons=reasons,
        thresholds=t,
    )

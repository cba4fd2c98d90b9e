"""A sweep made ready to fit: checked, resampled onto the grid, split and standardised.

Both fits start here (every error the data can cause is raised before training) and
end here: :func:`assemble_bundle` puts the fitted members in a bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from tracker_sched.budget import BudgetSpec
from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import (
    SCHEMA_VERSION,
    BundleManifest,
    FitReport,
    MetricRoles,
    now_iso,
    package_versions,
)
from tracker_sched.data.grid import (
    GridSweep,
    Normalisation,
    SweepTensors,
    choose_transforms,
    fit_normalisation,
    to_grid,
)
from tracker_sched.data.preflight import MIN_RUNS, Preflight, preflight
from tracker_sched.data.summary import SweepSummary, summarise
from tracker_sched.data.validation import CleanRun, ValidatedSweep
from tracker_sched.fit.config import FitConfig
from tracker_sched.model.kinds import GENERATIVE_KIND, Kind
from tracker_sched.model.latent import LatentODE, ModelConfig
from tracker_sched.schema import Direction, MetricMap, RunIssue, RunRecord


@dataclass
class PreparedSweep:
    """A validated sweep on the grid, split and standardised."""

    validated: ValidatedSweep
    direction: Direction
    val_key: str
    grid: GridSweep
    norm: Normalisation
    train_idx: np.ndarray
    holdout_idx: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, holdout) run indices per member
    summary: SweepSummary  # named before training, so no data error can come after it
    checked: Preflight

    @property
    def cross_fit(self) -> bool:
        return len(self.folds) > 1 and not np.array_equal(self.folds[0][1], self.folds[1][1])

    @property
    def runs(self) -> list[CleanRun]:
        return self.validated.runs

    @property
    def issues(self) -> list[RunIssue]:
        return self.validated.issues

    def tensors(self, idx: np.ndarray) -> SweepTensors:
        return SweepTensors.from_grid(self.grid.subset(idx), self.norm)


def run_counts(prep: PreparedSweep) -> dict[str, Any]:
    """The fit report's counts of the runs used: by state, complete, configurations."""
    return {"runs_by_state": prep.checked.runs_by_state(),
            "runs_complete": sum(1 for r in prep.runs if r.complete),
            "configurations": prep.checked.configurations.describe()}


def prepare(
    records: Sequence[RunRecord],
    config: FitConfig,
    metric_map: MetricMap | None = None,
    *,
    budget: BudgetSpec | None = None,
    ignore_config_keys: Sequence[str] = (),
    source_issues: Sequence[RunIssue] = (),
    checked: Preflight | None = None,
) -> PreparedSweep:
    """Check (:mod:`tracker_sched.data.preflight`: every error the data can cause is raised here,
    before any training), choose transforms, resample, name the sweep's best, split off
    whole runs and standardise. ``checked``: a pre-flight already run on ``records``."""
    if checked is None:
        checked = preflight(records, metric_map=metric_map, budget=budget,
                            ignore_config_keys=ignore_config_keys, source_issues=source_issues)
    checked.raise_for_problems()
    validated, direction = checked.validated, checked.direction
    assert direction is not None  # a problem otherwise
    transforms = choose_transforms(validated.runs, direction)
    grid = to_grid(validated.runs, config.grid_points, transforms)
    summary = summarise(validated.runs, grid, direction, validated.configurations)
    n = len(validated.runs)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    k = config.ensemble
    if config.cross_fit and k >= 2 and n // k >= 1 and n - (n + k - 1) // k >= MIN_RUNS:
        # Fold f holds out every k-th run of a seeded permutation: folds are disjoint
        # and cover the sweep. Standardisation uses all runs (a per-channel mean/std).
        folds = [
            (np.sort(np.setdiff1d(order, order[f::k])), np.sort(order[f::k])) for f in range(k)
        ]
        norm = fit_normalisation(grid, transforms)
    else:
        n_hold = round(config.holdout_fraction * n)
        if config.holdout_fraction > 0:
            n_hold = min(max(n_hold, 1), n - MIN_RUNS) if n > MIN_RUNS else 0
        split = (np.sort(order[n_hold:]), np.sort(order[:n_hold]))
        folds = [split] * k
        norm = fit_normalisation(grid.subset(split[0]), transforms)
    return PreparedSweep(
        validated=validated, direction=direction, val_key=checked.val_key, grid=grid, norm=norm,
        train_idx=folds[0][0], holdout_idx=folds[0][1], folds=folds, summary=summary,
        checked=checked,
    )


def assemble_bundle(prep: PreparedSweep, config: BaseModel, model: ModelConfig,
                    models: Sequence[LatentODE], report: FitReport, *,
                    kind: Kind = GENERATIVE_KIND,
                    control: dict[str, Any] | None = None) -> Bundle:
    """The fitted members and everything a planner needs as one bundle (both fits).

    Args:
        prep: the prepared sweep the members were fitted on.
        config: the fit's options (``grid_points``, ``window`` and the rest, kept as JSON).
        model: the members' model config.
        models: the fitted members.
        report: the fit report.
        kind: the bundle kind (:data:`tracker_sched.model.kinds.MODEL_CLASSES`).
        control: a control fit's checks, as JSON.

    Returns:
        The bundle, in memory (``save`` writes it).
    """
    keys = {role: prep.runs[0].record.metric_keys.get(role) for role in ("train_loss", "lr")}
    fit = config.model_dump(mode="json", exclude={"model"})
    manifest = BundleManifest(
        schema_version=SCHEMA_VERSION, kind=kind, created_at=now_iso(), members=len(models),
        model=model, fit=fit, grid_points=fit["grid_points"], window=fit["window"],
        normalisation=prep.norm,
        metrics=MetricRoles(train_loss=keys["train_loss"], lr=keys["lr"],
                            val_metric=prep.val_key, direction=prep.direction),
        sweep=prep.summary, report=report, versions=package_versions(), control=control,
    )
    return Bundle(manifest, list(models))

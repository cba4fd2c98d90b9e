"""The bundle's manifest (``bundle.json``): its schema, and the fit report it carries.

A manifest describes a fitted model completely: its kind and configs, the
normalisation of its inputs, the tracker's metric names, the sweep summary
(:mod:`tracker_sched.data.summary`), the fit report and the package versions.
The folder format around it is :mod:`tracker_sched.bundle.folder`.
"""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracker_sched import limits
from tracker_sched.bundle.decision import PlannerDecision
from tracker_sched.data.grid import Normalisation
from tracker_sched.data.summary import SweepSummary
from tracker_sched.model.latent import ModelConfig
from tracker_sched.model.stop_odds import ReliabilityRow, StopCalibration
from tracker_sched.schema import RunIssue

SCHEMA_VERSION = 1

METHODS = ("model", "nearest", "last", "curve")


class ForecastRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    tau: float
    channel: str
    method: str
    rmse_pooled: float
    rmse_median_run: float
    runs: int


class RankRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    tau: float
    method: str
    spearman: float | None
    runs: int


class ForecastReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    window: int
    forecast: list[ForecastRow]
    ranking: list[RankRow]

    def row(self, tau: float, channel: str, method: str) -> ForecastRow:
        for r in self.forecast:
            if abs(r.tau - tau) < 1e-9 and r.channel == channel and r.method == method:
                return r
        raise KeyError((tau, channel, method))

    def rank(self, tau: float, method: str) -> RankRow:
        for r in self.ranking:
            if abs(r.tau - tau) < 1e-9 and r.method == method:
                return r
        raise KeyError((tau, method))


class TrustComparison(BaseModel):
    """One comparison of the forecast verdict: the model against one baseline."""

    model_config = ConfigDict(frozen=True)

    tau: float
    criterion: Literal["spearman", "rmse_median_run"] = Field(
        description="spearman: rank correlation of predicted vs actual final validation "
        "metric (higher wins); rmse_median_run: the median run's validation-metric RMSE "
        "in channel units (lower wins)")
    baseline: str
    model: float | None
    other: float | None
    model_wins: bool = Field(description="strictly better; an undefined rank correlation "
                             "counts as 0 (no ranking information)")


class ForecastTrust(BaseModel):
    """Whether the model out-forecasts every baseline early in training (tracker_sched.fit.trust).

    Attributes:
        level: ``trusted`` (beats every baseline on rank correlation and median-run RMSE at
            every verdict tau), ``weak`` (beats every baseline on rank correlation, loses
            some RMSE comparison), ``untrusted`` (loses some rank-correlation comparison),
            ``unknown`` (no held-out forecasts to judge by).
        reasons: one sentence per lost comparison (which baseline wins where), or why the
            level is unknown.
        taus: the context ends the verdict looked at.
        comparisons: every comparison made.
    """

    model_config = ConfigDict(frozen=True)

    level: Literal["trusted", "weak", "untrusted", "unknown"]
    reasons: list[str] = Field(default_factory=list)
    taus: list[float] = Field(default_factory=list)
    comparisons: list[TrustComparison] = Field(default_factory=list)


class FitReport(BaseModel):
    """Everything a fit tells its user; printed as a table and saved as JSON."""

    model_config = ConfigDict(frozen=True)

    runs_total: int
    runs_used: int
    runs_fit: int
    runs_holdout: int
    scheme: Literal["holdout", "cross-fit"] = "holdout"
    folds: int = 1
    holdout_ids: list[str]
    issues: list[RunIssue]
    direction: str
    val_key: str
    wall_s: float
    members: list[dict[str, float | int | None]]
    holdout: ForecastReport | None
    runs_by_state: dict[str, int] = Field(default_factory=dict, description="runs used, by "
                                          "tracker state: only finished runs can be the best")
    runs_complete: int | None = Field(default=None, description="runs used that reached the "
                                      "end of their budget")
    configurations: str | None = Field(default=None, description='e.g. "9 configurations x 2 '
                                       'seeds" (tracker_sched.identity)')
    stop_reliability: list[ReliabilityRow] = Field(
        default_factory=list, description="stop odds: predicted probability against observed "
        "frequency (tracker_sched.fit.stop_calibration); empty without a calibration")
    forecast_trust: ForecastTrust | None = Field(
        default=None, description="the forecast verdict (tracker_sched.fit.trust); None in "
        "bundles written before it and in control fits (no held-out forecasts)")
    note: str = (
        "Held-out runs also drive early stopping (checkpoint choice only). With cross-fit, "
        "each run is forecast by the one member that never trained on it, so the report "
        "understates the full ensemble; benchmarks report fresh seeds the fit never saw."
    )


class MetricRoles(BaseModel):
    model_config = ConfigDict(frozen=True)

    train_loss: str | None = None
    lr: str | None = None
    val_metric: str
    direction: Literal["max", "min"]


class BundleManifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int
    kind: Literal["latent_ode", "control_ode"] = Field(
        default="latent_ode",
        description="latent_ode: the lr is decoded (generative mode); control_ode: the lr "
        "is an input of the dynamics (control mode, tracker_sched.fit.control). Bundles written "
        "before the field existed are latent_ode.",
    )
    created_at: str
    members: int = Field(ge=1, le=limits.MAX_MEMBERS)
    model: ModelConfig
    fit: dict[str, Any]
    grid_points: int = Field(ge=10, le=limits.MAX_GRID_POINTS)
    window: int = Field(ge=2)
    normalisation: Normalisation
    metrics: MetricRoles
    sweep: SweepSummary
    report: FitReport
    versions: dict[str, str]
    control: dict[str, Any] | None = Field(
        default=None,
        description="control_ode only: the fit's lr-response and counterfactual-ranking "
        "checks (tracker_sched.fit.control.ControlChecks as JSON), read by the control planner",
    )
    stopping: StopCalibration | None = Field(
        default=None,
        description="how the forecast of the final metric becomes stop odds "
        "(tracker_sched.fit.stop_calibration); None in bundles written before stop decisions",
    )
    redacted: list[str] = Field(
        default_factory=list,
        description="config keys whose values were redacted before saving (names only; the "
        "rule is in tracker_sched.util.redact)",
    )
    planner: PlannerDecision | None = Field(
        default=None,
        description="an auto fit's decision: which planner the bundle trusts and why, with "
        "its evidence (tracker_sched.bundle.decision); None in bundles fitted for one mode, "
        "or before the field existed: their kind decides",
    )
    weights_sha256: str | None = Field(
        default=None,
        description="digest of weights.pt: a folder caught between two saves cannot pair one "
        "bundle's manifest with another's weights (None: written before the field existed)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        g = self.grid_points
        if self.window > g:
            raise ValueError(f"window {self.window} is longer than the grid ({g} points)")
        if len(self.sweep.warmup_tau) != g:
            raise ValueError(f"the warm-up plan has {len(self.sweep.warmup_tau)} points, the "
                             f"grid {g}")
        for run in self.sweep.top_runs:
            if {len(run.train_loss), len(run.log_lr), len(run.val_metric)} != {g}:
                raise ValueError(f"top run {run.run_id} is not on the {g}-point grid")
        part = self.planner.control if self.planner is not None else None
        if part is not None and part.window > g:
            raise ValueError(f"the control ensemble's window {part.window} is longer than the "
                             f"grid ({g} points)")
        return self


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tracker-sched", "torch", "torchdiffeq", "pydantic", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")



"""The ``auto`` fit: the generative fit, the control fit when it could matter, the decision.

:func:`fit_auto` fits the generative model (always: forecasts and stop decisions need it),
reads the sweep's evidence (:class:`~tracker_sched.planning.auto.AutoEvidence`), fits the
control ensemble only when the rule could pick it, decides which planner the bundle trusts
(:func:`~tracker_sched.planning.auto.decide`) and stores the decision, its evidence, the
sweep's best schedule as logged and the control ensemble (if fitted) in one bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracker_sched.budget import BudgetSpec
from tracker_sched.bundle.decision import ControlPart, PlannerDecision
from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import ForecastReport
from tracker_sched.data.preflight import Preflight, preflight
from tracker_sched.design.confounding import ConfoundingReport, confounding
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.control import ControlFitConfig, fit_control
from tracker_sched.fit.generative import FitResult, fit_sweep
from tracker_sched.planning.auto import (
    DEFAULT_RULE,
    SKILL_TAUS,
    AutoEvidence,
    AutoRule,
    could_pick_control,
    decide,
    trust_verdict,
)
from tracker_sched.planning.best import best_schedule
from tracker_sched.schema import MetricMap, RunIssue, RunRecord

log = logging.getLogger("tracker_sched.design.auto_fit")


@dataclass
class AutoFit:
    """What :func:`fit_auto` returns.

    Attributes:
        fit: the generative fit (its ``bundle`` is the auto bundle, decision included).
        decision: the stored decision.
        confounding: the sweep's confounding report.
        control: the control bundle, when one was fitted.
    """

    fit: FitResult
    decision: PlannerDecision
    confounding: ConfoundingReport
    control: Bundle | None

    @property
    def bundle(self) -> Bundle:
        return self.fit.bundle


def forecast_evidence(report: ForecastReport | None) -> tuple[int | None, int]:
    """(wins, comparisons) of the model against both baselines at :data:`SKILL_TAUS`:
    median-run RMSE of the validation metric (lower wins) and the final-metric rank
    correlation (higher wins); ``(None, 0)`` without a report."""
    if report is None:
        return None, 0
    wins = total = 0
    for tau in SKILL_TAUS:
        for other in ("nearest", "last"):
            try:
                mine, theirs = report.row(tau, "val_metric", "model"), report.row(
                    tau, "val_metric", other)
                r_mine, r_theirs = report.rank(tau, "model"), report.rank(tau, other)
            except KeyError:
                continue
            total += 1
            wins += mine.rmse_median_run < theirs.rmse_median_run
            if r_mine.spearman is not None and r_theirs.spearman is not None:
                total += 1
                wins += r_mine.spearman > r_theirs.spearman
    return (wins if total else None), total


def _trust(fit: FitResult) -> Any:
    """The fit report's forecast-trust verdict, wherever a version of it puts one."""
    for holder in (fit.report, fit.report.holdout):
        value = getattr(holder, "forecast_trust", None)
        if value is not None:
            return value
    return None


def fit_auto(
    records: Sequence[RunRecord],
    config: FitConfig | None = None,
    control_config: ControlFitConfig | None = None,
    metric_map: MetricMap | None = None,
    *,
    rule: AutoRule = DEFAULT_RULE,
    workers: int | None = None,
    progress: bool = True,
    source_issues: Sequence[RunIssue] = (),
    budget: BudgetSpec | None = None,
    ignore_config_keys: Sequence[str] = (),
    checked: Preflight | None = None,
) -> AutoFit:
    """Fit a sweep and decide which planner its bundle trusts (see the module docstring).

    Args:
        records: the sweep's runs.
        config: the generative fit's options (``FitConfig()`` by default).
        control_config: the control fit's options (``ControlFitConfig()`` by default; its
            grid is the generative fit's, so both models share the bundle's grid).
        metric_map: which logged keys are which (inferred by default).
        rule: the decision's thresholds (default: the shipped rule).
        workers: processes for ensemble members (default: one per member up to the cores).
        progress: show progress bars.
        source_issues: runs a source could not read (listed in the report).
        budget: how each run's budget is found.
        ignore_config_keys: config keys that do not tell configurations apart.
        checked: the pre-flight already run on ``records`` with these options.

    Returns:
        An :class:`AutoFit`; ``.bundle`` holds the decision in ``manifest.planner``.

    Raises:
        FitError: the sweep cannot be fitted (every reason listed, before training).
        InputError: an option or a metric name is unusable.
    """
    config = config or FitConfig()
    if checked is None:
        checked = preflight(records, metric_map=metric_map, budget=budget,
                            ignore_config_keys=ignore_config_keys, source_issues=source_issues)
    fitted = fit_sweep(records, config, metric_map, workers=workers, progress=progress,
                       source_issues=source_issues, budget=budget,
                       ignore_config_keys=ignore_config_keys, checked=checked)
    conf = confounding(checked.validated)
    wins, total = forecast_evidence(fitted.report.holdout)
    ev = AutoEvidence(forecast_wins=wins, forecast_comparisons=total,
                      forecast_trust=trust_verdict(_trust(fitted)), learnable=conf.learnable)
    ctl: Bundle | None = None
    part: ControlPart | None = None
    if could_pick_control(ev, rule):
        cc = (control_config or ControlFitConfig()).model_copy(
            update={"grid_points": config.grid_points})
        if cc.window > cc.grid_points:
            cc = cc.model_copy(update={"window": config.window})
        ctl = fit_control(records, cc, metric_map, workers=workers, source_issues=source_issues,
                          budget=budget, ignore_config_keys=ignore_config_keys, checked=checked)
        checks = dict(ctl.manifest.control or {})
        checks["confounding"] = conf.model_dump(mode="json")
        ranking = checks.get("ranking") or {}
        ev = ev.model_copy(update={
            "control_fitted": True, "control_flags": list(checks.get("flags") or []),
            "ranking_mean": ranking.get("mean"), "ranking_worst": ranking.get("worst")})
        cm = ctl.manifest
        part = ControlPart(members=cm.members, model=cm.model, fit=cm.fit, window=cm.window,
                           normalisation=cm.normalisation, checks=checks)
    mode, reason = decide(ev, rule)
    prep = fitted.prepared
    best_run = next(r for r in prep.runs if r.run_id == prep.summary.best_run_id)
    try:
        best = best_schedule(best_run)
    except ValueError as exc:  # no positive lr logged: the grid's warm-up plan stands in
        log.warning("no best schedule stored: %s", exc)
        best = None
    decision = PlannerDecision(
        mode=mode, reason=reason,
        evidence={**ev.model_dump(mode="json"), "forecast_skill": ev.forecast_skill,
                  "confounding": conf.summary()},
        rule=rule.model_dump(mode="json"), best_schedule=best, control=part,
    )
    b = fitted.bundle
    bundle = Bundle(b.manifest.model_copy(update={"planner": decision}), b.models,
                    ctl.models if ctl is not None else None)
    fitted.bundle = bundle
    return AutoFit(fit=fitted, decision=decision, confounding=conf, control=ctl)


__all__ = ["AutoFit", "fit_auto", "forecast_evidence"]

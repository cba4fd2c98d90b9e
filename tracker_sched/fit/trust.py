"""The forecast verdict: does the model out-forecast every baseline early in training?

The planners rank candidate futures by the model's predicted final validation
metric, and the stop odds read the same prediction. Both are worth more than
a baseline only where the model forecasts better than the baselines do on the
sweep's own held-out runs (:mod:`tracker_sched.fit.report`). At each verdict
tau (:data:`VERDICT_TAUS`, early and mid training, where a forecast matters
most) the model is compared with every baseline (:data:`BASELINES`) on two
criteria of the validation metric: the rank correlation of predicted against
actual final values (higher wins) and the median run's RMSE (lower wins).
"Wins" means strictly better; an undefined rank correlation (constant
predictions) counts as 0.

Levels: ``trusted`` (every comparison won), ``weak`` (every rank correlation
won, some RMSE lost), ``untrusted`` (some rank correlation lost), ``unknown``
(no held-out forecasts at a verdict tau). The verdict is stored in the fit
report (``FitReport.forecast_trust``), where ``--mode auto`` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tracker_sched.bundle.manifest import (
    FitReport,
    ForecastReport,
    ForecastTrust,
    TrustComparison,
)

Level = Literal["trusted", "weak", "untrusted", "unknown"]
VERDICT_TAUS = (0.25, 0.5)
BASELINES = ("last", "nearest", "curve")
_LABEL = {"spearman": "rank correlation", "rmse_median_run": "median-run val RMSE"}


def forecast_trust(
    report: ForecastReport | None,
    taus: Sequence[float] = VERDICT_TAUS,
    baselines: Sequence[str] = BASELINES,
) -> ForecastTrust:
    """The verdict on one held-out forecast report (see the module docstring).

    Args:
        report: the fit report's held-out forecasts (``FitReport.holdout``); None for a
            fit without held-out runs.
        taus: the context ends to judge at; those the report lacks are skipped and named.
        baselines: the methods the model must beat; those the report lacks (a bundle
            written before the method existed) are skipped and named.

    Returns:
        A :class:`~tracker_sched.bundle.manifest.ForecastTrust`; never raises on a
        partial report.
    """
    if report is None:
        return ForecastTrust(level="unknown", reasons=["no held-out forecasts: the fit held "
                                                       "out no runs"])
    have = sorted({r.tau for r in report.ranking})
    reasons: list[str] = []
    used = [t for t in taus if any(abs(t - h) < 1e-9 for h in have)]
    missing = [t for t in taus if t not in used]
    if missing:
        reasons.append("the report has no forecasts at tau " + ", ".join(f"{t:g}" for t in
                                                                         missing))
    comps: list[TrustComparison] = []
    absent: set[str] = set()
    for tau in used:
        try:
            model_rho = report.rank(tau, "model").spearman
            model_rmse = report.row(tau, "val_metric", "model").rmse_median_run
        except KeyError:
            reasons.append(f"no model forecasts of the validation metric at tau {tau:g}")
            continue
        for base in baselines:
            try:
                rho = report.rank(tau, base).spearman
                rmse = report.row(tau, "val_metric", base).rmse_median_run
            except KeyError:
                absent.add(base)
                continue
            comps.append(TrustComparison(
                tau=tau, criterion="spearman", baseline=base, model=model_rho, other=rho,
                model_wins=(model_rho or 0.0) > (rho or 0.0)))
            comps.append(TrustComparison(
                tau=tau, criterion="rmse_median_run", baseline=base, model=model_rmse,
                other=rmse, model_wins=model_rmse < rmse))
    if absent:
        reasons.append("not compared with " + ", ".join(sorted(absent)) + " (not in this "
                       "report: a bundle written before the baseline existed)")
    if not comps:
        return ForecastTrust(level="unknown", reasons=reasons, taus=list(used))
    reasons += [_lost(c) for c in comps if not c.model_wins]
    rank_lost = any(not c.model_wins for c in comps if c.criterion == "spearman")
    rmse_lost = any(not c.model_wins for c in comps if c.criterion == "rmse_median_run")
    level: Level = "untrusted" if rank_lost else "weak" if rmse_lost else "trusted"
    return ForecastTrust(level=level, reasons=reasons, taus=list(used), comparisons=comps)


def trust_of(report: FitReport) -> ForecastTrust:
    """The fit report's stored verdict, or one computed now from its held-out forecasts
    (a bundle written before the verdict existed)."""
    if report.forecast_trust is not None:
        return report.forecast_trust
    return forecast_trust(report.holdout)


def format_trust(trust: ForecastTrust, *, val_scale: float = 1.0, val_unit: str = "") -> str:
    """Plain text: the level and what it means, then one line per reason.

    Args:
        trust: the verdict.
        val_scale: multiplies the validation metric's RMSE in the lines (100: points).
        val_unit: the RMSE's unit after that scaling, e.g. ``"points"``.

    Returns:
        The lines, joined.
    """
    won = sum(c.model_wins for c in trust.comparisons)
    head = {
        "trusted": "the model beats every baseline on rank correlation and median-run RMSE",
        "weak": "the model ranks runs better than every baseline but loses on RMSE",
        "untrusted": "the model does NOT beat every baseline on rank correlation",
        "unknown": "no verdict",
    }[trust.level]
    taus = ", ".join(f"{t:g}" for t in trust.taus)
    lines = [f"forecast trust: {trust.level.upper()}: {head}"
             + (f" ({won}/{len(trust.comparisons)} comparisons won at tau {taus})"
                if trust.comparisons else "")]
    lost = [c for c in trust.comparisons if not c.model_wins]
    stored = {_lost(c) for c in lost}
    lines += [f"  {r}" for r in trust.reasons if r not in stored]
    lines += [f"  {_lost(c, val_scale, val_unit)}" for c in lost]
    return "\n".join(lines)


def _lost(c: TrustComparison, scale: float = 1.0, unit: str = "") -> str:
    """One lost comparison as a sentence; RMSE times ``scale``, in ``unit``."""
    s = scale if c.criterion == "rmse_median_run" else 1.0
    u = f" {unit}" if unit and c.criterion == "rmse_median_run" else ""
    verb = "ties with" if c.other == c.model else "beats"
    return (f"tau {c.tau:g}: {_LABEL[c.criterion]}: {c.baseline} {_num(c.other, s)}{u} "
            f"{verb} the model {_num(c.model, s)}{u}")


def _num(x: float | None, scale: float = 1.0) -> str:
    return "undefined" if x is None else f"{x * scale:.3g}"


__all__ = ["BASELINES", "VERDICT_TAUS", "forecast_trust", "format_trust", "trust_of"]

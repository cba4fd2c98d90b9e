"""What a sweep says about itself, recorded per task for a later ``--mode auto`` rule.

Three kinds of evidence, each computed from the sweep's runs alone (never from a
block): the generative fit's out-of-fold forecast skill against the last value,
the nearest run and the learning curve (and its verdict), the control bundle's
checks, and the confounding report.
The rule itself is chosen later, across tasks (leave one task out); this module
only records the inputs it could use.
"""

from __future__ import annotations

from typing import Any

from tracker_sched.bundle.manifest import METHODS, BundleManifest
from tracker_sched.design.confounding import confounding
from tracker_sched.schema import RunRecord


def forecast_skill(manifest: BundleManifest) -> dict[str, Any]:
    """Val-metric forecast RMSE (pooled, median run) and final-metric rank correlation of
    the model and the three baselines (last value, nearest run, learning curve) at each
    report tau, whether the model wins each comparison, and the fit's forecast verdict
    (``tracker_sched.fit.trust``; computed now for a bundle written before it)."""
    from tracker_sched.fit.trust import trust_of

    fr = manifest.report.holdout
    if fr is None:
        return {"available": False}
    out: dict[str, Any] = {"available": True, "scheme": manifest.report.scheme, "taus": {}}
    taus = sorted({r.tau for r in fr.ranking})
    for tau in taus:
        row: dict[str, Any] = {}
        for method in METHODS:
            try:
                f = fr.row(tau, "val_metric", method)
            except KeyError:  # a bundle written before the method existed
                continue
            row[method] = {"rmse_pooled": f.rmse_pooled, "rmse_median_run": f.rmse_median_run,
                           "spearman": fr.rank(tau, method).spearman}
        # model_beats: the two baselines the auto rule was selected on (what
        # AutoEvidence.from_record counts); the curve's comparisons apart, and in the verdict
        for key_out, others in (("model_beats", ("nearest", "last")),
                                ("model_beats_curve", ("curve",))):
            row[key_out] = {
                f"{other}_{label}": _beats(row["model"][key], row[other][key],
                                           key == "spearman")
                for other in others if other in row
                for key, label in (("rmse_median_run", "median_rmse"), ("spearman", "spearman"))
            }
        out["taus"][f"{tau:g}"] = row
    trust = trust_of(manifest.report)
    out["forecast_trust"] = {"level": trust.level, "reasons": trust.reasons, "stored":
                             manifest.report.forecast_trust is not None}
    return out


def _beats(mine: float | None, other: float | None, higher: bool) -> bool | None:
    if mine is None or other is None:
        return None
    return bool(mine > other) if higher else bool(mine < other)


def control_verdict(manifest: BundleManifest) -> dict[str, Any]:
    """The control checks in brief: flags, usable, the counterfactual ranking, the response."""
    checks = manifest.control or {}
    ranking = checks.get("ranking") or {}
    response = checks.get("response") or {}
    predicted = response.get("predicted") or []
    return {
        "flags": checks.get("flags", []),
        "usable": not checks.get("flags"),
        "ranking_mean": ranking.get("mean"), "ranking_worst": ranking.get("worst"),
        "best_observed": response.get("best_observed"),
        "exploit_threshold": response.get("exploit_threshold"),
        "max_probe_predicted": max(predicted) if predicted else None,
        "hold_low_predicted": response.get("hold_low_predicted"),
    }


def evidence(gen: BundleManifest, ctl: BundleManifest, runs: list[RunRecord]) -> dict[str, Any]:
    """Every piece of evidence of one task's sweep, JSON-ready."""
    conf = confounding(runs)
    return {
        "forecast": forecast_skill(gen),
        "control": control_verdict(ctl),
        "confounding": {
            "learnable": conf.learnable, "summary": conf.summary(),
            "distinct_shapes": conf.distinct_shapes, "shape_dims": conf.shape_dims,
            "breaking_shapes": conf.breaking_shapes, "lr_spread_dex": conf.lr_spread_dex,
            "shared_fraction": conf.coverage.shared_fraction,
        },
        "sweep": {"configurations": gen.sweep.configurations,
                  "best_config_mean_final_val": gen.sweep.best_config_mean_final_val,
                  "best_peak_lr": gen.sweep.best_peak_lr, "lr_min": gen.sweep.lr_min,
                  "lr_max": gen.sweep.lr_max},
    }

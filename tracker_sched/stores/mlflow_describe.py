"""What a person sees of a fit in the MLflow UI: only the headline metrics (the full
forecast report is in ``report.json``, and as tables in ``report.md``), the split that was
used, descriptions on the fit run, the registered model and its version, and tags that
name the registered version (name and number), not only the bundle's timestamp.

Used by :func:`tracker_sched.stores.mlflow_store.register_bundle`; the MLflow callbacks use
:func:`registered_version` to tag advised runs with the version that advised them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tracker_sched.bundle.manifest import BundleManifest, FitReport

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TAG_MODEL = "tracker_sched.registered_model"
TAG_VERSION = "tracker_sched.registered_version"
NOTE = "mlflow.note.content"  # the description MLflow's UI shows and edits
HEADLINE_TAU = 0.5
_ALIAS = re.compile(r"^(?:mlflow:)?models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_VERSION = re.compile(r"^(?:mlflow:)?models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


def fit_params(manifest: BundleManifest, report: FitReport) -> dict[str, object]:
    """The fit run's params: the split (scheme, folds, runs per member) beside the model's."""
    return {"scheme": report.scheme, "folds": report.folds, "runs_fit": report.runs_fit,
            "runs_holdout": report.runs_holdout, "runs_used": report.runs_used,
            "configurations": report.configurations or "-"}


def _tau(report: FitReport) -> float | None:
    if report.holdout is None or not report.holdout.forecast:
        return None
    taus = sorted({r.tau for r in report.holdout.forecast})
    return min(taus, key=lambda t: abs(t - HEADLINE_TAU))


def headline_metrics(report: FitReport) -> dict[str, float]:
    """The few numbers that say how good the fit is: the fit run's only metrics, under
    ``fit.*``. Runs registered before 0.2 also carry the full forecast report as metrics
    (``forecast_rmse.<method>.<channel>.tau<t>``, ``rank_spearman.<method>.tau<t>``,
    ``runs_total``, ``runs_used``, ``runs_holdout``, ``run_issues``, ``fit_wall_s``);
    those numbers are now in ``report.json`` and ``report.md`` only, so that the runs
    table's column list does not start with 36 diagnostics.

    ``fit.val_rmse`` is the held-out forecast RMSE of the validation metric from mid-run
    (tau 0.5), in the sweep's units; ``fit.val_rmse_last`` the same for the last value
    carried forward (a model that does not beat it has learned nothing);
    ``fit.rank_spearman`` how well the forecasts rank the runs' finals.
    """
    out: dict[str, float] = {"fit.runs_fit": report.runs_fit,
                             "fit.runs_holdout": report.runs_holdout,
                             "fit.folds": report.folds, "fit.wall_s": report.wall_s}
    tau = _tau(report)
    if tau is not None and report.holdout is not None:
        rows = {(r.method, r.channel): r for r in report.holdout.forecast if r.tau == tau}
        for method, key in (("model", "fit.val_rmse"), ("last", "fit.val_rmse_last")):
            row = rows.get((method, "val_metric"))
            if row is not None:
                out[key] = row.rmse_pooled
        rank = [r for r in report.holdout.ranking if r.tau == tau and r.method == "model"]
        if rank and rank[0].spearman is not None:
            out["fit.rank_spearman"] = rank[0].spearman
    # Short enough for the runs table to show whole (not 0.07836405932...).
    return {k: float(f"{v:.4g}") if k != "fit.wall_s" else round(float(v), 1)
            for k, v in out.items()}


def split_text(report: FitReport) -> str:
    """The split in words: why ``runs_holdout`` may equal ``runs_used`` without leakage."""
    if report.scheme == "cross-fit":
        return (f"cross-fit: {report.folds} members, each trained on {report.runs_fit} runs "
                f"and scored on the {report.runs_used - report.runs_fit} it never saw; every "
                f"one of the {report.runs_used} runs is forecast out of fold")
    return (f"holdout: trained on {report.runs_fit} runs, scored on {report.runs_holdout} "
            "held-out runs")


def fit_description(name: str, version: str, manifest: BundleManifest,
                    report: FitReport) -> str:
    """The fit run's and the model version's description (markdown)."""
    lines = [f"tracker-sched fit of {report.runs_used} runs "
             f"({report.configurations or 'configurations not identified'}), validation "
             f"metric `{report.val_key}` ({report.direction}imised), registered as "
             f"`{name}` version {version}.", "", f"- split: {split_text(report)}"]
    head = headline_metrics(report)
    if "fit.val_rmse" in head:
        base = head.get("fit.val_rmse_last")
        vs = f" (last value carried forward: {base:.4g})" if base is not None else ""
        lines.append(f"- held-out forecast RMSE of `{report.val_key}` from mid-run: "
                     f"{head['fit.val_rmse']:.4g}{vs}")
    if report.holdout is not None:
        from tracker_sched.fit.trust import trust_of

        lines.append(f"- forecast trust: {trust_of(report).level} (see `report.md`)")
    if "fit.rank_spearman" in head:
        lines.append(f"- rank correlation of forecast and actual finals: "
                     f"{head['fit.rank_spearman']:.3f}")
    best = manifest.sweep
    lines.append(f"- sweep best: run `{best.best_run_id}`, mean final {report.val_key} "
                 f"{best.best_config_mean_final_val:.4g} over {best.best_config_runs} seeds")
    lines.append(f"- bundle created {manifest.created_at}; full report in `report.json`")
    return "\n".join(lines)


def report_markdown(manifest: BundleManifest, report: FitReport) -> str:
    """The fit report for a person (the fit run's ``report.md``): the split, the forecast
    RMSE of every method, channel and tau, the rank correlations, and the runs validation
    excluded or changed. An accuracy-like validation metric is shown in points."""
    from tracker_sched.fit.report import format_forecast
    from tracker_sched.fit.trust import format_trust, trust_of

    lines = [f"# tracker-sched fit report: {report.runs_used} runs, `{report.val_key}` "
             f"({report.direction}imised)", "", f"- split: {split_text(report)}",
             f"- runs read: {report.runs_total}, used: {report.runs_used}, with issues: "
             f"{len(report.issues)}", f"- fit wall time: {report.wall_s:.1f} s", ""]
    if report.holdout is not None:
        best = manifest.sweep.best_config_mean_final_val
        points = report.direction == "max" and 0 <= best <= 1
        table = format_forecast(report.holdout, val_scale=100 if points else 1,
                                val_unit="points" if points else "metric units")
        verdict = format_trust(trust_of(report), val_scale=100 if points else 1,
                               val_unit="points" if points else "")
        lines += ["## Held-out forecasts", "", "Methods: `model` (this fit), `nearest` (the "
                  "nearest sweep run), `last` (the last value carried forward), `curve` (a "
                  "learning curve fitted to the run's own values so far).", "", "```",
                  table.rstrip(), "", verdict, "```", ""]
    if report.issues:
        lines += ["## Runs excluded or changed", "", "| run | what | why |", "|---|---|---|",
                  *(f"| {i.run_id} | {i.action} | {i.reason.replace('|', '/')} |"
                    for i in report.issues), ""]
    lines.append("Every number, for programs: `report.json`.")
    return "\n".join(lines) + "\n"


def model_description(name: str) -> str:
    """The registered model's description, set when it has none."""
    return (f"Learning-rate schedules learned by tracker-sched from a sweep's runs (a latent "
            f"ODE of training dynamics). Load it in a training run with "
            f"`mlflow:models:/{name}@champion` (or a version), through "
            "`MlflowAdvisorCallback`, the HF Trainer or Lightning callbacks, or serve it with "
            "`mlflow models serve`. Each version's description says what it was fitted on.")


def describe_registration(client: MlflowClient, name: str, version: str, run_id: str,
                          manifest: BundleManifest, report: FitReport) -> None:
    """Descriptions and name/number tags on the fit run, the version and the model.

    A model description someone wrote is kept. Raises what MLflow raises.
    """
    text = fit_description(name, version, manifest, report)
    client.set_tag(run_id, NOTE, text)
    client.set_tag(run_id, TAG_MODEL, name)
    client.set_tag(run_id, TAG_VERSION, version)
    client.update_model_version(name, version, description=text)
    client.set_model_version_tag(name, version, TAG_MODEL, name)
    client.set_model_version_tag(name, version, TAG_VERSION, version)
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=model_description(name))


def registered_version(client: MlflowClient, uri: str | None) -> dict[str, str]:
    """``{TAG_MODEL: name, TAG_VERSION: number}`` for a ``mlflow:models:/`` URI, else {}.

    An alias is resolved to the version it points at now. Raises what MLflow raises.
    """
    if not uri:
        return {}
    match = _VERSION.match(uri)
    if match is not None:
        return {TAG_MODEL: match["name"], TAG_VERSION: match["version"]}
    match = _ALIAS.match(uri)
    if match is None:
        return {}
    found = client.get_model_version_by_alias(match["name"], match["alias"])
    return {TAG_MODEL: match["name"], TAG_VERSION: str(found.version)}

"""``tracker-sched fit``: both modes, the bundle, the report and the optional registration."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from tracker_sched.cli.common import (
    _control_checks_text,
    _decision_text,
    _forecast_table,
    _issue_table,
    _metric_map,
    _read_and_check,
    print,
)
from tracker_sched.errors import InputError, invalid
from tracker_sched.util.term import escape

if TYPE_CHECKING:  # the bundle module imports torch: keep `--help` fast
    from tracker_sched.bundle.manifest import FitReport

_Options = TypeVar("_Options", bound=BaseModel)


def cmd_fit(args: argparse.Namespace) -> int:
    from tracker_sched.bundle import MANIFEST
    from tracker_sched.fit.config import FitConfig
    from tracker_sched.model.config import ModelConfig
    from tracker_sched.util.folders import check_target

    # Before reading or training: a target the save would refuse must not cost a whole fit.
    # Torch is imported only once the options and the sweep have passed (about 4 s of CPU):
    # an unfittable sweep or a bad option fails in about a second.
    check_target(args.out, marker=MANIFEST, what="--out")
    base: dict[str, object] = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read --config {args.config}: {exc}") from exc
        if not isinstance(base, dict):
            raise InputError(f"--config {args.config} must hold a JSON object of FitConfig fields")
    if args.mode == "control":
        _set_threads(args)
        return _fit_control(args, base)
    flags = {
        "max_iterations": args.iterations, "ensemble": args.ensemble, "seed": args.seed,
        "grid_points": args.grid_points, "window": args.window,
        "holdout_fraction": args.holdout,
    }
    base.update({k: v for k, v in flags.items() if v is not None})
    if args.solver:
        model = dict(base.get("model", {}) or {})  # type: ignore[call-overload]
        model["solver"] = args.solver
        base["model"] = ModelConfig(**model)
    config = _options(FitConfig, base, "fit")
    result, checked = _read_and_check(args)  # options first, then the sweep, then training
    _set_threads(args)
    from tracker_sched.fit.generative import fit_sweep

    mm = _metric_map(args)
    auto = None
    if args.mode == "auto":  # the generative fit, the control fit if it could matter, a decision
        from tracker_sched.design.auto_fit import fit_auto

        auto = fit_auto(result.runs, config, None, mm, workers=args.workers,
                        progress=not args.no_progress, source_issues=result.issues,
                        checked=checked)
        fitted = auto.fit
    else:
        fitted = fit_sweep(result.runs, config, mm, workers=args.workers,
                           progress=not args.no_progress, source_issues=result.issues,
                           checked=checked)
    report, bundle = fitted.report, fitted.bundle
    out = bundle.save(args.out)
    (out / "report.json").write_text(report.model_dump_json(indent=2))
    s = bundle.manifest.sweep
    if report.scheme == "cross-fit":
        split = (f"{report.folds} members cross-fitted ({report.runs_fit} runs each, "
                 f"every run forecast out of fold)")
    else:
        split = f"fit {report.runs_fit} runs, held out {report.runs_holdout}"
    print(f"{report.runs_used} usable runs of {report.runs_total}; {split}; "
          f"{len(report.issues)} issues; {report.wall_s:.1f} s")
    if report.issues:
        print("runs excluded or changed:\n" + _issue_table(report.issues))
    print(f"sweep best: {escape(s.best_run_id)} (config mean final {report.val_key} "
          f"{s.best_config_mean_final_val:.4f} over {s.best_config_runs} runs"
          f"{_hyperparameters(s.best_hyperparameters)}); "
          f"lr explored {s.lr_min:.2e} .. {s.lr_max:.2e}")
    if bundle.manifest.stopping is not None:
        from tracker_sched.fit.stop_calibration import format_reliability

        print(format_reliability(bundle.manifest.stopping))
    if report.holdout is not None:
        print(_forecast_table(bundle.manifest))
        if not args.no_plots:
            try:
                from tracker_sched.fit.forecast_plot import plot_fit_forecasts

                plot_fit_forecasts(out / "forecast.png", fitted, config.report_taus,
                                   config.window)
            except ImportError as exc:
                print(f"no plot: {exc}", file=sys.stderr)
    if auto is not None:
        print(f"sweep design: {auto.confounding.summary()}")
        if auto.control is not None:
            from tracker_sched.fit.checks import ControlChecks

            print(_control_checks_text(ControlChecks.model_validate(
                auto.control.manifest.control or {})))
        print(_decision_text(bundle.manifest))
    print(f"bundle written to {out}")
    if args.register:
        print(f"registered {_register(args, out, report)}")
    return 0


def _options(model: type[_Options], values: dict[str, object], what: str) -> _Options:
    """The options (``--config`` and the flags) as ``model``; an InputError naming each bad one."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid(exc, f"invalid {what} options") from exc


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads``: torch's intra-op threads (imports torch)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _fit_control(args: argparse.Namespace, base: dict[str, object]) -> int:
    """``fit --mode control``: a control-mode bundle, its checks, and the sweep's confounding."""
    from tracker_sched.design.confounding import confounding
    from tracker_sched.fit.checks import ControlChecks
    from tracker_sched.fit.control import ControlFitConfig, fit_control

    if args.solver or args.holdout is not None:
        raise InputError("--solver and --holdout are options of the generative fit; the control "
                         "fit takes ControlFitConfig fields in --config")
    flags = {"iterations": args.iterations, "members": args.ensemble, "seed": args.seed,
             "grid_points": args.grid_points, "window": args.window}
    base.update({k: v for k, v in flags.items() if v is not None})
    config = _options(ControlFitConfig, base, "control fit")
    result, checked = _read_and_check(args)
    conf = confounding(checked.validated)
    print(f"sweep design: {conf.summary()}")
    bundle = fit_control(result.runs, config, _metric_map(args), workers=args.workers,
                         source_issues=result.issues, checked=checked)
    control = dict(bundle.manifest.control or {})
    control["confounding"] = conf.model_dump(mode="json")
    bundle.manifest = bundle.manifest.model_copy(update={"control": control})
    out = bundle.save(args.out)
    report = bundle.manifest.report
    (out / "report.json").write_text(report.model_dump_json(indent=2))
    checks = ControlChecks.model_validate(control)
    print(f"{report.runs_used} usable runs of {report.runs_total}; {bundle.manifest.members} "
          f"bootstrap members; {len(report.issues)} issues; {report.wall_s:.1f} s")
    if report.issues:
        print("runs excluded or changed:\n" + _issue_table(report.issues))
    print(_control_checks_text(checks))
    if not conf.learnable:
        print("  the lr's effect is confounded with the configuration in this sweep: "
              "`tracker-sched suggest-runs` proposes runs that break the tie")
    print(f"bundle written to {out}")
    if args.register:
        print(f"registered {_register(args, out, report)}")
    return 0


def _hyperparameters(values: dict[str, object]) -> str:
    return (": " + ", ".join(f"{k}={v}" for k, v in values.items())) if values else ""


def _register(args: argparse.Namespace, out: Path, report: FitReport) -> str:
    """Store the bundle in a tracker; returns the URI to load it by."""
    store = args.store or ("wandb" if args.source.startswith("wandb") else "mlflow")
    if store == "mlflow":
        from tracker_sched.stores.mlflow_store import register_bundle

        experiment = args.project if args.source == "mlflow" else None
        return register_bundle(out, name=args.register, alias=args.alias, report=report,
                               experiment=experiment, tracking_uri=args.tracking_uri)
    from tracker_sched.stores.wandb_store import log_bundle_artifact

    project = args.project if args.source == "wandb" else None
    return log_bundle_artifact(out, name=args.register,
                               aliases=[args.alias] if args.alias else [],
                               report=report, project=project)

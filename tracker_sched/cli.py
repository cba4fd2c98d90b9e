"""``tracker-sched``: a thin command line over the library.

Errors print one line (``tracker-sched: error: ...``) and exit with status 1;
bad usage exits with 2 (argparse).
"""

from __future__ import annotations

import argparse
import builtins
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from tracker_sched.errors import InputError, TrackerSchedError
from tracker_sched.limits import MAX_STEPS
from tracker_sched.schema import MetricMap, RunIssue
from tracker_sched.sources.base import SourceResult
from tracker_sched.sources.files import read_sweep
from tracker_sched.util.term import EscapingFilter, escape

if TYPE_CHECKING:  # the bundle module imports torch: keep `--help` fast
    from tracker_sched.advising.serving import Observation
    from tracker_sched.bundle.folder import BundleManifest
    from tracker_sched.data.preflight import Preflight
    from tracker_sched.fit.checks import ControlChecks
    from tracker_sched.fit.report import FitReport

SOURCES = ("files", "mlflow", "wandb", "wandb-offline")


def print(*parts: object, file: TextIO | None = None, sep: str = " ", end: str = "\n") -> None:
    """Every line this module prints (it shadows the builtin on purpose, so that no output
    path is missed): run ids, names and reasons come from trackers, and their control and
    bidi characters are shown escaped, never sent to the terminal (tracker_sched.util.term)."""
    text = escape(sep.join(str(p) for p in parts), lines=True)
    builtins.print(text, file=file if file is not None else sys.stdout, end=end)


def _json(obj: Any) -> str:
    """JSON for the terminal: ASCII only, so bidi characters arrive as \\u escapes."""
    return json.dumps(obj, indent=2, ensure_ascii=True)


def _steps_arg(minimum: int) -> Any:
    """An argparse type: a whole number of steps in [minimum, MAX_STEPS] (``8.4e2`` is 840)."""
    def parse(text: str) -> int:
        from tracker_sched.advising.serving import whole_steps

        try:
            return whole_steps(text, "value", minimum=minimum)
        except InputError as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number of steps in [{minimum}, {MAX_STEPS:.0e}]"
            ) from exc
    parse.__name__ = "steps"
    return parse


def _metric_map_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metric names (default: recognise common names)")
    g.add_argument("--train-loss-key", help="tracker key of the train loss (e.g. train/loss)")
    g.add_argument("--lr-key", help="tracker key of the learning rate (e.g. lr-AdamW)")
    g.add_argument("--val-key", help="tracker key of the validation metric (e.g. val/acc)")
    g.add_argument("--val-direction", choices=("max", "min"),
                   help="whether the validation metric is maximised (default: from its name)")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=SOURCES, default="files",
                   help="where the sweep lives (default: files)")
    p.add_argument("--path", help="files: a sweep .jsonl file or a folder of them; "
                   "wandb-offline: a wandb folder, an offline-run-* folder or a .wandb file")
    p.add_argument("--project", help="mlflow: the experiment name or id; wandb: ENTITY/PROJECT")
    p.add_argument("--sweep", help="mlflow: the parent run id whose children form the sweep; "
                   "wandb: the sweep id")
    p.add_argument("--filter", help="mlflow: a search filter, e.g. \"params.model = 'cnn'\"; "
                   "wandb: a JSON filter, e.g. '{\"config.model\": \"cnn\"}'")
    p.add_argument("--tracking-uri", help="mlflow: tracking URI (default: MLflow's own "
                   "resolution: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--step-key", default="auto",
                   help="wandb: the history key used as the step (default auto: the run's "
                   "define_metric step, else train/global_step or trainer/global_step, else "
                   "_step)")
    _metric_map_args(p)


def _sweep_rule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budgets and configurations (default: docs/sweep-format.md)")
    b = g.add_mutually_exclusive_group()
    b.add_argument("--total-steps", type=int, metavar="N",
                   help="every run's budget, in the units of its step axis")
    b.add_argument("--total-steps-key", metavar="KEY",
                   help="the config key (param) holding each run's budget in the units of its "
                   "step axis (default: total_steps, max_steps, num_training_steps, then epoch "
                   "counts x steps per epoch, else the last step of a finished run)")
    g.add_argument("--ignore-config-key", action="append", default=[], metavar="KEY",
                   help="a config key that is no hyperparameter (a glob; repeatable): runs that "
                   "differ only in it and in seeds are one configuration")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracker-sched",
        description="Learn learning-rate schedules from the sweeps in your experiment tracker.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    fit = sub.add_parser("fit", help="fit a latent ODE to a sweep and save a bundle")
    _source_args(fit)
    _sweep_rule_args(fit)
    fit.add_argument("--out", required=True, help="bundle folder to write")
    fit.add_argument("--iterations", type=int, help="max training iterations per member")
    fit.add_argument("--ensemble", type=int, help="fit seeds averaged in the forecast")
    fit.add_argument("--workers", type=int, help="processes for ensemble members (default: cores)")
    fit.add_argument("--threads", type=int, help="torch threads in this process")
    fit.add_argument("--seed", type=int, help="seed of the split and the first member")
    fit.add_argument("--grid-points", type=int, help="points on the progress grid")
    fit.add_argument("--window", type=int, help="live context window, in grid points")
    fit.add_argument("--holdout", type=float, help="fraction of runs held out (default 0.2)")
    fit.add_argument("--solver", choices=("rk4", "dopri5", "euler", "midpoint"))
    fit.add_argument("--config", help="JSON file with FitConfig fields (flags win)")
    fit.add_argument("--no-plots", action="store_true", help="skip the forecast plot")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.add_argument("--mode", choices=("generative", "control"), default="generative",
                     help="generative (default): the paper's model, lr decoded; control: the lr "
                     "as an input of the dynamics, a bootstrap ensemble with lr-response checks "
                     "(docs/control.md); --config then holds ControlFitConfig fields")
    fit.add_argument("--register", metavar="NAME",
                     help="also store the bundle in a tracker under NAME (MLflow: a registered "
                     "pyfunc model; W&B: an artifact)")
    fit.add_argument("--alias", help="with --register: alias to set (e.g. champion)")
    fit.add_argument("--store", choices=("mlflow", "wandb"),
                     help="with --register: where (default: the source's tracker; files -> "
                     "mlflow, MLflow's default tracking URI)")

    val = sub.add_parser("validate", help="run every check a fit runs before training: list "
                         "each run's issues and why the sweep cannot be fitted (exit 1)")
    _source_args(val)
    _sweep_rule_args(val)

    exp = sub.add_parser("export", help="write a sweep as a tracker-sched sweep file")
    _source_args(exp)
    exp.add_argument("--out", required=True, help="sweep .jsonl file to write")

    rec = sub.add_parser("recommend", help="one recommendation for a run from its metrics file")
    rec.add_argument("--bundle", required=True,
                     help="bundle: a folder, mlflow:models:/NAME@ALIAS or wandb:E/P/NAME:ALIAS")
    rec.add_argument("--tracking-uri", help="for mlflow: bundle URIs (default: MLflow's own "
                     "resolution, MLFLOW_TRACKING_URI else ./mlflow.db)")
    rec.add_argument("--history", required=True,
                     help="the run's metrics: CSV with a header, or JSON Lines, with columns "
                     "step, train_loss, val_metric, lr (empty cells allowed)")
    rec.add_argument("--total-steps", type=_steps_arg(1), required=True,
                     help="the run's planned budget")
    rec.add_argument("--step", type=_steps_arg(0),
                     help="the current step (default: the last logged)")
    rec.add_argument("--mode", choices=("generative", "control"),
                     help="planner mode (default: the bundle's kind: control for a "
                     "control-mode bundle, else generative)")

    ins = sub.add_parser("inspect", help="summarise a bundle and its fit report")
    ins.add_argument("bundle", help="bundle: a folder, mlflow:models:/NAME@ALIAS or "
                     "wandb:E/P/NAME:ALIAS")
    ins.add_argument("--tracking-uri", help="for mlflow: bundle URIs")
    ins.add_argument("--json", action="store_true", help="print the manifest as JSON")

    sug = sub.add_parser("suggest-runs", help="say how confounded a sweep is and which "
                         "randomised-schedule runs to add to make it learnable")
    _source_args(sug)
    sug.add_argument("--n", type=int, default=12, help="runs to suggest (default 12)")
    sug.add_argument("--seed", type=int, default=0, help="seed of the random schedules")
    sug.add_argument("--format", choices=("wandb", "mlflow", "files"), default="wandb",
                     help="wandb: a sweep config (JSON, readable as YAML); mlflow: JSON Lines "
                     "of params; files: tracker-sched planned runs (default: wandb)")
    sug.add_argument("--program", help="wandb: the training script the sweep runs")
    sug.add_argument("--out", help="file to write (default: standard output)")

    demo = sub.add_parser("demo", help="the whole loop on MLflow's embedded sqlite store: "
                          "sweep, fit, register, advisor vs best schedule (a few minutes)")
    demo.add_argument("--dir", default="tracker-sched-demo",
                      help="folder for mlflow.db, artifacts and plots: new, empty or a previous "
                      "demo's (default: tracker-sched-demo)")
    demo.add_argument("--quick", action="store_true",
                      help="toy sizes, under a minute: checks the loop, shows nothing")
    demo.add_argument("--seeds", type=int, help="comparison seeds per arm (default 3; quick 1)")
    demo.add_argument("--workers", type=int, default=2, help="training processes (default 2)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _metric_map(args: argparse.Namespace) -> MetricMap:
    return MetricMap(
        train_loss=args.train_loss_key, lr=args.lr_key, val_metric=args.val_key,
        val_direction=args.val_direction,
    )


def _read(args: argparse.Namespace) -> SourceResult:
    mm = _metric_map(args)
    if args.source == "files":
        if not args.path:
            raise InputError("--source files needs --path SWEEP (a .jsonl file or a folder)")
        return read_sweep(args.path, mm)
    if args.source == "wandb-offline":
        from tracker_sched.sources.wandb_offline import WandbOfflineSource

        if not args.path:
            raise InputError("--source wandb-offline needs --path DIR (a wandb folder with "
                             "offline-run-* folders)")
        return WandbOfflineSource(args.path, mm, step_key=args.step_key).read()
    if args.source == "wandb":
        from tracker_sched.sources.wandb_api import WandbApiSource

        if not args.project:
            raise InputError("--source wandb needs --project ENTITY/PROJECT")
        filters = None
        if args.filter:
            try:
                filters = json.loads(args.filter)
            except json.JSONDecodeError as exc:
                raise InputError(f"--filter for wandb must be JSON: {exc}") from exc
        return WandbApiSource(args.project, sweep=args.sweep, filters=filters,
                              metric_map=mm, step_key=args.step_key).read()
    if args.source == "mlflow":
        from tracker_sched.sources.mlflow_source import MlflowSource

        if not args.project:
            raise InputError("--source mlflow needs --project EXPERIMENT")
        return MlflowSource(args.project, parent_run_id=args.sweep, filter=args.filter,
                            tracking_uri=args.tracking_uri, metric_map=mm).read()
    raise InputError(f"unknown source {args.source!r}")  # pragma: no cover - argparse checks


def _issue_table(issues: Sequence[RunIssue]) -> str:
    from tracker_sched.data.preflight import issue_table

    return issue_table(issues)


def _check(args: argparse.Namespace, result: SourceResult) -> Preflight:
    """The pre-training checks on what was read, with the budget and configuration flags."""
    from tracker_sched.budget import BudgetSpec
    from tracker_sched.data.preflight import preflight

    try:
        budget = BudgetSpec(steps=args.total_steps, key=args.total_steps_key)
    except ValidationError as exc:
        raise InputError(f"--total-steps must be a positive number: {exc.errors()[0]['msg']}"
                         ) from exc
    return preflight(result.runs, metric_map=_metric_map(args), budget=budget,
                     ignore_config_keys=args.ignore_config_key, source_issues=result.issues)


def _forecast_table(manifest: BundleManifest) -> str:
    """The fit report's forecast table; an accuracy-like metric is shown in points."""
    from tracker_sched.fit.report import format_forecast

    report = manifest.report
    assert report.holdout is not None
    is_acc = report.direction == "max" and 0 <= manifest.sweep.best_config_mean_final_val <= 1
    try:
        return format_forecast(report.holdout, val_scale=100 if is_acc else 1,
                               val_unit="points" if is_acc else "metric units")
    except (KeyError, IndexError, ValueError) as exc:  # an edited bundle.json: say so, go on
        return f"no forecast table: the bundle's fit report is incomplete ({exc!r})"


def _read_and_check(args: argparse.Namespace) -> tuple[SourceResult, Preflight]:
    """Read the sweep and run every check a fit runs before training: an unfittable sweep
    fails in seconds with every reason listed."""
    result = _read(args)
    where = args.path if args.source != "mlflow" else f"experiment {args.project}"
    print(f"read {len(result.runs)} runs from {args.source} {where}", file=sys.stderr)
    checked = _check(args, result)
    print("\n".join(checked.describe()), file=sys.stderr)
    checked.raise_for_problems()
    return result, checked


def cmd_fit(args: argparse.Namespace) -> int:
    import torch

    from tracker_sched.bundle.folder import MANIFEST
    from tracker_sched.fit.generative import FitConfig, fit_sweep
    from tracker_sched.model.latent import ModelConfig
    from tracker_sched.util.folders import check_target

    # Before reading or training: a target the save would refuse must not cost a whole fit.
    check_target(args.out, marker=MANIFEST, what="--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    base: dict[str, object] = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read --config {args.config}: {exc}") from exc
        if not isinstance(base, dict):
            raise InputError(f"--config {args.config} must hold a JSON object of FitConfig fields")
    if args.mode == "control":
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
    try:
        config = FitConfig.model_validate(base)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(f"invalid fit options: {errors}") from exc
    result, checked = _read_and_check(args)  # options first, then the sweep, then training
    mm = _metric_map(args)
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
    if report.holdout is not None:
        print(_forecast_table(bundle.manifest))
        if not args.no_plots:
            try:
                from tracker_sched.fit.forecast_plot import plot_fit_forecasts

                plot_fit_forecasts(out / "forecast.png", fitted, config.report_taus,
                                   config.window)
            except ImportError as exc:
                print(f"no plot: {exc}", file=sys.stderr)
    print(f"bundle written to {out}")
    if args.register:
        print(f"registered {_register(args, out, report)}")
    return 0


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
    try:
        config = ControlFitConfig.model_validate(base)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(f"invalid control fit options: {errors}") from exc
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


def _control_checks_text(checks: ControlChecks) -> str:
    lines = []
    if checks.ranking is not None and checks.ranking.mean is not None:
        lines.append(f"counterfactual ranking (shared context at tau "
                     f"{checks.ranking.context_tau:.2f}): mean Spearman {checks.ranking.mean:.2f}, "
                     f"worst {checks.ranking.worst:.2f}")
    lines.append("control planner: " + ("usable" if checks.usable else
                 "REFUSED (falls back to the warm-up plan): " + "; ".join(checks.flags)))
    return "\n".join(lines)


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


def cmd_validate(args: argparse.Namespace) -> int:
    """Every check ``fit`` runs before training; exit 1 when the sweep cannot be fitted."""
    result = _read(args)
    checked = _check(args, result)
    print("\n".join(checked.describe()))
    if checked.issues:
        print(_issue_table(checked.issues))
    if checked.problems:
        print("tracker-sched: error: this sweep cannot be fitted:\n"
              + "\n".join(f"  - {p.text}" for p in checked.problems), file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tracker_sched.sources.files import write_sweep

    result = _read(args)
    write_sweep(args.out, result.runs, meta={"exported_from": args.source})
    print(f"wrote {len(result.runs)} runs to {args.out}")
    if result.issues:
        print("not exported:\n" + _issue_table(result.issues))
    return 0


def _with_tracking_uri(args: argparse.Namespace, uri: str) -> str:
    """Point MLflow at ``--tracking-uri`` for an ``mlflow:`` bundle URI; returns the URI."""
    import os

    if getattr(args, "tracking_uri", None):
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    return uri


def read_history(path: str) -> list[Observation]:
    """A metrics file (CSV with a header, or JSON Lines) -> the run's observations, checked
    as a served request is (:func:`tracker_sched.advising.serving.observations_from_records`)."""
    import csv

    from tracker_sched.advising.serving import observations_from_records

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --history {path}: {exc}") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"--history {path} is empty")
    rows: list[dict[str, object]]
    if lines[0].lstrip().startswith("{"):
        try:
            rows = [json.loads(ln) for ln in lines]
        except json.JSONDecodeError as exc:
            raise InputError(f"--history {path}: line is not JSON ({exc})") from exc
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise InputError(f"--history {path}, row {n}: a JSON object per line, "
                                 f"like {{\"step\": 10, \"train_loss\": 0.5}}")
    else:
        rows = list(csv.DictReader(lines))
    for n, row in enumerate(rows, start=1):
        if row.get("step") in (None, ""):
            raise InputError(f"--history {path}, row {n}: needs an integer 'step'")
    try:
        return observations_from_records(rows)
    except InputError as exc:  # "observation N" is row N
        raise InputError(f"--history {path}: {exc} (an integer 'step' in [0, "
                         f"{MAX_STEPS:.0e}] and numbers, or empty cells)") from exc


def cmd_recommend(args: argparse.Namespace) -> int:
    from tracker_sched.advising.serving import RecommendRequest, answer
    from tracker_sched.planning.control import PlannerMode, make_planner
    from tracker_sched.stores import load_bundle

    observations = read_history(args.history)  # before the bundle: a bad file fails fast
    if args.step is not None and args.step > args.total_steps:
        raise InputError(f"--step {args.step} is past --total-steps {args.total_steps}")
    bundle = load_bundle(_with_tracking_uri(args, args.bundle))
    mode: PlannerMode = args.mode or (
        "control" if bundle.manifest.kind == "control_ode" else "generative")
    request = RecommendRequest(observations=observations, total_steps=args.total_steps,
                               step=args.step)
    # answer(), not recommend(): the warm-up rule of the Advisor and the served model.
    rec = answer(bundle, request, planner=make_planner(bundle, mode))
    print(_json(rec.model_dump(mode="json")))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tracker_sched.demo.report import format_comparison
    from tracker_sched.demo.run import DemoConfig, run_demo

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    make = DemoConfig.quick if args.quick else DemoConfig.full
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    cfg = make(args.dir, seeds=seeds, workers=args.workers)
    result = run_demo(cfg, progress=not args.no_progress, say=print)  # this module's print
    total = sum(result.stage_s.values())
    print("\n" + format_comparison(result))
    print("\nplots: " + ", ".join(str(p) for p in result.plots))
    print(f"done in {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s"
                                               for k, v in result.stage_s.items()) + ")")
    from tracker_sched.demo import runs_url

    print(f"see it all in MLflow:\n  mlflow ui --backend-store-uri {result.tracking_uri} "
          f"--host 127.0.0.1 --port 5000\nthen open the training runs at\n  "
          f"{runs_url(result.experiment_id)}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from tracker_sched.stores import load_bundle

    bundle = load_bundle(_with_tracking_uri(args, args.bundle))
    m = bundle.manifest
    if args.json:
        print(_json(m.model_dump(mode="json")))
        return 0
    s = m.sweep
    print(f"bundle {args.bundle}: schema {m.schema_version}, {m.kind}, {m.members} member(s), "
          f"created {m.created_at}")
    print(f"metrics: train_loss={m.metrics.train_loss} lr={m.metrics.lr} "
          f"val={m.metrics.val_metric} ({m.metrics.direction})")
    print(f"sweep: {s.runs_used} runs; best {escape(s.best_run_id)}; peak lr {s.best_peak_lr:.3g}; "
          f"lr explored {s.lr_min:.2e} .. {s.lr_max:.2e}")
    if m.report.holdout is not None:
        print(_forecast_table(m))
    if m.control:
        from tracker_sched.fit.checks import ControlChecks

        print(_control_checks_text(ControlChecks.model_validate(m.control)))
        if "confounding" in m.control:
            from tracker_sched.design.confounding import ConfoundingReport

            conf = ConfoundingReport.model_validate(m.control["confounding"])
            print(f"sweep design: {conf.summary()}")
    return 0


def cmd_suggest_runs(args: argparse.Namespace) -> int:
    from tracker_sched.design.suggest import suggest_for_sweep

    result = _read(args)
    made = suggest_for_sweep(result.runs, n=args.n, seed=args.seed, fmt=args.format,
                             metric_map=_metric_map(args), direction=args.val_direction,
                             program=args.program)
    report = made.report
    info = sys.stdout if args.out else sys.stderr
    print(report.summary(), file=info)
    for reason in report.reasons:
        print(f"  {reason}", file=info)
    if args.out:
        try:
            Path(args.out).write_text(made.text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write --out {args.out}: {exc}") from exc
        print(f"wrote {len(made.suggestions)} suggested runs ({args.format}) to {args.out}")
    else:
        print(made.text, end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from tracker_sched import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    last = logging.lastResort  # where library warnings go when nobody configured logging
    if last is not None and not any(isinstance(f, EscapingFilter) for f in last.filters):
        last.addFilter(EscapingFilter())
    handlers = {"fit": cmd_fit, "validate": cmd_validate, "export": cmd_export,
                "inspect": cmd_inspect, "recommend": cmd_recommend, "demo": cmd_demo,
                "suggest-runs": cmd_suggest_runs}
    try:
        return handlers[args.command](args)
    except TrackerSchedError as exc:
        # lines=True: a pre-training error lists every run on its own line; the run ids and
        # reasons in it were escaped field by field (preflight.issue_table).
        print(f"tracker-sched: error: {escape(exc, lines=True)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tracker-sched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

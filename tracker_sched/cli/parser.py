"""The command line's arguments: one parser, a subcommand per verb."""

from __future__ import annotations

import argparse
from typing import Any

from tracker_sched.budget import EPOCH_KEYS, STEP_KEYS
from tracker_sched.errors import InputError
from tracker_sched.limits import MAX_STEPS

SOURCES = ("files", "mlflow", "wandb", "wandb-offline")


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
                   f"step axis (default: {', '.join(STEP_KEYS)}, then epoch counts "
                   f"({', '.join(EPOCH_KEYS)}) x steps per epoch, else the last step of a "
                   "finished run)")
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
    fit.add_argument("--mode", choices=("auto", "generative", "control"), default="auto",
                     help="auto (default): fit the generative model, the control model when the "
                     "sweep's evidence could pick it, and decide from that evidence which "
                     "planner the bundle trusts: control, generative or the sweep's best "
                     "schedule (docs/planner-modes.md); generative: the paper's model only, lr "
                     "decoded; control: the lr as an input of the dynamics, a bootstrap "
                     "ensemble with lr-response checks (docs/control.md), --config then holds "
                     "ControlFitConfig fields")
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
    rec.add_argument("--mode", choices=("auto", "generative", "control", "best"),
                     default="auto",
                     help="planner mode (default auto: the bundle's own: an auto bundle's "
                     "fit-time decision, control for a control-mode bundle, else generative)")

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

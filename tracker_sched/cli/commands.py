"""The other subcommands: validate, export, recommend, demo, inspect, suggest-runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tracker_sched.cli.common import (
    _check,
    _control_checks_text,
    _decision_text,
    _forecast_table,
    _issue_table,
    _json,
    _metric_map,
    _read,
    _with_tracking_uri,
    print,
)
from tracker_sched.errors import InputError
from tracker_sched.limits import MAX_STEPS
from tracker_sched.util.term import escape

if TYPE_CHECKING:  # the bundle module imports torch: keep `--help` fast
    from tracker_sched.advising.serving import Observation


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
    mode: PlannerMode = args.mode or "auto"
    request = RecommendRequest(observations=observations, total_steps=args.total_steps,
                               step=args.step)
    # answer(), not recommend(): the warm-up rule of the Advisor and the served model.
    rec = answer(bundle, request, planner=make_planner(bundle, mode))
    print(_json(rec.model_dump(mode="json")))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tracker_sched.demo.report import format_comparison
    from tracker_sched.demo.results import DemoConfig
    from tracker_sched.demo.run import run_demo

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
    from tracker_sched.demo.view import runs_url

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
    print(_decision_text(m))
    if m.control:
        from tracker_sched.fit.checks import ControlChecks

        print(_control_checks_text(ControlChecks.model_validate(m.control)))
        if "confounding" in m.control:
            from tracker_sched.design.confounding import ConfoundingReport

            conf = ConfoundingReport.model_validate(m.control["confounding"])
            print(f"sweep design: {conf.summary()}")
    return 0


def cmd_suggest_runs(args: argparse.Namespace) -> int:
    from tracker_sched.design.export import suggest_for_sweep

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

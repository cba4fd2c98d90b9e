"""What every subcommand shares: the escaping ``print``, reading a sweep and the
pre-training checks, the report tables."""

from __future__ import annotations

import argparse
import builtins
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from tracker_sched.errors import InputError
from tracker_sched.schema import MetricMap, RunIssue
from tracker_sched.sources.base import SourceResult
from tracker_sched.sources.files import read_sweep
from tracker_sched.util.term import escape

if TYPE_CHECKING:  # the bundle module imports torch: keep `--help` fast
    from tracker_sched.bundle.manifest import BundleManifest
    from tracker_sched.data.preflight import Preflight
    from tracker_sched.fit.checks import ControlChecks


def print(*parts: object, file: TextIO | None = None, sep: str = " ", end: str = "\n") -> None:
    """Every line this module prints (it shadows the builtin on purpose, so that no output
    path is missed): run ids, names and reasons come from trackers, and their control and
    bidi characters are shown escaped, never sent to the terminal (tracker_sched.util.term)."""
    text = escape(sep.join(str(p) for p in parts), lines=True)
    builtins.print(text, file=file if file is not None else sys.stdout, end=end)


def _json(obj: Any) -> str:
    """JSON for the terminal: ASCII only, so bidi characters arrive as \\u escapes."""
    return json.dumps(obj, indent=2, ensure_ascii=True)


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
    """The fit report's forecast table and its verdict (stored, or computed now for a bundle
    written before the verdict existed); an accuracy-like metric is shown in points."""
    from tracker_sched.fit.report import format_forecast
    from tracker_sched.fit.trust import format_trust, trust_of

    report = manifest.report
    assert report.holdout is not None
    is_acc = report.direction == "max" and 0 <= manifest.sweep.best_config_mean_final_val <= 1
    try:
        table = format_forecast(report.holdout, val_scale=100 if is_acc else 1,
                                val_unit="points" if is_acc else "metric units")
    except (KeyError, IndexError, ValueError) as exc:  # an edited bundle.json: say so, go on
        return f"no forecast table: the bundle's fit report is incomplete ({exc!r})"
    verdict = format_trust(trust_of(report), val_scale=100 if is_acc else 1,
                           val_unit="points" if is_acc else "")
    if report.forecast_trust is None:
        verdict += "\n  (computed now from the stored table: the bundle predates the verdict)"
    return table + "\n\n" + verdict


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


def _control_checks_text(checks: ControlChecks) -> str:
    lines = []
    if checks.ranking is not None and checks.ranking.mean is not None:
        lines.append(f"counterfactual ranking (shared context at tau "
                     f"{checks.ranking.context_tau:.2f}): mean Spearman {checks.ranking.mean:.2f}, "
                     f"worst {checks.ranking.worst:.2f}")
    lines.append("control planner: " + ("usable" if checks.usable else
                 "REFUSED (falls back to the warm-up plan): " + "; ".join(checks.flags)))
    return "\n".join(lines)


def _decision_text(manifest: BundleManifest) -> str:
    """The planner a bundle trusts, why, and the numbers behind it (fit report, inspect)."""
    d = manifest.planner
    if d is None:
        mode = "control" if manifest.kind == "control_ode" else "generative"
        return (f"planner mode: {mode} (the bundle's kind; fitted without --mode auto, so no "
                "auto decision is stored)")
    ev = d.evidence
    lines = [f"planner mode (auto): {d.mode}", f"  why: {d.reason}"]
    skill = ev.get("forecast_skill")
    lines.append(f"  evidence: forecast wins {ev.get('forecast_wins')}/"
                 f"{ev.get('forecast_comparisons')} comparisons"
                 + (f" ({skill:.0%})" if isinstance(skill, float) else "")
                 + f", forecast trust {ev.get('forecast_trust')}; control "
                 + ("fitted, flags " + str(len(ev.get("control_flags") or [])) + ", ranking "
                    f"mean {_num(ev.get('ranking_mean'))} worst {_num(ev.get('ranking_worst'))}"
                    if ev.get("control_fitted") else "not fitted (the rule could not pick it)")
                 + f"; learnable design {ev.get('learnable')}")
    rule = d.rule
    lines.append(f"  rule: control ranking mean >= {rule.get('control_min_ranking_mean')}, "
                 f"worst >= {rule.get('control_min_ranking_worst')}; generative skill >= "
                 f"{rule.get('generative_min_skill')}; prefer {rule.get('prefer')} "
                 "(benchmarks/results/auto_rule.json)")
    if d.best_schedule is not None:
        b = d.best_schedule
        lines.append(f"  best schedule: run {b.run_id}, {len(b.tau)} points (within "
                     f"{b.tolerance_dex:g} dex of the logged lr)")
    return "\n".join(lines)


def _num(x: object) -> str:
    return f"{x:.2f}" if isinstance(x, float) else "-"


def _with_tracking_uri(args: argparse.Namespace, uri: str) -> str:
    """Point MLflow at ``--tracking-uri`` for an ``mlflow:`` bundle URI; returns the URI."""
    import os

    if getattr(args, "tracking_uri", None):
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    return uri

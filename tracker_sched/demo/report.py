"""The demo's report: the comparison table, the plots and ``comparison.json``.

Split from :mod:`tracker_sched.demo.run`, which runs the stages.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_sched.demo.results import ArmRun, DemoConfig, DemoResult

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def comparison_rows(runs: Sequence[ArmRun]) -> list[dict[str, Any]]:
    """Per seed: both arms' final val and test accuracy and the paired difference."""
    by = {(r.arm, r.seed): r for r in runs}
    rows = []
    for seed in sorted({r.seed for r in runs}):
        p, a = by.get(("parametric", seed)), by.get(("advisor", seed))
        if p is None or a is None:
            continue
        rows.append({"seed": seed, "parametric_val": p.final_val, "advisor_val": a.final_val,
                     "parametric_test": p.final_test, "advisor_test": a.final_test,
                     "diff_val": a.final_val - p.final_val,
                     "diff_test": a.final_test - p.final_test})
    return rows


def format_comparison(result: DemoResult) -> str:
    """The comparison table, in accuracy points, with what it can and cannot say."""
    rows = comparison_rows(result.runs)
    head = (f"{'seed':>6}  {'val: best sched':>15} {'advisor':>8} {'diff':>6}   "
            f"{'test: best sched':>16} {'advisor':>8} {'diff':>6}")
    lines = [f"best parametric schedule: {result.best_schedule} at peak lr "
             f"{result.best_peak_lr:g}; advisor: {result.model_uri}", head]

    def fmt(label: str, r: dict[str, float]) -> str:
        return (f"{label:>6}  {100 * r['parametric_val']:>15.2f} {100 * r['advisor_val']:>8.2f} "
                f"{100 * r['diff_val']:>+6.2f}   {100 * r['parametric_test']:>16.2f} "
                f"{100 * r['advisor_test']:>8.2f} {100 * r['diff_test']:>+6.2f}")

    for row in rows:
        lines.append(fmt(str(row["seed"]), row))
    if rows:
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k != "seed"}
        lines.append(fmt("mean", mean))
    statuses = [f"{r.seed}: {r.status}" for r in result.runs if r.arm == "advisor"]
    lines.append(textwrap.fill(
        "Advisor plan status by seed (planned = it made its plan; warmup or fallback = it "
        "kept the sweep's best run's schedule): " + ", ".join(statuses) + ".", width=100))
    lines.append(textwrap.fill(
        f"Accuracy in points; diff = advisor - best schedule on the same seed. {len(rows)} "
        "seed(s) make this a demo of the loop, not a benchmark. The measured comparison "
        "(40 seeds, confidence intervals) is in docs/benchmarks.md and docs/planner.md.",
        width=100))
    return "\n".join(lines)


def plot_runs(path: Path, runs: Sequence[ArmRun], what: str, best: str) -> Path:
    """One line per comparison run (both arms, every seed): its lr or its val accuracy.

    The accuracy is drawn in the runs' own units (``val_acc``, a fraction), and each
    run's final value is in the legend and marked at the end of its line.
    """
    from tracker_sched.fit.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    colours = {"parametric": "tab:blue", "advisor": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r.seed for r in runs})
    for r in sorted(runs, key=lambda r: (r.arm != "parametric", r.seed)):
        arm = best if r.arm == "parametric" else "advisor"
        ls = styles[seeds.index(r.seed) % len(styles)]
        colour = colours.get(r.arm, "grey")
        if what == "lr":
            label = f"{arm}, seed {r.seed}" if len(seeds) > 1 else arm
            ax.plot(r.steps, r.lr, color=colour, ls=ls, lw=1.2, alpha=0.85, label=label)
            continue
        label = f"{arm}, seed {r.seed}: final val_acc {r.val[-1]:.3f}"
        ax.plot(r.steps, r.val, color=colour, ls=ls, lw=1.2, alpha=0.85, label=label)
        ax.plot([r.steps[-1]], [r.val[-1]], "o", color=colour, ms=4)
    if what == "lr":
        ax.set_yscale("log")
        ax.set_ylabel("learning rate")
        ax.set_title("Schedules on the comparison seeds")
    else:
        ax.set_ylabel("val_acc (fraction, as logged)")
        ax.set_ylim(bottom=max(0.0, min(min(r.val) for r in runs) - 0.05))
        ax.set_title("Validation accuracy on the comparison seeds (final values in the legend)")
    ax.set_xlabel("step")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(cfg: DemoConfig, result: DemoResult, bundle_dir: Path,
                 client: MlflowClient) -> None:
    import shutil

    plots = cfg.folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    best = f"sweep's best: {result.best_schedule}, peak lr {result.best_peak_lr:g}"
    result.plots = [plot_runs(plots / "schedules.png", result.runs, "lr", best),
                    plot_runs(plots / "accuracy.png", result.runs, "val", best)]
    if (bundle_dir / "forecast.png").is_file():
        result.plots.append(Path(shutil.copy2(bundle_dir / "forecast.png",
                                              plots / "forecast.png")))
    summary = plots / "comparison.json"
    summary.write_text(json.dumps({
        "best_schedule": result.best_schedule, "best_peak_lr": result.best_peak_lr,
        "model_uri": result.model_uri, "rows": comparison_rows(result.runs),
        "runs": [{"arm": r.arm, "seed": r.seed, "run_id": r.run_id, "final_val": r.final_val,
                  "final_test": r.final_test, "wall_s": round(r.wall_s, 2),
                  "advisor_status": r.status} for r in result.runs],
        "stage_s": result.stage_s}, indent=2))
    for run_id in (result.sweep_run_id, result.compare_run_id):
        for path in [*result.plots, summary]:
            client.log_artifact(run_id, str(path), "demo")

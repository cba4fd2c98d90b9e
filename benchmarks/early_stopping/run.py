"""``python -m benchmarks.early_stopping``: compute against regret, per stopping rule.

1. Per task, fit a bundle (``sweeps.FIT``) on one sweep and build the replays of two other
   sweeps: the design block and the confirmation block. Tasks: the synthetic ones and the
   MNIST-1D CNN fixture (``sweeps``), and the multi-task suite's (``suite_sweeps``: real
   runs trained by the suite's tasks, cached under ``--runs-dir``).
2. Design block: every tracker-sched setting (threshold x patience x margin) on every
   ordering; the chosen setting is the cheapest (median compute over tasks) whose regret is
   within the goal (0.1 point) in at least 95% of orderings on every design task.
3. Confirmation block, fresh orderings: every arm, the chosen setting and its neighbours in
   threshold. Reported: compute fraction and regret, median and 95th percentile over
   orderings, the share of orderings within 0.1 point, and the two goals, met or missed.

Writes ``benchmarks/results/early_stopping.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.early_stopping import arms
from benchmarks.early_stopping.fits import ReadyJob, pool_map, ready
from benchmarks.early_stopping.suite_sweeps import RUNS_DIR, SUITE_TASKS, suite_task
from benchmarks.early_stopping.sweeps import (
    FIT,
    SYN_TASKS,
    Replay,
    mnist_sweeps,
    tasks,
)
from tracker_sched.model.stop_odds import StopRule

RESULTS = Path(__file__).resolve().parents[1] / "results"
GOAL_REGRET = 0.1  # points
GOAL_SHARE = 0.95
THRESHOLDS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
PATIENCES = (1, 2, 3)
MARGINS = (0.0, 1.0)  # in units of the goal's 0.1 point (see _rule)
ALL_TASKS = (*(t.name for t in SYN_TASKS), "mnist1d-cnn", *SUITE_TASKS)
WANDB = {"wandb-hyperband": (3, 3), "wandb-hyperband-patient": (9, 2)}


def _rule(rep: Replay, threshold: float, patience: int, margin: float) -> StopRule:
    """A rule for this replay; ``margin`` in units of the goal's regret (0.1 point)."""
    best = float(rep.final.max() if rep.direction == "max" else rep.final.min())
    return StopRule(threshold=threshold, patience=patience,
                    margin=margin * GOAL_REGRET / rep.points(best))


def evaluate(rep: Replay, orders: np.ndarray, arm: Callable[[Replay, np.ndarray],
             arms.Outcome]) -> dict[str, Any]:
    scores = np.asarray([arms.score(rep, arm(rep, o)) for o in orders])
    compute, regret = scores[:, 0], scores[:, 1]
    return {"compute_median": float(np.median(compute)),
            "compute_p95": float(np.percentile(compute, 95)),
            "regret_median": float(np.median(regret)),
            "regret_p95": float(np.percentile(regret, 95)),
            "within_goal": float(np.mean(regret <= GOAL_REGRET + 1e-12)),
            "orderings": len(orders)}


def orderings(n_runs: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_runs) for _ in range(count)])


def ts_arm(threshold: float, patience: int, margin: float) -> Callable[..., arms.Outcome]:
    return lambda rep, o: arms.tracker_sched_arm(rep, o, _rule(rep, threshold, patience, margin))


def baseline_arms(total_steps: int) -> dict[str, Callable[..., arms.Outcome]]:
    out: dict[str, Callable[..., arms.Outcome]] = {"none": arms.none_arm}
    for name, make in arms.optuna_pruners(total_steps).items():
        out[name] = lambda rep, o, make=make: arms.optuna_arm(rep, o, make)
    for name, (min_iter, eta) in WANDB.items():
        out[name] = lambda rep, o, m=min_iter, e=eta: arms.wandb_hyperband_arm(rep, o, m, e)
    return out


def build(names: Sequence[str], cache: Path | None = None, runs_dir: Path = RUNS_DIR,
          workers: int = 1) -> tuple[dict[str, Replay], dict[str, Replay], dict[str, Any]]:
    """Fit (or load) each task's bundle and build its design and confirmation replays,
    ``workers`` bundles at a time.

    Returns:
        The design and confirmation replays by task, and per bundle the seconds it took and
        whether it was fitted here (else loaded from ``cache`` and recalibrated).
    """
    syn = {t.name: t for t in tasks()}
    jobs: list[ReadyJob] = []
    where = str(cache) if cache is not None else None
    for name in names:
        if name == "mnist1d-cnn":
            by_seed = mnist_sweeps()
            jobs += [(name, "mnist1d-cnn-seed0", by_seed[0], {"design": by_seed[1]}, where),
                     (name, "mnist1d-cnn-seed1", by_seed[1], {"confirm": by_seed[0]}, where)]
            continue
        task = syn[name] if name in syn else suite_task(name, runs_dir, workers)
        jobs.append((name, name, task.fit(), {"design": task.design(),
                                              "confirm": task.confirm()}, where))
    blocks: dict[str, dict[str, Replay]] = {"design": {}, "confirm": {}}
    bundles: dict[str, Any] = {}
    for job, (key, reps, seconds, fitted) in zip(jobs, pool_map(ready, jobs, workers),
                                                 strict=True):
        bundles[key] = {"seconds": seconds, "fitted": fitted}
        for block, rep in reps.items():
            blocks[block][job[0]] = rep
    return ({n: blocks["design"][n] for n in names}, {n: blocks["confirm"][n] for n in names},
            bundles)


SETTINGS = tuple(itertools.product(THRESHOLDS, PATIENCES, MARGINS))


def _design_task(job: tuple[int, Replay, int]) -> list[dict[str, Any]]:
    """Every setting on one design task's orderings (seeded by its index)."""
    i, rep, count = job
    orders = orderings(rep.runs, count, 1000 + i)
    return [evaluate(rep, orders, ts_arm(thr, pat, mar)) for thr, pat, mar in SETTINGS]


def choose(design: dict[str, Replay], count: int, workers: int = 1) -> tuple[
        tuple[float, int, float], list[dict[str, Any]]]:
    jobs = [(i, rep, count) for i, rep in enumerate(design.values())]
    per_task = dict(zip(design, pool_map(_design_task, jobs, workers), strict=True))
    rows: list[dict[str, Any]] = []
    for k, (thr, pat, mar) in enumerate(SETTINGS):
        per = {name: res[k] for name, res in per_task.items()}
        rows.append({"threshold": thr, "patience": pat, "margin_goal_units": mar,
                     "tasks": per,
                     "ok": all(r["within_goal"] >= GOAL_SHARE for r in per.values()),
                     "compute": float(np.median([r["compute_median"] for r in per.values()]))})
    ok = [r for r in rows if r["ok"]]
    pick = min(ok, key=lambda r: r["compute"]) if ok else min(
        rows, key=lambda r: (-min(t["within_goal"] for t in r["tasks"].values()), r["compute"]))
    return (pick["threshold"], pick["patience"], pick["margin_goal_units"]), rows


def _confirm_task(job: tuple[int, Replay, int, list[float], int, float]) -> dict[str, Any]:
    """Every arm on one confirmation task's fresh orderings (seeded by its index)."""
    i, rep, count, thresholds, pat, mar = job
    orders = orderings(rep.runs, count, 2000 + i)
    row: dict[str, Any] = {f"tracker-sched@{t:g}": evaluate(rep, orders, ts_arm(t, pat, mar))
                           for t in thresholds}
    for arm_name, arm in baseline_arms(rep.total_steps).items():
        row[arm_name] = evaluate(rep, orders, arm)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orderings", type=int, default=60, help="orderings per block and task")
    p.add_argument("--quick", action="store_true", help="one task (syn-acc), for a smoke run")
    p.add_argument("--tasks", nargs="+", default=list(ALL_TASKS), choices=ALL_TASKS,
                   metavar="TASK", help=f"tasks (default: all: {', '.join(ALL_TASKS)})")
    p.add_argument("--workers", type=int, default=1,
                   help="processes: training suite runs, fitting bundles (with --cache), "
                   "replaying tasks")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                   help="the suite runs' cache (a rerun trains nothing twice)")
    p.add_argument("--out", type=Path, default=RESULTS / "early_stopping.json")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep fitted bundles here and reuse them (same fit config; "
                   "recalibrated with the current code)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    names = ["syn-acc"] if args.quick else args.tasks
    design, confirm, fit_s = build(names, args.cache, args.runs_dir, args.workers)
    (thr, pat, mar), design_rows = choose(design, args.orderings, args.workers)
    print(f"design block: chose threshold {thr}, patience {pat}, margin {mar} x 0.1 point",
          flush=True)
    neighbours = sorted({t for t in THRESHOLDS if t in (thr,) or abs(
        THRESHOLDS.index(t) - THRESHOLDS.index(thr)) == 1})
    jobs = [(i, rep, args.orderings, neighbours, pat, mar)
            for i, rep in enumerate(confirm.values())]
    results: dict[str, dict[str, Any]] = dict(zip(
        confirm, pool_map(_confirm_task, jobs, args.workers), strict=True))
    for name, row in results.items():
        print(f"confirmation {name}:", flush=True)
        for arm_name, r in row.items():
            print(f"  {arm_name:<26} compute {r['compute_median']:.3f} (p95 "
                  f"{r['compute_p95']:.3f})  regret {r['regret_median']:.3f} (p95 "
                  f"{r['regret_p95']:.3f}) pt  within 0.1 pt {r['within_goal']:.0%}", flush=True)
    goals = _goals(results, f"tracker-sched@{thr:g}")
    report = {"command": "python -m benchmarks.early_stopping " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "fit_config": FIT.model_dump(mode="json"), "bundles": fit_s,
              "goal": {"regret_points": GOAL_REGRET, "share": GOAL_SHARE},
              "chosen": {"threshold": thr, "patience": pat, "margin_goal_units": mar},
              "design": design_rows, "confirmation": results, "goals": goals,
              "wall_s": time.perf_counter() - t0,
              "tasks": {n: {"runs": r.runs, "total_steps": r.total_steps,
                            "direction": r.direction} for n, r in confirm.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    _plot(results, args.out.with_suffix(".png"))
    print(json.dumps(goals, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {report['wall_s']:.0f} s")
    return 0


def _goals(results: dict[str, dict[str, Any]], ours: str) -> dict[str, Any]:
    """Goal 1: within 0.1 point in >= 95% of orderings at <= 1/3 of the compute. Goal 2: less
    compute than every Optuna/W&B rule that reaches the same regret share, per task."""
    out: dict[str, Any] = {}
    for task, row in results.items():
        mine = row[ours]
        rivals = {k: v for k, v in row.items() if k.startswith(("optuna", "wandb"))}
        as_good = {k: v for k, v in rivals.items() if v["within_goal"] >= mine["within_goal"]}
        cheapest = min(as_good.items(), key=lambda kv: kv[1]["compute_median"], default=None)
        out[task] = {
            "goal1_met": mine["within_goal"] >= GOAL_SHARE and mine["compute_median"] <= 1 / 3,
            "within_goal": mine["within_goal"], "compute_median": mine["compute_median"],
            "cheapest_rival_as_safe": None if cheapest is None else {
                "arm": cheapest[0], "compute_median": cheapest[1]["compute_median"],
                "within_goal": cheapest[1]["within_goal"]},
            "goal2_met": cheapest is None or mine["compute_median"] < cheapest[1][
                "compute_median"],
        }
    return out


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    for ax, (task, row) in zip(axes.flat, results.items(), strict=False):
        for arm, r in row.items():
            style = ("o", "C3") if arm.startswith("tracker") else (
                ("s", "C0") if arm.startswith("optuna") else (("^", "C2") if arm.startswith(
                    "wandb") else ("x", "k")))
            ax.errorbar(r["compute_median"], r["regret_median"],
                        yerr=[[0], [max(0.0, r["regret_p95"] - r["regret_median"])]],
                        fmt=style[0], color=style[1], capsize=2)
            ax.annotate(arm.replace("tracker-sched", "ts").replace("optuna-", "o-"),
                        (r["compute_median"], r["regret_median"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.axhline(GOAL_REGRET, color="grey", lw=0.6, ls="--")
        ax.axvline(1 / 3, color="grey", lw=0.6, ls=":")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("compute (fraction of steps), median")
        ax.set_ylabel("regret (points): median, bar to p95")
        ax.set_yscale("symlog", linthresh=0.05)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["main"]

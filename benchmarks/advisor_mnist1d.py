"""Quality benchmark: the advisor against the sweep's best, a refined grid and schedule-free.

    python -m benchmarks.advisor_mnist1d [--bundle DIR] [--seeds 40] [--workers 2]

Protocol (issue 3): the MNIST-1D CNN sweep of ``benchmarks.fit_mnist1d`` (seeds 0, 1),
a bundle fitted on it with the default ``FitConfig``, and arms trained on the SAME new
seeds 100, 101, ...:

(a)  the sweep's best parametric schedule (best configuration by mean final val acc);
(a') a refined grid: the best configuration's family at peak lrs between the sweep's
     grid points (1/6-decade steps), picked by mean final VALIDATION accuracy on the
     sweep's own seeds 0 and 1; its extra runs are reported as its cost;
(b)  the advisor (default PlannerConfig, replanning every 10 log points);
(c)  schedule-free AdamW at a constant lr picked over the sweep's peak grid on the
     sweep's seeds by validation accuracy.

Every choice uses validation accuracy on the sweep's seeds; nothing was tuned on the
new seeds. The first half of the new seeds is the validation block, the second half
the confirmation block, reported separately; test accuracy is only reported.
Writes ``benchmarks/results/advisor_mnist1d.json`` and a PNG of schedules and curves.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.fit_mnist1d import SWEEP_SEEDS, _ensure_sweep
from benchmarks.mnist1d_task import train_run
from tracker_sched.sources.files import read_sweep

FIRST_SEED = 100
# Two-sided 97.5% t quantiles, for 95% intervals of paired differences.
T975 = {9: 2.262, 19: 2.093, 29: 2.045, 39: 2.023, 59: 2.001}

_BUNDLE: Any = None


_ADVISOR_KW: dict[str, Any] = {}


def _init(bundle_dir: str, advisor_kw: dict[str, Any]) -> None:
    import torch

    from tracker_sched.bundle import Bundle

    global _BUNDLE, _ADVISOR_KW
    torch.set_num_threads(1)
    from tracker_sched.planner import PlannerConfig

    _BUNDLE = Bundle.load(bundle_dir)
    kw = dict(advisor_kw)
    kw["config"] = PlannerConfig(**kw.pop("planner", {}))
    _ADVISOR_KW = kw


def _job(job: dict[str, Any]) -> dict[str, Any]:
    arm, seed = job["arm"], job["seed"]
    t0 = time.perf_counter()
    if arm == "advisor":
        from tracker_sched.advisor import Advisor

        total = 840
        adv = Advisor(_BUNDLE, total_steps=total, **_ADVISOR_KW)
        spent = [0.0]

        def lr_fn(k: int) -> float:
            t = time.perf_counter()
            out = adv.lr(k)
            spent[0] += time.perf_counter() - t
            return out

        def observer(step: int, loss: float, val: float, lr: float) -> None:
            t = time.perf_counter()
            adv.observe(step, train_loss=loss, val_metric=val, lr=lr)
            spent[0] += time.perf_counter() - t

        res = train_run(schedule="advisor", peak_lr=job["peak"], seed=seed, lr_fn=lr_fn,
                        observer=observer)
        extra = {"advisor_s": spent[0], "final_status": adv.plan.status,
                 "final_reason": adv.plan.reason}
    else:
        res = train_run(schedule=job["schedule"], peak_lr=job["peak"], seed=seed,
                        optimizer=job.get("optimizer", "adamw"))
        extra = {}
    rec = res.record
    assert rec.lr is not None and rec.val_metric is not None
    return {
        **job, **extra,
        "val": res.final_val_acc, "test": res.final_test_acc, "state": rec.state,
        "wall_s": time.perf_counter() - t0,
        "lr_steps": rec.lr.step[::6], "lr": rec.lr.value[::6],
        "val_curve": rec.val_metric.value[::6],
    }


def _run_all(jobs: list[dict[str, Any]], bundle_dir: str, workers: int,
             desc: str, advisor_kw: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    out: list[dict[str, Any]] = []
    with ctx.Pool(workers, initializer=_init, initargs=(bundle_dir, advisor_kw or {})) as pool:
        for r in tqdm(pool.imap_unordered(_job, jobs), total=len(jobs), desc=desc,
                      disable=not sys.stderr.isatty()):
            out.append(r)
        pool.close()
        pool.join()
    return out


def _paired(diffs: list[float]) -> dict[str, float]:
    n = len(diffs)
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    t = T975.get(n - 1, 1.96)
    half = t * sd / math.sqrt(n) if n > 1 else math.nan
    return {
        "n": n, "mean": mean, "lo": mean - half, "hi": mean + half,
        "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs), "worst": min(diffs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--bundle", type=Path, help="default: fit the sweep (cached in runs/)")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per block")
    ap.add_argument("--validation-first-seed", type=int, default=FIRST_SEED)
    ap.add_argument("--confirmation-first-seed", type=int, default=140,
                    help="seeds 120-139 were spent confirming the first planner version; "
                    "see docs/planner.md")
    ap.add_argument("--validation-only", action="store_true",
                    help="run the validation block alone (for choosing settings)")
    ap.add_argument("--replan-every", type=int, default=10)
    ap.add_argument("--max-replans", type=int, default=1,
                    help="the Advisor's default: one open-loop plan; 0 means no limit")
    ap.add_argument("--planner", default="{}",
                    help='JSON PlannerConfig fields, e.g. \'{"lr_cap": 1.0}\'')
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ns = ap.parse_args(argv)
    ns.out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    sweep_path = ns.runs_dir / "cnn_sweep.jsonl"
    _ensure_sweep(sweep_path, SWEEP_SEEDS, False, ns.workers)
    sweep = read_sweep(sweep_path).runs
    bundle_dir = ns.bundle or ns.runs_dir / "bundle_cnn_default"
    if not (bundle_dir / "bundle.json").exists():
        from tracker_sched.fit import FitConfig, fit_sweep

        print(f"fitting the sweep with the default FitConfig -> {bundle_dir}")
        fit_sweep(sweep, FitConfig(), workers=ns.workers, progress=False).bundle.save(bundle_dir)
    from tracker_sched.bundle import Bundle

    summary = Bundle.load(bundle_dir).manifest.sweep
    best = summary.best_config
    family, best_peak = str(best["schedule"]), float(best["peak_lr"])  # type: ignore[arg-type]
    peaks = sorted({float(r.config["peak_lr"]) for r in sweep})  # type: ignore[arg-type]
    print(f"(a) sweep best: {family} at {best_peak:g} "
          f"(mean final val {summary.best_config_mean_final_val:.4f})")

    # (a') refined grid and (c) schedule-free: chosen on validation with the sweep's seeds.
    refined = [best_peak * 10 ** (k / 6) for k in (-2, -1, 1, 2)]
    refined = [p for p in refined if peaks[0] <= p <= peaks[-1]]
    select_jobs = [{"arm": "refine", "schedule": family, "peak": p, "seed": s}
                   for p in refined for s in SWEEP_SEEDS]
    select_jobs += [{"arm": "sf-select", "schedule": "constant", "peak": p, "seed": s,
                     "optimizer": "schedulefree"} for p in peaks for s in SWEEP_SEEDS]
    sel = _run_all(select_jobs, str(bundle_dir), ns.workers, "selection runs")
    sweep_val = {p: statistics.fmean(
        r.val_metric.value[-1] for r in sweep  # type: ignore[union-attr]
        if r.config.get("schedule") == family and float(r.config["peak_lr"]) == p  # type: ignore[arg-type]
    ) for p in peaks}

    def mean_val(arm: str, p: float) -> float:
        return statistics.fmean(r["val"] for r in sel if r["arm"] == arm and r["peak"] == p)

    refine_val = {best_peak: sweep_val[best_peak], **{p: mean_val("refine", p) for p in refined}}
    refined_peak = max(refine_val, key=lambda p: refine_val[p])
    sf_val = {p: mean_val("sf-select", p) for p in peaks}
    sf_peak = max(sf_val, key=lambda p: sf_val[p])
    print("(a') refined grid, mean final val on seeds 0,1: "
          + ", ".join(f"{p:.3g}: {v:.4f}" for p, v in sorted(refine_val.items()))
          + f" -> {refined_peak:.3g} ({2 * len(refined)} extra runs)")
    print("(c) schedule-free lr, mean final val on seeds 0,1: "
          + ", ".join(f"{p:.0e}: {v:.4f}" for p, v in sorted(sf_val.items()))
          + f" -> {sf_peak:.0e} ({2 * len(peaks)} runs)")

    val_seeds = list(range(ns.validation_first_seed, ns.validation_first_seed + ns.seeds))
    conf_seeds = [] if ns.validation_only else list(
        range(ns.confirmation_first_seed, ns.confirmation_first_seed + ns.seeds))
    seeds = val_seeds + conf_seeds
    advisor_kw = {"replan_every": ns.replan_every, "max_replans": ns.max_replans or None,
                  "planner": json.loads(ns.planner)}
    jobs: list[dict[str, Any]] = []
    for s in seeds:
        jobs += [
            {"arm": "a", "schedule": family, "peak": best_peak, "seed": s},
            {"arm": "a'", "schedule": family, "peak": refined_peak, "seed": s},
            {"arm": "b", "schedule": "advisor", "peak": best_peak, "seed": s},
            {"arm": "c", "schedule": "constant", "peak": sf_peak, "seed": s,
             "optimizer": "schedulefree"},
        ]
    # The advisor's arm is named "b" for the report but runs the "advisor" job.
    for j in jobs:
        if j["arm"] == "b":
            j["arm"] = "advisor"
    results = _run_all(jobs, str(bundle_dir), ns.workers, "benchmark runs", advisor_kw)
    for r in results:
        if r["arm"] == "advisor":
            r["arm"] = "b"
    by = {(r["arm"], r["seed"]): r for r in results}

    arms = ["a", "a'", "b", "c"]
    blocks = {"validation block": val_seeds}
    if conf_seeds:
        blocks.update({"confirmation block": conf_seeds, "all seeds": seeds})
    report: dict[str, Any] = {"blocks": {}}
    for name, bs in blocks.items():
        row: dict[str, Any] = {"arms": {}, "paired": {}}
        print(f"\n== {name}: seeds {bs[0]}..{bs[-1]} ({len(bs)}), final TEST accuracy (points)")
        for arm in arms:
            tests = [100 * by[(arm, s)]["test"] for s in bs]
            row["arms"][arm] = {"mean": statistics.fmean(tests), "std": statistics.stdev(tests),
                                "diverged": sum(by[(arm, s)]["state"] != "finished" for s in bs)}
            print(f"  ({arm:<2}) mean {row['arms'][arm]['mean']:.2f}  std "
                  f"{row['arms'][arm]['std']:.2f}  diverged {row['arms'][arm]['diverged']}")
        for other in ("a", "a'", "c"):
            d = _paired([100 * (by[("b", s)]["test"] - by[(other, s)]["test"]) for s in bs])
            row["paired"][f"b-{other}"] = d
            print(f"  (b)-({other}): {d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]  "
                  f"w/t/l {d['wins']}/{d['ties']}/{d['losses']}  worst {d['worst']:+.2f}")
        report["blocks"][name] = row

    adv = [by[("b", s)] for s in seeds]
    share = sum(r["advisor_s"] for r in adv) / sum(r["wall_s"] for r in adv)
    statuses: dict[str, int] = {}
    for r in adv:
        statuses[r["final_status"]] = statuses.get(r["final_status"], 0) + 1
    print(f"\nadvisor overhead: {100 * share:.1f}% of the advised runs' wall time "
          f"(goal <= 3%); final plan status {statuses}")
    last = "confirmation block" if conf_seeds else "validation block"
    conf = report["blocks"][last]["paired"]
    goal_a = conf["b-a"]["lo"] > 0 and conf["b-a"]["mean"] >= 0.5
    goal_ap = conf["b-a'"]["mean"] >= 0
    diverged = sum(by[("b", s)]["state"] != "finished" for s in seeds)
    print(f"goals on the {last}: (b)-(a) >= +0.5 with interval above 0: "
          f"{'ok' if goal_a else 'MISS'}; (b) no worse than (a'): {'ok' if goal_ap else 'MISS'}; "
          f"no diverged advised run: {'ok' if diverged == 0 else 'MISS'}; overhead <= 3%: "
          f"{'ok' if share <= 0.03 else 'MISS'}")

    report.update({
        "command": "python -m benchmarks.advisor_mnist1d " + " ".join(argv or sys.argv[1:]),
        "best": {"schedule": family, "peak_lr": best_peak},
        "refined": {"candidates": refine_val, "chosen": refined_peak,
                    "extra_runs": 2 * len(refined)},
        "schedulefree": {"candidates": sf_val, "chosen": sf_peak, "selection_runs":
                         2 * len(peaks)},
        "advisor_overhead_share": share, "advisor_final_status": statuses,
        "seeds": seeds, "advisor": advisor_kw,
        "planner_overrides": json.loads(ns.planner), "wall_s": time.perf_counter() - t_start,
        "runs": [{k: v for k, v in r.items() if k not in ("lr", "lr_steps", "val_curve")}
                 for r in results],
    })
    stem = "advisor_mnist1d" + ("_validation" if ns.validation_only else "")
    (ns.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {ns.out_dir / f'{stem}.json'}")
    _plot(ns.out_dir / f"{stem}.png", by, seeds)
    return 0


def _plot(path: Path, by: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = {"a": "tab:blue", "a'": "tab:green", "b": "tab:red", "c": "tab:purple"}
    labels = {"a": "(a) sweep best", "a'": "(a') refined grid", "b": "(b) advisor",
              "c": "(c) schedule-free"}
    for arm in ("a", "a'", "b"):
        for i, s in enumerate(seeds[:6]):
            r = by[(arm, s)]
            ax1.plot(r["lr_steps"], r["lr"], color=colours[arm], alpha=0.7, lw=1,
                     label=labels[arm] if i == 0 else None)
    ax1.set_yscale("log")
    ax1.set(xlabel="step", ylabel="learning rate", title="schedules (first 6 seeds)")
    ax1.legend(fontsize=8)
    for arm in ("a", "a'", "b", "c"):
        curves = np.array([by[(arm, s)]["val_curve"] for s in seeds])
        steps = by[(arm, seeds[0])]["lr_steps"]
        ax2.plot(steps, 100 * curves.mean(axis=0), color=colours[arm], label=labels[arm])
    ax2.set(xlabel="step", ylabel="val accuracy (points), mean over seeds",
            title="validation accuracy", ylim=(60, 100))
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())

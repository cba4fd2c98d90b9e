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
     sweep's seeds by validation accuracy;
(d)  the advisor in control mode (issue 6): a control-mode bundle fitted on the same
     sweep (``ControlFitConfig`` defaults, cached in runs/bundle_cnn_control), one
     open-loop plan after the warm-up, ``ControlPlannerConfig`` defaults unless
     ``--control`` overrides them (settings chosen on the validation block only);
(e)  control mode on the sweep PLUS the runs ``suggest_runs`` proposes (issue 6): the
     same planner settings as (d), a bundle fitted with the same ``ControlFitConfig``
     on sweep + ``runs/<model>_suggested.jsonl`` (made by ``benchmarks.suggested_runs``,
     cached in runs/bundle_<model>_control_suggested); its cost is those extra runs.

``--model mlp`` runs the same protocol on the MNIST-1D MLP (its own sweep
``runs/mlp_sweep.jsonl``, generated here when missing, and its own bundles
``runs/bundle_mlp_*``); the default ``cnn`` reproduces the CNN results.

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
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
        23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
        30: 2.042}


def t975(df: int) -> float:
    """Two-sided 95% t quantile: the table up to 30 degrees of freedom, beyond it the
    Cornish-Fisher expansion (within 0.001 of the exact value from 30 on)."""
    if df in T975:
        return T975[df]
    if df < 1:
        raise ValueError(f"no t quantile for {df} degrees of freedom")
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2))

_BUNDLE: Any = None


_ADVISOR_KW: dict[str, Any] = {}
_CONTROL: dict[str, Any] = {}  # arm ("d", "e") -> (bundle, advisor kwargs)


def _init(bundle_dir: str, advisor_kw: dict[str, Any],
          control: dict[str, tuple[str, dict[str, Any]]] | None = None) -> None:
    import torch

    from tracker_sched.bundle.folder import Bundle

    global _BUNDLE, _ADVISOR_KW, _CONTROL
    torch.set_num_threads(1)
    from tracker_sched.planning.generative import PlannerConfig

    _BUNDLE = Bundle.load(bundle_dir)
    kw = dict(advisor_kw)
    kw["config"] = PlannerConfig(**kw.pop("planner", {}))
    _ADVISOR_KW = kw
    _CONTROL = {}
    for arm, (cdir, ckw0) in (control or {}).items():
        from tracker_sched.planning.control import ControlPlannerConfig

        ckw = dict(ckw0)
        ckw["control"] = ControlPlannerConfig(**ckw.pop("planner", {}))
        _CONTROL[arm] = (Bundle.load(cdir), ckw)


def _job(job: dict[str, Any]) -> dict[str, Any]:
    arm, seed = job["arm"], job["seed"]
    t0 = time.perf_counter()
    model = job.get("model", "cnn")
    if arm in ("advisor", "d", "e"):
        from tracker_sched.advising.advisor import Advisor

        total = 840
        if arm in ("d", "e"):
            adv = Advisor(_CONTROL[arm][0], total_steps=total, mode="control",
                          **_CONTROL[arm][1])
        else:
            adv = Advisor(_BUNDLE, total_steps=total, **_ADVISOR_KW)
        spent = [0.0]
        plan_s: list[float] = []

        def lr_fn(k: int) -> float:
            t = time.perf_counter()
            out = adv.lr(k)
            spent[0] += time.perf_counter() - t
            return out

        def observer(step: int, loss: float, val: float, lr: float) -> None:
            t = time.perf_counter()
            before = adv.replans
            adv.observe(step, train_loss=loss, val_metric=val, lr=lr)
            spent[0] += time.perf_counter() - t
            if adv.replans > before:
                plan_s.append(time.perf_counter() - t)

        res = train_run(model=model, schedule="advisor", peak_lr=job["peak"], seed=seed,
                        lr_fn=lr_fn, observer=observer)
        extra = {"advisor_s": spent[0], "final_status": adv.plan.status,
                 "final_reason": adv.plan.reason, "plan_s": plan_s}
    else:
        res = train_run(model=model, schedule=job["schedule"], peak_lr=job["peak"], seed=seed,
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
             desc: str, advisor_kw: dict[str, Any] | None = None,
             control: dict[str, tuple[str, dict[str, Any]]] | None = None
             ) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    out: list[dict[str, Any]] = []
    with ctx.Pool(workers, initializer=_init,
                  initargs=(bundle_dir, advisor_kw or {}, control)) as pool:
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
    t = t975(n - 1) if n > 1 else math.nan
    half = t * sd / math.sqrt(n) if n > 1 else math.nan
    return {
        "n": n, "mean": mean, "lo": mean - half, "hi": mean + half,
        "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs), "worst": min(diffs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--model", choices=["cnn", "mlp"], default="cnn",
                    help="the MNIST-1D model: its sweep is runs/<model>_sweep.jsonl and its "
                    "bundles runs/bundle_<model>_*")
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
    ap.add_argument("--control-bundle", type=Path,
                    help="arm (d)'s control-mode bundle (default: fit the sweep with the "
                    "ControlFitConfig defaults, cached in runs/bundle_cnn_control)")
    ap.add_argument("--control", default="{}",
                    help='JSON ControlPlannerConfig fields for arm (d), e.g. \'{"pessimism": 2}\'')
    ap.add_argument("--control-fit", default="{}",
                    help="JSON ControlFitConfig fields used when arm (d)'s or (e)'s bundle "
                    "is fitted")
    ap.add_argument("--suggested", type=Path,
                    help="arm (e)'s suggested runs (default runs/<model>_suggested.jsonl, "
                    "made by benchmarks.suggested_runs)")
    ap.add_argument("--control-e",
                    help="JSON ControlPlannerConfig fields for arm (e) (default: --control's, "
                    "the same setting as arm (d))")
    ap.add_argument("--control-bundle-e", type=Path,
                    help="arm (e)'s control bundle (default: fit sweep + suggested runs, "
                    "cached in runs/bundle_<model>_control_suggested)")
    ap.add_argument("--arms", nargs="+", default=["a", "a'", "b", "c", "d"],
                    choices=["a", "a'", "b", "c", "d", "e"],
                    help="arms to run (a and a' always run: every arm is paired with them)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--stem", help="result file name (default advisor_mnist1d[_validation])")
    ns = ap.parse_args(argv)
    ns.out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    sweep_path = ns.runs_dir / f"{ns.model}_sweep.jsonl"
    if ns.model == "cnn":
        _ensure_sweep(sweep_path, SWEEP_SEEDS, False, ns.workers)
    elif not sweep_path.exists():
        from benchmarks.make_sweep import make_sweep, summary_path, write_jsonl, write_summary

        t_sw = time.perf_counter()
        made = make_sweep(model=ns.model, seeds=SWEEP_SEEDS, workers=ns.workers,
                          progress=False)
        write_jsonl(sweep_path, made)
        write_summary(summary_path(sweep_path), made, time.perf_counter() - t_sw,
                      {"model": ns.model, "seeds": list(SWEEP_SEEDS)})
        print(f"generated {sweep_path}: {len(made)} runs in {time.perf_counter() - t_sw:.0f} s")
    sweep = read_sweep(sweep_path).runs
    bundle_dir = ns.bundle or ns.runs_dir / f"bundle_{ns.model}_default"
    if not (bundle_dir / "bundle.json").exists():
        from tracker_sched.fit.config import FitConfig
        from tracker_sched.fit.generative import fit_sweep

        print(f"fitting the sweep with the default FitConfig -> {bundle_dir}")
        t_fit = time.perf_counter()
        fit_sweep(sweep, FitConfig(), workers=ns.workers, progress=False).bundle.save(bundle_dir)
        print(f"generative fit: {time.perf_counter() - t_fit:.0f} s")
    from tracker_sched.bundle.folder import Bundle

    arms = ["a", "a'", *[a for a in ("b", "c", "d", "e") if a in ns.arms]]
    control: dict[str, tuple[str, dict[str, Any]]] = {}
    control_infos: dict[str, dict[str, Any]] = {}
    suggested_runs: list[Any] = []
    if "e" in arms:
        sugg_path = ns.suggested or ns.runs_dir / f"{ns.model}_suggested.jsonl"
        if not sugg_path.exists():
            raise SystemExit(f"arm (e) needs {sugg_path}: run python -m benchmarks."
                             f"suggested_runs --model {ns.model} first")
        suggested_runs = read_sweep(sugg_path).runs
    for carm in [a for a in ("d", "e") if a in arms]:
        default_dir = (f"bundle_{ns.model}_control" if carm == "d"
                       else f"bundle_{ns.model}_control_suggested")
        given = ns.control_bundle if carm == "d" else ns.control_bundle_e
        cdir = given or ns.runs_dir / default_dir
        if not (cdir / "bundle.json").exists():
            from tracker_sched.fit.control import ControlFitConfig, fit_control

            print(f"({carm}) fitting the control-mode ensemble -> {cdir}")
            t_fit = time.perf_counter()
            fit_control(sweep if carm == "d" else [*sweep, *suggested_runs],
                        ControlFitConfig(**json.loads(ns.control_fit)),
                        workers=ns.workers).save(cdir)
            print(f"({carm}) control fit: {time.perf_counter() - t_fit:.0f} s")
        cm = Bundle.load(cdir).manifest
        settings = json.loads(ns.control_e if carm == "e" and ns.control_e else ns.control)
        control[carm] = (str(cdir), {"replan_every": ns.replan_every,
                                     "max_replans": ns.max_replans or None,
                                     "planner": settings})
        control_infos[carm] = {"bundle": str(cdir), "checks": cm.control,
                               "fit_wall_s": cm.report.wall_s, "runs_fit": cm.report.runs_fit,
                               "planner": settings}
        print(f"({carm}) control checks: flags "
              f"{cm.control.get('flags') if cm.control else None}; "
              "shared-context rank correlation "
              f"{(cm.control or {}).get('ranking', {}).get('mean')}")
    control_info = control_infos.get("d", {})

    summary = Bundle.load(bundle_dir).manifest.sweep
    best = summary.best_config
    family, best_peak = str(best["schedule"]), float(best["peak_lr"])
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
    for j in select_jobs:
        j["model"] = ns.model
    sel = _run_all(select_jobs, str(bundle_dir), ns.workers, "selection runs", None, control)
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
    if set(val_seeds) & set(conf_seeds):
        ap.error(f"the validation block {val_seeds[0]}..{val_seeds[-1]} and the confirmation "
                 f"block {conf_seeds[0]}..{conf_seeds[-1]} overlap: lower --seeds or move "
                 "--confirmation-first-seed")
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
            {"arm": "d", "schedule": "advisor", "peak": best_peak, "seed": s},
            {"arm": "e", "schedule": "advisor", "peak": best_peak, "seed": s},
        ]
    jobs = [{**j, "model": ns.model} for j in jobs if j["arm"] in arms]
    # The advisor's arm is named "b" for the report but runs the "advisor" job.
    for j in jobs:
        if j["arm"] == "b":
            j["arm"] = "advisor"
    results = _run_all(jobs, str(bundle_dir), ns.workers, "benchmark runs", advisor_kw,
                       control)
    for r in results:
        if r["arm"] == "advisor":
            r["arm"] = "b"
    by = {(r["arm"], r["seed"]): r for r in results}

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
        pairs = [(x, y) for x in ("b", "d", "e") if x in arms
                 for y in ("a", "a'", "c", *(("d",) if x == "e" else ())) if y in arms]
        for mine, other in pairs:
            d = _paired([100 * (by[(mine, s)]["test"] - by[(other, s)]["test"]) for s in bs])
            row["paired"][f"{mine}-{other}"] = d
            print(f"  ({mine})-({other}): {d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]  "
                  f"w/t/l {d['wins']}/{d['ties']}/{d['losses']}  worst {d['worst']:+.2f}")
        # the same pairs on validation accuracy (what settings are chosen by)
        for mine in [x for x in ("d", "e") if x in arms]:
            for other in ("a", "a'"):
                d = _paired([100 * (by[(mine, s)]["val"] - by[(other, s)]["val"]) for s in bs])
                row["paired"][f"{mine}-{other} (val acc)"] = d
                print(f"  ({mine})-({other}) on val acc: {d['mean']:+.2f} "
                      f"[{d['lo']:+.2f}, {d['hi']:+.2f}]")
        report["blocks"][name] = row

    last = "confirmation block" if conf_seeds else "validation block"
    conf = report["blocks"][last]["paired"]
    share, statuses = math.nan, {}
    if "b" in arms:
        adv = [by[("b", s)] for s in seeds]
        share = sum(r["advisor_s"] for r in adv) / sum(r["wall_s"] for r in adv)
        statuses = _count(r["final_status"] for r in adv)
        print(f"\nadvisor overhead: {100 * share:.1f}% of the advised runs' wall time "
              f"(goal <= 3%); final plan status {statuses}")
        goal_a = conf["b-a"]["lo"] > 0 and conf["b-a"]["mean"] >= 0.5
        goal_ap = conf["b-a'"]["mean"] >= 0
        diverged = sum(by[("b", s)]["state"] != "finished" for s in seeds)
        print(f"goals on the {last}: (b)-(a) >= +0.5 with interval above 0: "
              f"{'ok' if goal_a else 'MISS'}; (b) no worse than (a'): "
              f"{'ok' if goal_ap else 'MISS'}; no diverged advised run: "
              f"{'ok' if diverged == 0 else 'MISS'}; overhead <= 3%: "
              f"{'ok' if share <= 0.03 else 'MISS'}")
    for carm in [x for x in ("d", "e") if x in arms]:
        control_info = control_infos[carm]
        ctl = [by[(carm, s)] for s in seeds]
        c_share = sum(r["advisor_s"] for r in ctl) / sum(r["wall_s"] for r in ctl)
        plans = sorted(p for r in ctl for p in r["plan_s"])
        c_status = _count(r["final_status"] for r in ctl)
        c_reasons = _count(r["final_reason"].split(";")[0][:70] for r in ctl)
        lat = {"median_s": statistics.median(plans) if plans else None,
               "max_s": plans[-1] if plans else None, "plans": len(plans)}
        control_info.update({"overhead_share": c_share, "plan_latency": lat,
                             "final_status": c_status, "reasons": c_reasons})
        print(f"\n({carm}) control: plan latency median {lat['median_s']} s, max {lat['max_s']} s "
              f"over {lat['plans']} plans (goal well under 1 s on one thread); overhead "
              f"{100 * c_share:.1f}% of the advised runs' wall time; final status {c_status}")
        print(f"({carm}) reasons: {c_reasons}")
        d_div = sum(by[(carm, s)]["state"] != "finished" for s in seeds)
        goal_a = conf[f"{carm}-a"]["lo"] > 0 and conf[f"{carm}-a"]["mean"] >= 1.0
        goal_ap = conf[f"{carm}-a'"]["lo"] > 0 and conf[f"{carm}-a'"]["mean"] >= 0.3
        print(f"goals on the {last}: ({carm})-(a) >= +1.0 with interval above 0: "
              f"{'ok' if goal_a else 'MISS'}; ({carm})-(a') >= +0.3 with interval above 0: "
              f"{'ok' if goal_ap else 'MISS'}; no diverged run: "
              f"{'ok' if d_div == 0 else 'MISS'}")
    if "e" in arms:
        extra = len(suggested_runs)
        control_infos["e"]["extra_runs"] = extra
        print(f"(e) cost: {extra} suggested runs (on the sweep's seeds) vs the refined grid's "
              f"{2 * len(refined)} extra runs")
    control_info = control_infos.get("d", {})

    report.update({
        "command": "python -m benchmarks.advisor_mnist1d " + " ".join(argv or sys.argv[1:]),
        "best": {"schedule": family, "peak_lr": best_peak},
        "refined": {"candidates": refine_val, "chosen": refined_peak,
                    "extra_runs": 2 * len(refined)},
        "schedulefree": {"candidates": sf_val, "chosen": sf_peak, "selection_runs":
                         2 * len(peaks)},
        "advisor_overhead_share": share, "advisor_final_status": statuses,
        "control": control_info, "arms": arms, "model": ns.model,
        **({"control_e": control_infos["e"]} if "e" in arms else {}),
        "seeds": seeds, "advisor": advisor_kw,
        "planner_overrides": json.loads(ns.planner), "wall_s": time.perf_counter() - t_start,
        "runs": [{k: v for k, v in r.items() if k not in ("lr", "lr_steps", "val_curve")}
                 for r in results],
    })
    stem = ns.stem or ("advisor_mnist1d" + ("_validation" if ns.validation_only else ""))
    (ns.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {ns.out_dir / f'{stem}.json'}")
    _plot(ns.out_dir / f"{stem}.png", by, seeds, arms)
    return 0


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def _plot(path: Path, by: dict[tuple[str, int], dict[str, Any]], seeds: list[int],
          arms: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = {"a": "tab:blue", "a'": "tab:green", "b": "tab:red", "c": "tab:purple",
               "d": "tab:orange", "e": "tab:brown"}
    labels = {"a": "(a) sweep best", "a'": "(a') refined grid", "b": "(b) advisor",
              "c": "(c) schedule-free", "d": "(d) control", "e": "(e) control + suggested"}
    for arm in [x for x in arms if x != "c"]:
        for i, s in enumerate(seeds[:6]):
            r = by[(arm, s)]
            ax1.plot(r["lr_steps"], r["lr"], color=colours[arm], alpha=0.7, lw=1,
                     label=labels[arm] if i == 0 else None)
    ax1.set_yscale("log")
    ax1.set(xlabel="step", ylabel="learning rate", title="schedules (first 6 seeds)")
    ax1.legend(fontsize=8)
    for arm in arms:
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

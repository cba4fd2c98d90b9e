"""Fit settings chosen across tasks: each fit variant's advised runs, leave one task out.

    python -m benchmarks.suite.fit_variants [--kinds generative control] [--block design]
                                            [--seeds 8] [--tasks T ...] [--workers 2]
                                            [--runs-dir runs/suite]
                                            [--cache-dir runs/suite_fit_variants]

For each task whose suite cache (``<runs-dir>/<task>/``: the sweep's ``tracker/`` and
``jobs.jsonl``, written by ``python -m benchmarks.suite``) holds the sweep, this

1. fits one bundle per fit variant (:data:`VARIANTS`: the settings shipped before and cheaper
   one per kind) on the sweep as the tracker's source reads it, with ``--workers``
   processes, into ``<cache-dir>/<task>/<kind>_<variant>/`` (a bundle already there is
   used as it is; its manifest keeps the fit's wall time and iterations);
2. runs that kind's advised arm ((g) with the suite's planner settings, or (c)) from each
   bundle on the block's seeds at the sweep's best configuration, and pairs every seed with
   arm (a) (that configuration, run plainly; taken from the suite's cache where it is
   there, else trained here);
3. leave one task out, per kind: on the other tasks, each variant's score is the mean
   standardised paired test gain over (a) (mean / sd, ``benchmarks.suite.auto_rule``); the
   cheapest variant is picked unless a costlier one scores more than ``MARGIN`` above it.
   The pick's gain on the held-out task is reported per task and pooled. The variant that
   ships is the rule's pick on all tasks if every fold picks it too; a choice the folds do
   not reproduce is not validated, and the former setting (:data:`FORMER`) stays.

Writes ``benchmarks/results/suite_fit_variants.json`` after every task and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.suite import stats
from benchmarks.suite.auto_rule import MARGIN, standardised
from benchmarks.suite.jobs import G_PLANNER, Cache, Job, run_jobs
from benchmarks.suite.protocol import _best, _count, block_seeds, finals
from benchmarks.suite.tasks import get
from benchmarks.suite.tracking import log_and_read
from benchmarks.suite.variants import ORDER, _ci

#: Per kind, the variants from the cheapest to the costliest, each spelled out (the code's
#: defaults move with this benchmark's choice; a variant's name must not).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "generative": {"patience2": {"patience": 2}, "patience4": {"patience": 4}},
    "control": {"iterations300": {"iterations": 300, "members": 5},
                "members4": {"members": 4, "iterations": 600},
                "members5": {"members": 5, "iterations": 600}},
}
#: The setting each kind shipped with before this benchmark chose; it stays unless the
#: choice is validated (every leave-one-task-out fold picks what all tasks pick).
FORMER = {"generative": "patience4", "control": "members5"}
ARM = {"generative": "g", "control": "c"}


def _config(kind: str, variant: str) -> Any:
    from tracker_sched.fit.config import FitConfig
    from tracker_sched.fit.control import ControlFitConfig

    overrides = VARIANTS[kind][variant]
    return FitConfig(**overrides) if kind == "generative" else ControlFitConfig(**overrides)


def fit_variant(runs: list[Any], folder: Path, kind: str, variant: str, workers: int) -> Any:
    """The variant's bundle in ``folder``, fitted now unless it is there already."""
    from tracker_sched.bundle.folder import Bundle

    if not (folder / "bundle.json").exists():
        t0 = time.perf_counter()
        if kind == "generative":
            from tracker_sched.fit.generative import fit_sweep

            fit_sweep(runs, _config(kind, variant), workers=workers,
                      progress=False).bundle.save(folder)
        else:
            from tracker_sched.fit.control import fit_control

            fit_control(runs, _config(kind, variant), workers=workers).save(folder)
        print(f"  {kind} {variant} fit: {time.perf_counter() - t0:.0f} s -> {folder}",
              flush=True)
    return Bundle.load(folder)


def _skill(manifest: Any) -> dict[str, Any]:
    """The model's out-of-fold final-metric rank correlation and median-run val RMSE, and the
    best baseline's, at tau 0.25 and 0.5 (generative bundles)."""
    fr = manifest.report.holdout
    if fr is None:
        return {}
    out: dict[str, Any] = {}
    for tau in (0.25, 0.5):
        row: dict[str, Any] = {}
        for method in ("model", "last", "nearest", "curve"):
            try:
                row[method] = {
                    "spearman": fr.rank(tau, method).spearman,
                    "rmse_median_run": fr.row(tau, "val_metric", method).rmse_median_run}
            except KeyError:
                continue
        out[f"{tau:g}"] = row
    return out


def measure(name: str, kinds: list[str], seeds: list[int], runs_dir: Path, cache_dir: Path,
            workers: int) -> dict[str, Any] | None:
    """One task's variants: fits, advised arms, paired gains; None (saying why) without a
    sweep in the suite's cache."""
    task = get(name)
    root = runs_dir / name
    if not (root / "tracker" / "tracker.json").exists():
        print(f"  {name}: no logged sweep in {root}; run python -m benchmarks.suite first",
              flush=True)
        return None
    read, _ = log_and_read([], task.tracker, root / "tracker", task.name)
    runs = read.runs
    fam, peak = _best(finals(runs, task), task.direction)
    src = Cache(root / "jobs.jsonl")  # read only
    own = Cache(cache_dir / name / "jobs.jsonl")
    a_jobs = [Job(name, "run", fam, peak, s) for s in seeds]
    missing = [j for j in a_jobs if j.key not in src.done]
    run_jobs(missing, own, workers, f"{name}: (a) runs the suite's cache lacks")
    a = [src.done.get(j.key) or own.done[j.key] for j in a_jobs]
    out: dict[str, Any] = {"unit": task.unit, "direction": task.direction,
                           "a": {"schedule": fam, "peak_lr": peak}, "seeds": seeds,
                           "sweep_runs": len(runs), "kinds": {}}
    for kind in kinds:
        per: dict[str, Any] = {}
        for variant in VARIANTS[kind]:
            folder = cache_dir / name / f"{kind}_{variant}"
            bundle = fit_variant(runs, folder, kind, variant, workers)
            rep = bundle.manifest.report
            jobs = [Job(name, kind, fam, peak, s, bundle=str(folder.resolve()),
                        bundle_tag=bundle.manifest.created_at,
                        planner=G_PLANNER if kind == "generative" else None) for s in seeds]
            run_jobs(jobs, own, workers, f"{name}: ({ARM[kind]}) {variant}, {len(seeds)} seeds")
            rows = [own.done[j.key] for j in jobs]
            gains = {m: stats.gains([r[m] for r in rows], [r[m] for r in a], task.direction)
                     for m in ("test", "val")}
            per[variant] = {
                "overrides": VARIANTS[kind][variant],
                "fit_wall_s": rep.wall_s,
                "iterations": [m.get("iterations") for m in rep.members],
                "best_iterations": [m.get("best_iteration") for m in rep.members],
                "best_holdout_losses": [m.get("best_holdout_loss") for m in rep.members],
                "test": [r["test"] for r in rows], "gain_test": gains["test"],
                "gain_val": gains["val"], "test_vs_a": stats.paired(gains["test"]),
                "val_vs_a": stats.paired(gains["val"]),
                "standardised": standardised(gains["test"]),
                "status": _count(r["status"] for r in rows),
                "diverged": sum(r["state"] != "finished" for r in rows),
                "skill": _skill(bundle.manifest) if kind == "generative" else {},
            }
        out["kinds"][kind] = per
    return out


def pick(tasks: dict[str, dict[str, Any]], kind: str) -> tuple[str, dict[str, float]]:
    """The rule: the cheapest variant unless a costlier one scores more than ``MARGIN``
    above it (score: mean standardised test gain over ``tasks``)."""
    names = list(VARIANTS[kind])
    scores = {v: statistics.fmean(t["kinds"][kind][v]["standardised"] for t in tasks.values())
              for v in names}
    chosen = names[0]
    for v in names[1:]:
        if scores[v] > scores[chosen] + MARGIN:
            chosen = v
    return chosen, scores


def loto(tasks: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    """Leave one task out for ``kind``: the rule on the other tasks, its pick's held-out gain."""
    per: dict[str, Any] = {}
    held: dict[str, list[float]] = {}
    for name, t in tasks.items():
        others = {k: v for k, v in tasks.items() if k != name}
        choice, scores = pick(others, kind)
        g = t["kinds"][kind][choice]["gain_test"]
        held[name] = g
        per[name] = {"pick": choice, "scores_on_others": scores, "gain": stats.paired(g)}
    choice, all_scores = pick(tasks, kind)
    folds = [r["pick"] for r in per.values()]
    agree = all(f == choice for f in folds)
    acc = {n: g for n, g in held.items() if tasks[n]["unit"] == "points"}
    return {"per_task": per, "pooled_accuracy_tasks": stats.pooled(acc) if acc else None,
            "choice_all_tasks": choice, "scores_all_tasks": all_scores, "folds_agree": agree,
            "picks": folds, "margin": MARGIN,
            # a choice the folds do not reproduce is not validated: the former setting stays
            "ship": choice if agree else FORMER[kind], "former": FORMER[kind]}


def table(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    for kind in doc["kinds"]:
        names = list(VARIANTS[kind])
        lines.append(f"{kind}: ({ARM[kind]}) minus (a) on the {doc['block']} block (test; "
                     "mean [95% CI] W/L), fit wall s, iterations per member")
        for name, t in doc["tasks"].items():
            if kind not in t["kinds"]:
                continue
            cells = [f"{v}: {_ci(t['kinds'][kind][v]['test_vs_a'])}, "
                     f"{t['kinds'][kind][v]['fit_wall_s']:.0f} s, "
                     f"{sum(t['kinds'][kind][v]['iterations'])} it" for v in names
                     if v in t["kinds"][kind]]
            lines.append(f"  {name} ({t['unit']}): " + "; ".join(cells))
        held = doc.get("loto", {}).get(kind)
        if held:
            lines.append("  leave one task out -> held-out gain: " + "; ".join(
                f"{n}: {r['pick']} {_ci(r['gain'])}" for n, r in held["per_task"].items()))
            if held["pooled_accuracy_tasks"]:
                lines.append(f"  pooled over accuracy tasks: {_ci(held['pooled_accuracy_tasks'])}")
            lines.append(f"  ships: {held['ship']} (rule on all tasks: "
                         f"{held['choice_all_tasks']}; folds agree: {held['folds_agree']}; "
                         f"scores on all tasks: " + ", ".join(
                             f"{v} {s:+.2f}" for v, s in held["scores_all_tasks"].items()) + ")")
    return "\n".join(lines)


def _complete(doc: dict[str, Any], kind: str) -> bool:
    """Whether every task of ``doc`` has every variant of ``kind`` (an earlier call may have
    measured fewer)."""
    return all(set(VARIANTS[kind]) <= set(t["kinds"].get(kind, {}))
               for t in doc["tasks"].values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite.fit_variants",
                                 description="fit settings chosen leave one task out")
    ap.add_argument("--kinds", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--block", choices=["design", "confirm"], default="design")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--tasks", nargs="+", default=list(ORDER), metavar="TASK")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/suite"),
                    help="the suite's cache (read only)")
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/suite_fit_variants"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path,
                    default=Path("benchmarks/results/suite_fit_variants.json"))
    ap.add_argument("--print", dest="print_only", action="store_true",
                    help="recompute the leave-one-task-out choice from the JSON, print it")
    ns = ap.parse_args(argv)
    if ns.print_only:
        if not ns.out.exists():
            raise SystemExit(f"{ns.out} does not exist: run the benchmark first")
        doc = json.loads(ns.out.read_text())
        doc["loto"] = {k: loto(doc["tasks"], k) for k in doc["kinds"] if _complete(doc, k)}
        ns.out.write_text(json.dumps(doc, indent=1, allow_nan=True))
        print(table(doc))
        return 0
    import torch

    torch.set_num_threads(1)
    seeds = block_seeds(ns.block, ns.seeds)
    doc: dict[str, Any] = {
        "about": "fit settings chosen leave one task out (benchmarks/suite/fit_variants.py)",
        "command": "python -m benchmarks.suite.fit_variants " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "block": ns.block, "kinds": ns.kinds,
        "variants": {k: VARIANTS[k] for k in ns.kinds}, "tasks": {}, "loto": {}}
    if ns.out.exists():  # keep the tasks and kinds of earlier calls on this block
        old = json.loads(ns.out.read_text())
        if old.get("block") == ns.block:
            doc["tasks"] = old.get("tasks", {})
            doc["kinds"] = [k for k in VARIANTS if k in {*old.get("kinds", []), *ns.kinds}]
            doc["variants"] = {k: VARIANTS[k] for k in doc["kinds"]}
    for name in ns.tasks:
        res = measure(name, ns.kinds, seeds, ns.runs_dir, ns.cache_dir, max(1, ns.workers))
        if res is None:
            continue
        kinds = {**doc["tasks"].get(name, {}).get("kinds", {}), **res["kinds"]}
        doc["tasks"][name] = {**res, "kinds": kinds}
        if len(doc["tasks"]) > 1:
            doc["loto"] = {k: loto(doc["tasks"], k) for k in doc["kinds"] if _complete(doc, k)}
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(json.dumps(doc, indent=1, allow_nan=True))
        print(table(doc), flush=True)
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A generative-planner variant against the suite's cached arms, leave one task out.

    python -m benchmarks.suite.variants [--variant relative] [--block design] [--seeds 8]
                                        [--tasks T ...] [--runs-dir runs/suite]
                                        [--cache-dir runs/suite_variants] [--workers 1]

For each task whose suite cache (``<runs-dir>/<task>/``: ``bundle_generative/`` and
``jobs.jsonl``, written by ``python -m benchmarks.suite``) holds the block's arm (a) and
generative arm (g) runs, this

1. runs the (g) arm again on the block's seeds with one planner setting changed (the
   variant: ``PlannerConfig(lr_target="relative")`` for ``relative``), the same bundle, the
   same seeds, the same budget (:class:`benchmarks.suite.jobs.Job` with ``planner`` set:
   its own cache key), cached in ``<cache-dir>/<task>/jobs.jsonl``; the suite's cache is
   only read;
2. pairs every seed with arm (a) (the sweep's best configuration) of the suite's cache and
   reports the variant's and the absolute planner's paired gains (the suite's (g) rows
   cached before "relative" became the planner's default, else run here)
   over (a) on the test metric (the unit of ``benchmarks.suite.stats``: accuracy points, or
   percent of (a)'s loss), side by side, and variant minus absolute; the validation metric
   too;
3. leave one task out: for each task, chooses among "best" (follow the sweep's best: gain
   0), "absolute" and "relative" on the other tasks by the mean standardised gain (paired
   mean / sd, as ``benchmarks.suite.auto_rule``; a planner must beat "best" by its
   ``MARGIN``), and among absolute and relative alone, and reports what the choice gives on
   the held-out task.

Writes ``benchmarks/results/suite_variants.json`` after every task and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.suite import stats
from benchmarks.suite.auto_rule import MARGIN, standardised
from benchmarks.suite.jobs import Cache, Job, run_jobs
from benchmarks.suite.protocol import block_seeds
from benchmarks.suite.tasks import get

ORDER = ("friedman", "digits-sgd", "digits-cosine", "mnist1d-mlp", "lm", "mnist1d-cnn")
VARIANTS = {"relative": {"lr_target": "relative"}, "absolute": {"lr_target": "absolute"}}


def label(variant: str) -> str:
    """The variant's name in the report: ``absolute_rerun`` for ``absolute``, whose rerun sits
    beside the cached (g) ("absolute"; the pair checks that a rerun reproduces the cache)."""
    return "absolute_rerun" if variant == "absolute" else variant


def _tag(folder: Path) -> str:
    return str(json.loads((folder / "bundle.json").read_text())["created_at"])


def measure(name: str, seeds: list[int], variant: str, runs_dir: Path, cache_dir: Path,
            workers: int) -> dict[str, Any] | None:
    """One task's paired results, or None (with a line saying why) when the suite's cache
    lacks the bundle, a (g) run naming (a)'s configuration, or a seed's (a) run."""
    task = get(name)
    root = runs_dir / name
    folder = root / "bundle_generative"
    if not (folder / "bundle.json").exists():
        print(f"  {name}: no generative bundle in {root}; skipped", flush=True)
        return None
    src = Cache(root / "jobs.jsonl")  # read only: nothing is put here
    tag = _tag(folder)
    # (a)'s configuration: the one every (g) run of this bundle names (the suite's choice)
    advised = [r for r in src.done.values() if r["kind"] == "generative"
               and r["bundle_tag"] == tag]
    if not advised:
        print(f"  {name}: the suite's cache has no (g) run of its bundle; skipped", flush=True)
        return None
    fam, peak = str(advised[0]["family"]), float(advised[0]["peak"])
    a_rows = {s: src.done[k] for s in seeds if (k := Job(name, "run", fam, peak, s).key)
              in src.done}
    if len(a_rows) < len(seeds):
        print(f"  {name}: the suite's cache lacks (a) runs; skipped", flush=True)
        return None
    own = Cache(cache_dir / name / "jobs.jsonl")
    t0 = time.perf_counter()

    def advised_rows(planner: str | None, what: str) -> list[dict[str, Any]]:
        jobs = [Job(name, "generative", fam, peak, s, bundle=str(folder), bundle_tag=tag,
                    planner=planner) for s in seeds]
        run_jobs(jobs, own, workers, f"{name}: (g) {what}, {len(seeds)} seeds")
        return [own.done[j.key] for j in jobs]

    # the absolute planner: the suite's (g) rows cached before "relative" became the default
    # (their key names no planner), else run here
    old = [src.done.get(Job(name, "generative", fam, peak, s, bundle_tag=tag).key) for s in seeds]
    if variant == "absolute" and not all(r is not None for r in old):
        raise SystemExit(f"{name}: --variant absolute checks a rerun against the suite's cached "
                         "absolute (g) rows, and the cache has none for these seeds")
    g = ([r for r in old if r is not None] if all(r is not None for r in old) else
         advised_rows(json.dumps(VARIANTS["absolute"], sort_keys=True), "absolute"))
    v_rows = advised_rows(json.dumps(VARIANTS[variant], sort_keys=True), variant)
    variant = label(variant)
    a = [a_rows[s] for s in seeds]

    def gain(rows: list[dict[str, Any]], metric: str) -> list[float]:
        return stats.gains([r[metric] for r in rows], [r[metric] for r in a], task.direction)

    out: dict[str, Any] = {"unit": task.unit, "direction": task.direction,
                           "a": {"schedule": fam, "peak_lr": peak}, "bundle_tag": tag,
                           "seeds": seeds, "wall_s_this_call": time.perf_counter() - t0}
    for metric in ("test", "val"):
        gv, ga = gain(v_rows, metric), gain(g, metric)
        out[metric] = {
            "a": [r[metric] for r in a], "absolute": [r[metric] for r in g],
            variant: [r[metric] for r in v_rows],
            "gain_absolute": ga, f"gain_{variant}": gv,
            "absolute_vs_a": stats.paired(ga), f"{variant}_vs_a": stats.paired(gv),
            f"diff_{variant}": (d := [x - y for x, y in zip(gv, ga, strict=True)]),
            f"{variant}_vs_absolute": stats.paired(d),
        }
    out["status"] = {variant: _count(r["status"] for r in v_rows),
                     "absolute": _count(r["status"] for r in g)}
    out["overhead_s"] = {variant: sum(r["advisor_s"] for r in v_rows),
                         "absolute": sum(r["advisor_s"] for r in g)}
    return out


def _count(items: Any) -> dict[str, int]:
    res: dict[str, int] = {}
    for x in items:
        res[x] = res.get(x, 0) + 1
    return res


def loto(tasks: dict[str, dict[str, Any]], variant: str) -> dict[str, Any]:
    """Leave one task out over the options "best", "absolute" and ``variant`` (scored on the
    test metric's standardised gain over (a))."""
    def std(t: dict[str, Any], opt: str) -> float:
        return 0.0 if opt == "best" else standardised(t["test"][f"gain_{opt}"])

    def choose(others: dict[str, dict[str, Any]], opts: tuple[str, ...]) -> tuple[str, float]:
        scores = {o: statistics.fmean(std(t, o) for t in others.values()) for o in opts}
        best = opts[0]
        for o in opts[1:]:
            floor = scores["best"] + MARGIN if "best" in scores else -math.inf
            if scores[o] > scores[best] + 1e-12 and scores[o] >= floor:
                best = o
        return best, scores[best]

    per: dict[str, Any] = {}
    held: dict[str, dict[str, list[float]]] = {"with_best": {}, "planners": {}}
    for name, t in tasks.items():
        others = {k: v for k, v in tasks.items() if k != name}
        row: dict[str, Any] = {}
        for label, opts in (("with_best", ("best", "absolute", variant)),
                            ("planners", ("absolute", variant))):
            if not others:
                continue
            pick, s = choose(others, opts)
            g = [0.0] * len(t["seeds"]) if pick == "best" else t["test"][f"gain_{pick}"]
            held[label][name] = g
            row[label] = {"pick": pick, "score_on_others": s, "gain": stats.paired(g),
                          "standardised": std(t, pick)}
        per[name] = row
    pooled = {k: stats.pooled(v) for k, v in held.items() if v}
    picks = {k: [per[n][k]["pick"] for n in per if k in per[n]] for k in held}
    mean_std = {k: statistics.fmean(per[n][k]["standardised"] for n in per if k in per[n])
                for k, v in held.items() if v}
    return {"per_task": per, "pooled": pooled, "picks": picks,
            "mean_standardised_held_out": mean_std,
            "options": ["best", "absolute", variant], "margin_over_best": MARGIN,
            "score": "mean over the other tasks of the paired test gain's mean / sd over (a)"}


def verdict(tasks: dict[str, dict[str, Any]], held: dict[str, Any], variant: str) -> str:
    """Whether the evidence says the variant should be the default."""
    chosen = all(p == variant for p in held["picks"]["planners"])
    worse = [n for n, t in tasks.items() if t["test"][f"{variant}_vs_absolute"]["hi"] < 0]
    if chosen and not worse:
        return (f"{variant} is chosen over absolute in every leave-one-task-out fold and is "
                "clearly worse on no task: it may become the default")
    why = [] if chosen else [f"absolute chosen in {held['picks']['planners'].count('absolute')} "
                             "of the folds"]
    if worse:
        why.append(f"clearly worse than absolute on {', '.join(worse)}")
    return f"keep absolute: {'; '.join(why)}"


def _ci(g: dict[str, Any]) -> str:
    if math.isnan(g["lo"]):
        return f"{g['mean']:+.2f}"
    return f"{g['mean']:+.2f} [{g['lo']:+.2f}, {g['hi']:+.2f}] {g['wins']}/{g['losses']}"


def table(doc: dict[str, Any]) -> str:
    v = doc["variant"]
    lines = [f"(g) {v} vs (g) absolute, paired over (a) on the {doc['block']} block (test; "
             "mean [95% CI] W/L)",
             f"task | unit | absolute - a | {v} - a | {v} - absolute"]
    for name, t in doc["tasks"].items():
        x = t["test"]
        lines.append(" | ".join([name, t["unit"], _ci(x["absolute_vs_a"]), _ci(x[f"{v}_vs_a"]),
                                 _ci(x[f"{v}_vs_absolute"])]))
    acc = {n: t for n, t in doc["tasks"].items() if t["unit"] == "points"}
    if acc:
        def pool(key: str) -> str:
            return _ci(stats.pooled({n: t["test"][key] for n, t in acc.items()}))

        lines.append(" | ".join([f"pooled, {len(acc)} accuracy tasks", "points",
                                 pool("gain_absolute"), pool(f"gain_{v}"),
                                 pool(f"diff_{v}")]))
    held = doc.get("loto")
    if held:
        lines.append("leave one task out: pick on the other tasks -> held-out gain over (a)")
        for name, r in held["per_task"].items():
            cells = [f"{k}: {r[k]['pick']} {_ci(r[k]['gain'])}" for k in ("with_best",
                                                                          "planners") if k in r]
            lines.append(f"  {name}: " + "; ".join(cells))
        ms = held["mean_standardised_held_out"]
        lines.append("mean held-out standardised gain: " + ", ".join(
            f"{k} {x:+.2f}" for k, x in ms.items()) + " (always best: 0)")
        lines.append(f"verdict: {doc['verdict']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite.variants",
                                 description="a generative-planner variant on the suite")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="relative")
    ap.add_argument("--block", choices=["design", "confirm"], default="design")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--tasks", nargs="+", default=list(ORDER), metavar="TASK")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/suite"),
                    help="the suite's cache (read only)")
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/suite_variants"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/suite_variants.json"))
    ns = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = block_seeds(ns.block, ns.seeds)
    doc: dict[str, Any] = {
        "about": "a generative-planner variant against the suite's cached arms "
                 "(benchmarks/suite/variants.py)",
        "command": "python -m benchmarks.suite.variants " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "variant": label(ns.variant), "planner": VARIANTS[ns.variant], "block": ns.block,
        "tasks": {}}
    for name in ns.tasks:
        res = measure(name, seeds, ns.variant, ns.runs_dir, ns.cache_dir, max(1, ns.workers))
        if res is None:
            continue
        doc["tasks"][name] = res
        if len(doc["tasks"]) > 1:
            doc["loto"] = loto(doc["tasks"], label(ns.variant))
            doc["verdict"] = verdict(doc["tasks"], doc["loto"], label(ns.variant))
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(json.dumps(doc, indent=1, allow_nan=True))
        print(table(doc), flush=True)
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

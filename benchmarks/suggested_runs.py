"""Train the runs ``suggest_runs`` proposes for an MNIST-1D sweep, and fit a control bundle on both.

    python -m benchmarks.suggested_runs [--model cnn] [--n 12] [--seed 0] [--workers 2]

Issue 6, arm (e): ``suggest_runs(sweep, n=12, seed=0)`` on ``runs/<model>_sweep.jsonl``;
each suggestion is trained with the same task, budget and seeds as the sweep's runs
(seeds 0 and 1, 30 epochs of batch 128), following the suggestion's knot schedule
through ``lr_fn``. The runs are cached in ``runs/<model>_suggested.jsonl`` (one
``RunRecord`` per line; config ``schedule="suggested"`` plus the suggestion's
name, kind and base run, so that two suggestions on one base are two
configurations). Prints and writes the confounding verdict of the sweep before
and after adding them, then fits a control-mode bundle on sweep + suggestions
with the ``ControlFitConfig`` given (default: the defaults, as arm (d) uses),
cached in ``runs/bundle_<model>_control_suggested``.
Writes ``benchmarks/results/suggested_runs_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.make_sweep import write_jsonl
from tracker_sched.sources.files import read_sweep

SWEEP_SEEDS = (0, 1)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _train(job: dict[str, Any]) -> Any:
    """One suggested run: the suggestion's knot schedule as ``lr_fn``."""
    from benchmarks.mnist1d_task import train_run
    from tracker_sched.design.suggest import SuggestedRun

    s = SuggestedRun.model_validate(job["suggestion"])
    seed = int(job["seed"])

    def lr_fn(k: int) -> float:
        return s.lr_at(k)

    res = train_run(model=job["model"], schedule="suggested",
                    peak_lr=float(s.config["peak_lr"]),  # type: ignore[arg-type]
                    seed=seed, lr_fn=lr_fn, run_id=f"{job['model']}-{s.name}-s{seed}")
    rec = res.record
    if rec.total_steps != s.total_steps:
        raise RuntimeError(f"budget mismatch: the run has {rec.total_steps} steps, the "
                           f"suggestion {s.total_steps}")
    config = {**rec.config, "suggestion": s.name, "suggestion_kind": s.kind,
              "base_run": s.base_run_id}
    return res.__class__(record=rec.model_copy(update={"config": config}),
                         final_val_acc=res.final_val_acc, final_test_acc=res.final_test_acc,
                         wall_s=res.wall_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="suggest_runs seed")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--control-fit", default="{}", help="JSON ControlFitConfig fields")
    ap.add_argument("--no-fit", action="store_true", help="train the runs only")
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ns = ap.parse_args(argv)
    t_start = time.perf_counter()

    from tracker_sched.design.confounding import confounding
    from tracker_sched.design.suggest import suggest_runs

    sweep_path = ns.runs_dir / f"{ns.model}_sweep.jsonl"
    out_path = ns.runs_dir / f"{ns.model}_suggested.jsonl"
    sweep = read_sweep(sweep_path).runs
    suggestions = suggest_runs(sweep, n=ns.n, seed=ns.seed)
    for s in suggestions:
        print(f"  {s.name}: base {s.base_run_id}, lr "
              + " ".join(f"{x:.2g}" for x in s.schedule.lr))

    train_wall = 0.0
    if out_path.exists():
        suggested = read_sweep(out_path).runs
        names = {str(r.config.get("suggestion")) for r in suggested}
        if names != {s.name for s in suggestions} or len(suggested) != ns.n * len(SWEEP_SEEDS):
            raise SystemExit(f"{out_path} holds other runs; delete it to retrain")
        print(f"using existing {out_path} ({len(suggested)} runs)")
        finals: list[dict[str, Any]] = []
    else:
        jobs = [{"model": ns.model, "seed": seed, "suggestion": s.model_dump(mode="json")}
                for s in suggestions for seed in SWEEP_SEEDS]
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(ns.workers, initializer=_init_worker) as pool:
            results = list(pool.imap_unordered(_train, jobs))
        train_wall = time.perf_counter() - t0
        write_jsonl(out_path, results)
        suggested = [r.record for r in results]
        finals = [{"run_id": r.record.run_id, "state": r.record.state,
                   "val": r.final_val_acc, "test": r.final_test_acc,
                   "wall_s": r.wall_s} for r in sorted(results, key=lambda r: r.record.run_id)]
        print(f"trained {len(results)} suggested runs in {train_wall:.0f} s -> {out_path}")
        for f in finals:
            print(f"  {f['run_id']}: {f['state']} val {f['val']:.3f} test {f['test']:.3f}")
    base_val = {r.run_id: r.val_metric.value[-1] for r in sweep if r.val_metric is not None}

    before, after = confounding(sweep), confounding([*sweep, *suggested])
    print(f"confounding before: {before.summary()}")
    for reason in before.reasons:
        print(f"    {reason}")
    print(f"confounding after:  {after.summary()}")
    for reason in after.reasons:
        print(f"    {reason}")

    control: dict[str, Any] = {}
    if not ns.no_fit:
        from tracker_sched.bundle.folder import Bundle
        from tracker_sched.fit.control import ControlFitConfig, fit_control

        cdir = ns.runs_dir / f"bundle_{ns.model}_control_suggested"
        if not (cdir / "bundle.json").exists():
            print(f"fitting the control-mode ensemble on sweep + suggestions -> {cdir}")
            fit_control([*sweep, *suggested], ControlFitConfig(**json.loads(ns.control_fit)),
                        workers=ns.workers).save(cdir)
        m = Bundle.load(cdir).manifest
        control = {"bundle": str(cdir), "fit_wall_s": m.report.wall_s, "checks": m.control}
        print(f"control fit {m.report.wall_s:.0f} s; flags {(m.control or {}).get('flags')}; "
              f"shared-context rank correlation "
              f"{(m.control or {}).get('ranking', {}).get('mean')}")

    report = {
        "command": "python -m benchmarks.suggested_runs " + " ".join(argv or sys.argv[1:]),
        "sweep": str(sweep_path), "suggested": str(out_path), "n": ns.n, "seed": ns.seed,
        "seeds": list(SWEEP_SEEDS), "runs_trained": ns.n * len(SWEEP_SEEDS),
        "train_wall_s": train_wall,
        "suggestions": [s.model_dump(mode="json") for s in suggestions],
        "finals": finals,
        "sweep_best_final_val": max(base_val.values()),
        "suggested_mean_final_val": statistics.fmean(
            r.val_metric.value[-1] for r in suggested  # type: ignore[union-attr]
        ),
        "confounding_before": before.model_dump(mode="json", exclude={"coverage"}),
        "confounding_after": after.model_dump(mode="json", exclude={"coverage"}),
        "control": control, "wall_s": time.perf_counter() - t_start,
    }
    ns.out_dir.mkdir(parents=True, exist_ok=True)
    path = ns.out_dir / f"suggested_runs_{ns.model}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replan latency: one generative replan, batched, against a naive per-candidate loop.

    python -m benchmarks.replan_latency [--bundle DIR] [--repeats 30]

One CPU thread, 64 candidates over the full remaining horizon (a replan at
tau = 0.3), the default 4-member bundle. The naive arm decodes the same
candidate latents one at a time with the same model (the reference
implementation's approach); both arms must give the same trajectories. Prints
p50/p90 of each and writes ``benchmarks/results/replan_latency.json``.
Goal: batched p50 <= 10 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tracker_sched.bundle import Bundle
from tracker_sched.fit import FitConfig, fit_sweep
from tracker_sched.planner import GenerativePlanner, LiveHistory, PlannerConfig
from tracker_sched.sources.files import read_sweep

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cnn_sweep_small.jsonl"


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="a fitted bundle (default: a short fit of "
                    "the test fixture with the default model sizes)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/replan_latency.json"))
    ns = ap.parse_args(argv)
    torch.set_num_threads(1)

    runs = read_sweep(FIXTURE).runs
    if ns.bundle:
        bundle = Bundle.load(ns.bundle)
    else:  # latency depends on the sizes, not on how long the fit ran
        bundle = fit_sweep(runs, FitConfig(max_iterations=50), workers=2, progress=False).bundle
    planner = GenerativePlanner(bundle, PlannerConfig(candidates=ns.candidates))
    run = next(r for r in runs if "onecycle-3e-02" in r.run_id)
    assert run.total_steps is not None and run.train_loss and run.lr and run.val_metric
    cut = int(0.3 * run.total_steps)

    def upto(s: object) -> tuple[np.ndarray, np.ndarray]:
        st = np.asarray(s.step)  # type: ignore[attr-defined]
        v = np.asarray(s.value)  # type: ignore[attr-defined]
        return st[st <= cut], v[st <= cut]

    hist = LiveHistory(train_loss=upto(run.train_loss), lr=upto(run.lr),
                       val_metric=upto(run.val_metric))

    # Batched: the planner's own replan, end to end (encode, candidates, solve, score, guard).
    batched = []
    for _ in range(ns.repeats + 3):
        t0 = time.perf_counter()
        rec = planner.plan(hist, step=cut, total_steps=run.total_steps)
        batched.append(time.perf_counter() - t0)
    batched = batched[3:]

    # Naive: the same candidate latents, decoded one candidate at a time.
    g = bundle.manifest.grid_points
    live = planner.live_tensors(hist, run.total_steps)
    end = int(torch.nonzero(live.mask[0].all(dim=1)).max())
    offsets = torch.arange(g - end, dtype=torch.float32) / (g - 1)
    from tracker_sched.dataset import context_batch

    x, ln = context_batch(live, torch.tensor([0]), torch.tensor([end]),
                          torch.tensor([bundle.manifest.window]), "forward")
    naive, max_diff = [], 0.0
    with torch.no_grad():
        zs = []
        for model in bundle.models:
            z_live = model.encode(x, ln)
            zs.append(planner._candidates(model, z_live, end, torch.Generator().manual_seed(0)))
        for _ in range(ns.repeats):
            t0 = time.perf_counter()
            outs = []
            for model, z in zip(bundle.models, zs, strict=True):
                outs.append(torch.stack([
                    model.decode(model.solve(model.initial_state(z[i : i + 1]), offsets))[0]
                    for i in range(z.shape[0])
                ]))
            naive.append(time.perf_counter() - t0)
        for model, z, o in zip(bundle.models, zs, outs, strict=True):
            ref = model.decode(model.solve(model.initial_state(z), offsets))
            max_diff = max(max_diff, float((ref - o).abs().max()))

    rows = {
        "batched_replan_ms": {"p50": 1e3 * _pct(batched, 50), "p90": 1e3 * _pct(batched, 90)},
        "naive_decode_only_ms": {"p50": 1e3 * _pct(naive, 50), "p90": 1e3 * _pct(naive, 90)},
    }
    speedup = statistics.median(naive) / statistics.median(batched)
    print(f"one replan at tau 0.3: {ns.candidates} candidates x {bundle.manifest.members} "
          f"members, {g - end} grid points ahead, 1 thread, {ns.repeats} repeats")
    print(f"{'arm':<34} {'p50 ms':>8} {'p90 ms':>8}")
    print(f"{'batched planner (whole replan)':<34} {rows['batched_replan_ms']['p50']:>8.1f} "
          f"{rows['batched_replan_ms']['p90']:>8.1f}")
    print(f"{'naive loop (decoding alone)':<34} {rows['naive_decode_only_ms']['p50']:>8.1f} "
          f"{rows['naive_decode_only_ms']['p90']:>8.1f}")
    print(f"speed-up (median): {speedup:.1f}x; max |batched - naive| = {max_diff:.2e}; "
          f"goal p50 <= 10 ms: {'ok' if rows['batched_replan_ms']['p50'] <= 10 else 'MISS'}")
    print(f"last plan: {rec.status}: {rec.reason}")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps({**rows, "speedup_median": speedup, "max_abs_diff": max_diff,
                                  "candidates": ns.candidates,
                                  "members": bundle.manifest.members,
                                  "horizon_points": g - end, "threads": 1}, indent=2))
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replan latency: one generative replan, batched, against a naive per-candidate loop.

    python -m benchmarks.replan_latency [--bundle DIR] [--repeats 40]
        [--compare-with OLD_PLANNER.py]

One CPU thread, 64 candidates over the full remaining horizon (a replan at
tau = 0.3), the default 4-member bundle. Arms, interleaved round by round so
that load on the machine hits them alike:

- the planner as configured by default (the plan every user gets);
- the same with every candidate accepted (``tolerance=1e9``): the worst case,
  since only candidates that pass phase alignment are solved;
- the same with coarser planning steps (``solver_step_points=3``), with the
  largest deviation of its plan from the default one;
- optionally a previous planner implementation (``--compare-with``, a copy of
  an older ``tracker_sched/planner.py``, e.g. from ``git show REV:...``);
- the naive arm: the same candidate latents decoded one at a time with the
  same model (the reference implementation's approach); it must give the
  same trajectories as the batched solve.

Each arm reports wall-clock and thread CPU time (``time.thread_time``): on a
shared machine, wall time includes waiting for a core, CPU time does not.
Prints p50/p90 and writes ``benchmarks/results/replan_latency.json``.
Goal: p50 <= 10 ms.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from tracker_sched.bundle.folder import Bundle
from tracker_sched.data.grid import SweepTensors, context_batch
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.model.latent import StackedField, solve_stacked
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.planning.history import LiveHistory
from tracker_sched.planning.kernels import rk4_nodes, step_grid
from tracker_sched.schema import Recommendation, Series
from tracker_sched.sources.files import read_sweep

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cnn_sweep_small.jsonl"


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("planner_compared", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["planner_compared"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _max_dex(a: Recommendation, b: Recommendation) -> float:
    return float(np.abs(np.log10(a.schedule.lr) - np.log10(b.schedule.lr)).max())


def _cpu_p50(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for i in range(repeats + 3):
        c0 = time.thread_time()
        fn()
        if i >= 3:
            times.append(time.thread_time() - c0)
    return 1e3 * statistics.median(times)


def _breakdown(
    planner: GenerativePlanner, bundle: Bundle, hist: LiveHistory, total: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Each change to the replan, timed against the way it was done before, on the same
    inputs in the same run (thread CPU time, medians)."""
    models = bundle.models
    g = bundle.manifest.grid_points
    live = planner.live_tensors(hist, total)
    end = int(torch.nonzero(live.mask[0].all(dim=1)).max())
    top = planner._top
    assert top is not None
    n_top = int(top.values.shape[0])
    windows = SweepTensors(values=torch.cat([live.values, top.values]),
                           mask=torch.cat([live.mask, top.mask]))
    n = n_top + 1
    direction = models[0].config.encoder_direction
    x, ln = context_batch(windows, torch.arange(n), torch.full((n,), end),
                          torch.full((n,), bundle.manifest.window), direction)
    offsets = torch.arange(g - end, dtype=torch.float32) / (g - 1)
    grid = step_grid(offsets, models[0].config.step_points)
    out: dict[str, tuple[float, float]] = {}
    with torch.inference_mode():
        z = planner._fast.encoder(x)
        gen = torch.Generator().manual_seed(0)
        h0 = torch.stack([m.initial_state(planner._candidates(zz[:1], zz[1:], gen))
                          for m, zz in zip(models, z, strict=True)])
        stacked = StackedField([m.field for m in models])

        def per_member_encode() -> None:
            for m in models:  # the live window, then the regimes' windows, per member
                m.encode(x[:1], ln[:1])
                m.encode(x[1:], ln[1:])

        out["encode: 2 GRU calls per member -> one batched recurrence"] = (
            _cpu_p50(per_member_encode, repeats),
            _cpu_p50(lambda: planner._fast.encoder(x), repeats))
        out["solve 64: torchdiffeq rk4 -> plain rk4 loop (tanh field)"] = (
            _cpu_p50(lambda: solve_stacked(models, h0, offsets, interp="linear"), repeats),
            _cpu_p50(lambda: rk4_nodes(lambda y: stacked(None, y), h0, grid), repeats))
        out["solve 64: tanh field -> 2 sigmoid(2u) - 1 field"] = (
            out["solve 64: torchdiffeq rk4 -> plain rk4 loop (tanh field)"][1],
            _cpu_p50(lambda: rk4_nodes(planner._fast.field, h0, grid), repeats))

        def interpolate_then_decode() -> None:
            planner._decode(solve_stacked(models, h0, offsets, interp="linear"))

        out["solve+decode 64: torchdiffeq, decode all -> loop, decode nodes"] = (
            _cpu_p50(interpolate_then_decode, repeats),
            _cpu_p50(lambda: planner._decode_path(h0, offsets), repeats))
        n_acc = planner.plan(hist, step=int(0.3 * total), total_steps=total).samples_accepted
        out[f"solve+decode: all 64 -> the {n_acc} accepted"] = (
            out["solve+decode 64: torchdiffeq, decode all -> loop, decode nodes"][1],
            _cpu_p50(lambda: planner._decode_path(h0[:, :n_acc], offsets), repeats))
        out["one field evaluation, 4 x 64 candidates (ms)"] = (
            _cpu_p50(lambda: stacked(None, h0), repeats * 10),
            _cpu_p50(lambda: planner._fast.field(h0), repeats * 10))
    return out


def _coarse_deviation(bundle: Bundle, runs: list[Any], candidates: int) -> dict[str, float]:
    """How far ``solver_step_points=3`` moves plans: every third fixture run, replans at
    tau 0.3, 0.5 and 0.8, with phase alignment on and off."""
    dex, pred, same, n = 0.0, 0.0, 0, 0
    for tolerance in (2.0, 1e9):
        ref = GenerativePlanner(bundle, PlannerConfig(candidates=candidates, tolerance=tolerance))
        coarse = GenerativePlanner(bundle, PlannerConfig(candidates=candidates,
                                                         tolerance=tolerance,
                                                         solver_step_points=3))
        for run in runs[::3]:
            for tau in (0.3, 0.5, 0.8):
                cut = int(tau * run.total_steps)

                def upto(s: Series, cut: int = cut) -> tuple[np.ndarray, np.ndarray]:
                    st, v = np.asarray(s.step), np.asarray(s.value)
                    return st[st <= cut], v[st <= cut]

                h = LiveHistory(train_loss=upto(run.train_loss), lr=upto(run.lr),
                                val_metric=upto(run.val_metric))
                a = ref.plan(h, step=cut, total_steps=run.total_steps)
                b = coarse.plan(h, step=cut, total_steps=run.total_steps)
                dex = max(dex, _max_dex(a, b))
                pred = max(pred, abs((a.predicted_final or 0.0) - (b.predicted_final or 0.0)))
                same += (a.status, a.samples_accepted, a.reason) == (
                    b.status, b.samples_accepted, b.reason)
                n += 1
    return {"plans": n, "max_dex": dex, "max_pred_diff": pred, "same_choice": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="a fitted bundle (default: a short fit of "
                    "the test fixture with the default model sizes)")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--compare-with", type=Path, help="another planner.py to time alongside")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/replan_latency.json"))
    ns = ap.parse_args(argv)
    torch.set_num_threads(1)

    runs = read_sweep(FIXTURE).runs
    if ns.bundle:
        bundle = Bundle.load(ns.bundle)
    else:  # latency depends on the sizes, not on how long the fit ran
        bundle = fit_sweep(runs, FitConfig(max_iterations=50), workers=2, progress=False).bundle
    run = next(r for r in runs if "onecycle-3e-02" in r.run_id)
    assert run.total_steps is not None and run.train_loss and run.lr and run.val_metric
    total, cut = run.total_steps, int(0.3 * run.total_steps)

    def upto(s: Series) -> tuple[np.ndarray, np.ndarray]:
        st, v = np.asarray(s.step), np.asarray(s.value)
        return st[st <= cut], v[st <= cut]

    hist = LiveHistory(train_loss=upto(run.train_loss), lr=upto(run.lr),
                       val_metric=upto(run.val_metric))

    default = GenerativePlanner(bundle, PlannerConfig(candidates=ns.candidates))
    arms: dict[str, Callable[[], Recommendation]] = {
        "planner, default": functools.partial(default.plan, hist, step=cut, total_steps=total),
    }
    for name, cfg in (
        ("planner, all accepted", PlannerConfig(candidates=ns.candidates, tolerance=1e9)),
        ("planner, solver_step_points=3",
         PlannerConfig(candidates=ns.candidates, solver_step_points=3)),
    ):
        arms[name] = functools.partial(GenerativePlanner(bundle, cfg).plan, hist, step=cut,
                                       total_steps=total)
    if ns.compare_with:
        old: Any = _load_module(ns.compare_with)
        old_planner = old.GenerativePlanner(bundle, old.PlannerConfig(candidates=ns.candidates))
        arms[f"compared: {ns.compare_with.name}"] = functools.partial(
            old_planner.plan, hist, step=cut, total_steps=total)

    wall: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    recs: dict[str, Recommendation] = {}
    for i in range(ns.repeats + 3):  # 3 warm-up rounds, dropped
        for name, fn in arms.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            recs[name] = fn()
            if i >= 3:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)

    # Naive: the same candidate latents, decoded one candidate at a time.
    g = bundle.manifest.grid_points
    live = default.live_tensors(hist, total)
    end = int(torch.nonzero(live.mask[0].all(dim=1)).max())
    offsets = torch.arange(g - end, dtype=torch.float32) / (g - 1)
    x, ln = context_batch(live, torch.tensor([0]), torch.tensor([end]),
                          torch.tensor([bundle.manifest.window]),
                          bundle.models[0].config.encoder_direction)
    top = default._top
    naive, naive_cpu, max_diff = [], [], 0.0
    with torch.no_grad():
        zs = []
        for model in bundle.models:
            z_live = model.encode(x, ln)
            z_top = None
            if top is not None:
                n_top = int(top.values.shape[0])
                xt, lt = context_batch(top, torch.arange(n_top), torch.full((n_top,), end),
                                       torch.full((n_top,), bundle.manifest.window),
                                       bundle.models[0].config.encoder_direction)
                z_top = model.encode(xt, lt)
            zs.append(default._candidates(z_live, z_top, torch.Generator().manual_seed(0)))
        for _ in range(max(3, ns.repeats // 8)):  # seconds per round: fewer repeats
            t0, c0 = time.perf_counter(), time.thread_time()
            outs = []
            for model, z in zip(bundle.models, zs, strict=True):
                outs.append(torch.stack([
                    model.decode(model.solve(model.initial_state(z[i : i + 1]), offsets))[0]
                    for i in range(z.shape[0])
                ]))
            naive.append(time.perf_counter() - t0)
            naive_cpu.append(time.thread_time() - c0)
        for model, z, o in zip(bundle.models, zs, outs, strict=True):
            ref = model.decode(model.solve(model.initial_state(z), offsets))
            max_diff = max(max_diff, float((ref - o).abs().max()))

    breakdown = _breakdown(default, bundle, hist, total, ns.repeats)
    deviation = _coarse_deviation(bundle, runs, ns.candidates)

    rows: dict[str, dict[str, float]] = {}
    for name in arms:
        rows[name] = {"wall_p50_ms": 1e3 * _pct(wall[name], 50),
                      "wall_p90_ms": 1e3 * _pct(wall[name], 90),
                      "cpu_p50_ms": 1e3 * _pct(cpu[name], 50),
                      "cpu_p90_ms": 1e3 * _pct(cpu[name], 90),
                      "accepted": recs[name].samples_accepted,
                      "max_dex_vs_default": _max_dex(recs[name], recs["planner, default"]),
                      "pred_diff_vs_default": abs((recs[name].predicted_final or 0.0)
                                                  - (recs["planner, default"].predicted_final
                                                     or 0.0))}
    rows["naive loop (decoding alone)"] = {
        "wall_p50_ms": 1e3 * _pct(naive, 50), "wall_p90_ms": 1e3 * _pct(naive, 90),
        "cpu_p50_ms": 1e3 * _pct(naive_cpu, 50), "cpu_p90_ms": 1e3 * _pct(naive_cpu, 90),
    }
    # Against the arm that solves all 64 candidates, as the naive loop does.
    speedup = statistics.median(naive) / statistics.median(wall["planner, all accepted"])
    p50 = rows["planner, default"]["wall_p50_ms"]
    print(f"one replan at tau 0.3: {ns.candidates} candidates x {bundle.manifest.members} "
          f"members, {g - end} grid points ahead, 1 thread, {ns.repeats} rounds")
    print(f"{'arm':<34} {'wall p50':>8} {'p90':>6} {'cpu p50':>8} {'p90':>6} {'acc':>4} "
          f"{'dex vs default':>14}")
    for name, r in rows.items():
        extra = (f" {int(r['accepted']):>4} {r['max_dex_vs_default']:>14.1e}"
                 if "accepted" in r else "")
        print(f"{name:<34} {r['wall_p50_ms']:>8.1f} {r['wall_p90_ms']:>6.1f} "
              f"{r['cpu_p50_ms']:>8.1f} {r['cpu_p90_ms']:>6.1f}{extra}")
    print(f"speed-up, all accepted vs the naive loop (median wall): {speedup:.0f}x; "
          f"max |batched - naive| = {max_diff:.2e}; "
          f"goal p50 <= 10 ms: {'ok' if p50 <= 10 else 'MISS'} (wall), "
          f"{'ok' if rows['planner, default']['cpu_p50_ms'] <= 10 else 'MISS'} (cpu)")
    print(f"last plan: {recs['planner, default'].status}: {recs['planner, default'].reason}")
    print(f"solver_step_points=3 against the default, over {deviation['plans']} plans of the "
          f"fixture's runs: max {deviation['max_dex']:.1e} dex of lr, predicted final max "
          f"{deviation['max_pred_diff']:.1e}, same status and accepted set in "
          f"{deviation['same_choice']} of {deviation['plans']}")
    print("breakdown, thread CPU p50 ms (each line: the previous way -> the planner's way):")
    for name, (before, after) in breakdown.items():
        print(f"  {name:<58} {before:>6.2f} -> {after:>6.2f}")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps({"arms": rows, "speedup_median": speedup,
                                  "max_abs_diff": max_diff, "candidates": ns.candidates,
                                  "members": bundle.manifest.members,
                                  "horizon_points": g - end, "threads": 1,
                                  "repeats": ns.repeats,
                                  "breakdown_cpu_p50_ms": breakdown,
                                  "solver_step_points_3_deviation": deviation}, indent=2))
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

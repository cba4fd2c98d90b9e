"""One task through the suite's protocol: sweep, tracker, fits, choices, arms on a block.

Every choice (the arms' configurations) is made from the sweep's own runs and the
refined grid's runs on the sweep's seeds; the block's seeds are only trained on.
The schedule-free arm (sf) is chosen like a user would: the task's optimizer swapped
for its schedule-free twin, trained at each of the sweep's peaks on the sweep's seeds,
the best by mean validation metric.
The oracle (o) is the exception by design: it is the best configuration of a
dense grid by its mean TEST metric on the block itself, a ceiling that no method
could reach without those seeds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from benchmarks.suite import stats
from benchmarks.suite.evidence import evidence
from benchmarks.suite.jobs import G_PLANNER, Background, Cache, Job, run_jobs, say
from benchmarks.suite.loop import SCHEDULE_FREE
from benchmarks.suite.surface import best_point
from benchmarks.suite.tasks import Task
from benchmarks.suite.tracking import log_and_read
from tracker_sched.schema import RunRecord

SWEEP_SEEDS = (0, 1)
FIRST_SEED = {"design": 100, "confirm": 200}
MAX_SEEDS = 100  # per block: the blocks' seed ranges must not overlap
REFINE_DEX = 0.25  # (a'): the best family at peak x 10^(+-0.25), 2 seeds each: 4 extra runs
DENSE = 3  # (o): the sweep's peak steps divided by 3, every family
ARMS = ("a", "a'", "q", "sf", "o", "g", "c")
ARM_NAMES = {"a": "sweep's best", "a'": "refined grid", "q": "response surface",
             "sf": "schedule-free", "o": "oracle (ceiling)", "g": "generative advisor",
             "c": "control advisor"}


@dataclass(frozen=True)
class Settings:
    """How a suite invocation runs: where it caches, with how many workers, how small, and
    the invocation's pool of those workers (:func:`~benchmarks.suite.jobs.suite_pool`), if
    it has one."""

    runs_dir: Path
    workers: int = 1
    smoke: bool = False
    pool: Pool | None = field(default=None, compare=False, repr=False)


def sweep_grid(task: Task, smoke: bool) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The sweep's families and peaks; ``--smoke`` keeps 2 families and 3 peaks."""
    if smoke:
        return task.families[:2], task.peaks[:3]
    return task.families, task.peaks


def block_seeds(block: str, n: int) -> list[int]:
    """The seeds of a block: design 100.., confirm 200.. (disjoint for n <= 100)."""
    if not 1 <= n <= MAX_SEEDS:
        raise SystemExit(f"--seeds must be in [1, {MAX_SEEDS}] (the blocks' seeds would "
                         "overlap)")
    return list(range(FIRST_SEED[block], FIRST_SEED[block] + n))


def dense_peaks(peaks: tuple[float, ...], factor: int = DENSE) -> list[float]:
    """The sweep's peaks with ``factor - 1`` log-spaced peaks inserted in every gap."""
    ps = sorted(peaks)
    out = [p * (q / p) ** (j / factor) for p, q in itertools.pairwise(ps)
           for j in range(factor)]
    return [*out, ps[-1]]


def _fit_configs(smoke: bool) -> tuple[Any, Any]:
    from tracker_sched.fit.config import FitConfig
    from tracker_sched.fit.control import ControlFitConfig

    if not smoke:
        return FitConfig(), ControlFitConfig()
    return (FitConfig(grid_points=30, window=8, max_iterations=15, eval_every=5, ensemble=2,
                      batch_size=32),
            ControlFitConfig(grid_points=30, window=8, iterations=15, members=2, batch_size=32))


def _fit(runs: list[RunRecord], folder: Path, kind: str, settings: Settings,
         pool: Pool | None = None) -> Any:
    from tracker_sched.bundle.folder import Bundle

    if not (folder / "bundle.json").exists():
        gen_cfg, ctl_cfg = _fit_configs(settings.smoke)
        t0 = time.perf_counter()
        if kind == "generative":
            from tracker_sched.fit.generative import fit_sweep

            fit_sweep(runs, gen_cfg, workers=settings.workers, progress=False,
                      pool=pool).bundle.save(folder)
        else:
            from tracker_sched.fit.control import fit_control

            fit_control(runs, ctl_cfg, workers=settings.workers, pool=pool).save(folder)
        say(f"  {kind} fit: {time.perf_counter() - t0:.0f} s -> {folder}")
    return Bundle.load(folder)


def _fits(runs: list[RunRecord], root: Path, settings: Settings) -> tuple[Any, Any, float]:
    """Both bundles, and the seconds their fits took together in this call.

    When both fits are needed on several workers they run side by side on one shared
    pool of ``workers`` processes: the generative fit's 4 members and the control fit's 5
    fill the cores together, where one after the other each fit's last round left a core
    idle (5 members on 2 cores is 3 rounds). Still one process per core; members are
    seeded and single-threaded, so the bundles are the ones the sequential fits make.
    """
    folders = {kind: root / f"bundle_{kind}" for kind in ("generative", "control")}
    t0 = time.perf_counter()
    missing = [k for k, f in folders.items() if not (f / "bundle.json").exists()]
    if settings.workers > 1 and len(missing) == 2:
        from benchmarks.suite.jobs import suite_pool

        with contextlib.ExitStack() as stack:
            pool = settings.pool or stack.enter_context(suite_pool(settings.workers))
            # daemon threads (Background): a thread left waiting on a terminated pool must
            # not hold the process open
            threads = [Background(_fit, runs, folders[k], k, settings, pool)
                       for k in ("generative", "control")]
            gen, ctl = (t.result() for t in threads)
    else:
        gen = _fit(runs, folders["generative"], "generative", settings)
        ctl = _fit(runs, folders["control"], "control", settings)
    wall = time.perf_counter() - t0
    if missing:
        say(f"  fits ({' and '.join(missing)}): {wall:.0f} s")
    return gen, ctl, wall


def finals(runs: list[RunRecord], task: Task) -> dict[tuple[str, float], list[float]]:
    """``{(family, peak): [final val per seed]}`` of runs read back from the tracker."""
    out: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        assert r.val_metric is not None
        v = r.val_metric.value[-1] if r.val_metric.value else math.nan
        key = (str(r.config["schedule"]), float(r.config["peak_lr"]))  # type: ignore[arg-type]
        out.setdefault(key, []).append(v)
    return out


def _best(table: dict[tuple[str, float], list[float]], direction: str) -> tuple[str, float]:
    sign = 1.0 if direction == "max" else -1.0
    return max(table, key=lambda k: sign * statistics.fmean(table[k]))


class _Done:
    """A result already computed (what :func:`_background` returns without a pool)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def _background(settings: Settings, fn: Callable[..., Any], *args: Any) -> Background | _Done:
    """``fn(*args)`` in a background thread when the suite has a shared pool (the jobs it
    queues there run beside this thread's), else here and now."""
    if settings.pool is None:
        return _Done(fn(*args))
    return Background(fn, *args)


def run_task(task: Task, block: str, seeds: list[int], settings: Settings) -> dict[str, Any]:
    """Run ``task`` through the protocol on ``seeds`` and return its report section.

    With the invocation's pool (``settings.pool``) the steps that need nothing of each
    other run side by side on it: the oracle's grid while the sweep goes to the tracker,
    the fits in a background thread while plain runs fill the cores their last members
    leave idle (the table in docs/benchmarks.md, "Cost of a run"). The jobs, and so the
    results, are the same as one step after another.
    """
    root = settings.runs_dir / task.name
    cache = Cache(root / ("jobs_smoke.jsonl" if settings.smoke else "jobs.jsonl"))
    smoke, w = settings.smoke, settings.workers
    t_task = time.perf_counter()
    print(f"== {task.name}: {task.about}", flush=True)

    # 1. the sweep, trained, logged to the tracker, read back
    families, peaks = sweep_grid(task, smoke)
    sweep_jobs = [Job(task.name, "run", f, p, s, smoke, keep_record=True)
                  for f in families for p in peaks for s in SWEEP_SEEDS]
    run_jobs(sweep_jobs, cache, w, "sweep", settings.pool)
    # The oracle's dense grid (most of the arms' runs) needs nothing from the sweep: on a
    # shared pool it trains in the background, beside this thread's work. The pool takes
    # jobs first come, first served, so it is queued in two parts: the first seed's grid
    # now, to fill the cores while this process logs to the tracker; the other seeds' once
    # the fits' members are queued, so that the fits start early and the grid's short runs
    # fill whatever core the fits' last members leave idle.
    dense = [(f, p) for f in families for p in dense_peaks(peaks)]
    dense_jobs = [Job(task.name, "run", f, p, s, smoke) for s in seeds for f, p in dense]
    t_arms = time.perf_counter()
    oracle = [_background(settings, run_jobs, dense_jobs[:len(dense)], cache, w,
                          f"oracle's dense grid, seed {seeds[0]}", settings.pool)]
    trained = [RunRecord.model_validate(cache.done[j.key]["record"]) for j in sweep_jobs]
    t0 = time.perf_counter()
    read, tracker_info = log_and_read(trained, task.tracker, root / "tracker", task.name)
    read_s = time.perf_counter() - t0
    runs = read.runs
    if len(runs) != len(trained):
        raise SystemExit(f"{task.name}: the {task.tracker} source read {len(runs)} of "
                         f"{len(trained)} runs; issues: {read.issues}")
    say(f"  read {len(runs)} runs back from {task.tracker} in {read_s:.1f} s")

    # 2. the bundles, fitted in the background: the plain runs of 3 and 4 need none
    fits = _background(settings, _fits, runs, root, settings)

    # 3. choices, from the sweep (and the refined grid's runs on the sweep's seeds)
    table = finals(runs, task)
    a_fam, a_peak = _best(table, task.direction)
    refine = [a_peak * 10 ** (s * REFINE_DEX) for s in (-1, 1)]
    ref_jobs = [Job(task.name, "run", a_fam, p, s, smoke) for p in refine for s in SWEEP_SEEDS]
    sf_jobs = [Job(task.name, "run", SCHEDULE_FREE, p, s, smoke) for p in peaks
               for s in SWEEP_SEEDS]
    # one batch for both: the last job's idle core is paid once
    run_jobs(ref_jobs + sf_jobs, cache, w,
             "refined grid and schedule-free lr selection (sweep seeds)", settings.pool)
    ref_table = {(a_fam, a_peak): table[(a_fam, a_peak)]}
    for p in refine:
        ref_table[(a_fam, p)] = [cache.done[Job(task.name, "run", a_fam, p, s, smoke).key]["val"]
                                 for s in SWEEP_SEEDS]
    r_fam, r_peak = _best(ref_table, task.direction)
    q_point, q_all = best_point(table, task.direction)
    sf_table = {(SCHEDULE_FREE, p): [cache.done[Job(task.name, "run", SCHEDULE_FREE, p, s,
                                                    smoke).key]["val"] for s in SWEEP_SEEDS]
                for p in peaks}
    _, sf_peak = _best(sf_table, task.direction)
    oracle.append(_background(settings, run_jobs, dense_jobs[len(dense):], cache, w,
                              f"oracle's dense grid, other seeds, {block} block",
                              settings.pool))

    # 4. the arms on the block's seeds: the fixed ones now, the advised ones once fitted
    fixed = {"a": (a_fam, a_peak), "a'": (r_fam, r_peak), "q": (q_point.family, q_point.peak),
             "sf": (SCHEDULE_FREE, sf_peak)}
    fixed_jobs = [Job(task.name, "run", f, p, s, smoke) for f, p in fixed.values()
                  for s in seeds]
    dense_keys = {j.key for j in dense_jobs}  # trained by the oracle's thread: not twice
    run_jobs([j for j in fixed_jobs if j.key not in dense_keys], cache, w,
             f"fixed arms, {block} block", settings.pool)
    gen, ctl, fits_wall = fits.result()
    advised = {"g": ("generative", root / "bundle_generative", gen),
               "c": ("control", root / "bundle_control", ctl)}

    def arm_job(arm: str, seed: int) -> Job:
        if arm in fixed:
            f, p = fixed[arm]
            return Job(task.name, "run", f, p, seed, smoke)
        kind, folder, bundle = advised[arm]
        return Job(task.name, kind, a_fam, a_peak, seed, smoke, bundle=str(folder),
                   bundle_tag=bundle.manifest.created_at,
                   planner=G_PLANNER if kind == "generative" else None)

    jobs = [arm_job(arm, s) for s in seeds for arm in ("a", "a'", "q", "sf", "g", "c")]
    jobs += dense_jobs
    run_jobs([arm_job(arm, s) for s in seeds for arm in ("g", "c")], cache, w,
             f"advised arms, {block} block", settings.pool)
    for part in oracle:
        part.result()
    arms_wall = time.perf_counter() - t_arms

    def rows(arm: str) -> list[dict[str, Any]]:
        return [cache.done[arm_job(arm, s).key] for s in seeds]

    sign = 1.0 if task.direction == "max" else -1.0
    dense_mean = {fp: statistics.fmean(
        cache.done[Job(task.name, "run", fp[0], fp[1], s, smoke).key]["test"] for s in seeds)
        for fp in dense}
    o_fam, o_peak = max(dense_mean, key=lambda fp: sign * dense_mean[fp])
    fixed["o"] = (o_fam, o_peak)
    by_arm = {arm: rows(arm) for arm in ARMS}
    ref_test = [r["test"] for r in by_arm["a"]]
    ref_val = [r["val"] for r in by_arm["a"]]
    report_arms: dict[str, Any] = {}
    for arm in ARMS:
        rs = by_arm[arm]
        test = [r["test"] for r in rs]
        entry: dict[str, Any] = {
            "name": ARM_NAMES[arm], "test": test, "val": [r["val"] for r in rs],
            "test_mean": statistics.fmean(test),
            "test_sd": statistics.stdev(test) if len(test) > 1 else math.nan,
            "diverged": sum(r["state"] != "finished" for r in rs),
            "compute_s": sum(r["wall_s"] for r in rs),
        }
        if arm in fixed:
            entry["config"] = {"schedule": fixed[arm][0], "peak_lr": fixed[arm][1]}
        else:
            entry["status"] = _count(r["status"] for r in rs)
            entry["reasons"] = _count(r["reason"].split(";")[0][:80] for r in rs)
            entry["overhead_share"] = (sum(r["advisor_s"] for r in rs)
                                       / max(1e-9, sum(r["wall_s"] for r in rs)))
            entry["lr_curves"] = {str(r["seed"]): [r["lr_steps"], r["lr"]] for r in rs[:4]}
            if arm == "g":  # which planner settings (g) ran: part of its jobs' cache key
                entry["planner"] = json.loads(G_PLANNER)
        if arm != "a":
            entry["gain"] = stats.paired(stats.gains(test, ref_test, task.direction))
            entry["gain_val"] = stats.paired(
                stats.gains([r["val"] for r in rs], ref_val, task.direction))
        report_arms[arm] = entry
    o_gain = report_arms["o"]["gain"]["mean"]
    for arm in ("a'", "q", "sf", "g", "c"):
        report_arms[arm]["headroom_share"] = stats.headroom_share(
            report_arms[arm]["gain"]["mean"], o_gain)

    sweep_rows = [cache.done[j.key] for j in sweep_jobs]
    return {
        "about": task.about, "tracker": task.tracker, "direction": task.direction,
        "unit": task.unit, "steps": task.smoke_steps if smoke else task.steps,
        "families": list(families), "peaks": list(peaks), "seeds": seeds,
        "sweep": {"runs": len(runs), "seeds": list(SWEEP_SEEDS),
                  "issues": [i.model_dump(mode="json") for i in read.issues],
                  "finals": {f"{f} {p:g}": v for (f, p), v in sorted(table.items())},
                  "bundle_best_config": gen.manifest.sweep.best_config},
        "choices": {
            "a": {"schedule": a_fam, "peak_lr": a_peak},
            "a'": {"schedule": r_fam, "peak_lr": r_peak, "extra_runs": len(ref_jobs),
                   "candidates": {f"{p:.4g}": statistics.fmean(v)
                                  for (_, p), v in sorted(ref_table.items())}},
            "q": {"schedule": q_point.family, "peak_lr": q_point.peak,
                  "predicted": q_point.predicted, "where": q_point.where,
                  "families": [{"family": s.family, "peak_lr": s.peak, "predicted": s.predicted,
                                "where": s.where, "coef": s.coef} for s in q_all]},
            "sf": {"schedule": SCHEDULE_FREE, "peak_lr": sf_peak, "extra_runs": len(sf_jobs),
                   "at_edge": sf_peak in (min(peaks), max(peaks)),
                   "candidates": {f"{p:.4g}": statistics.fmean(v)
                                  for (_, p), v in sorted(sf_table.items())}},
            "o": {"schedule": o_fam, "peak_lr": o_peak, "grid_runs_per_seed": len(dense),
                  "grid_mean_test": {f"{f} {p:.4g}": v for (f, p), v in dense_mean.items()}},
        },
        "arms": report_arms,
        "evidence": evidence(gen.manifest, ctl.manifest, runs),
        "time_s": {
            "sweep_compute": sum(r["wall_s"] for r in sweep_rows),
            "tracker_log": tracker_info.get("log_s"), "tracker_read": read_s,
            "fit_generative": gen.manifest.report.wall_s,
            "fit_control": ctl.manifest.report.wall_s,
            "fits_wall_this_call": fits_wall,
            "refine_compute": sum(cache.done[j.key]["wall_s"] for j in ref_jobs),
            "schedule_free_selection_compute": sum(cache.done[j.key]["wall_s"] for j in sf_jobs),
            "arms_compute": sum(cache.done[j.key]["wall_s"] for j in jobs),
            # from the oracle grid's first job to the last arm's: it overlaps the tracker
            # and the fits, which run beside it
            "arms_span_this_call": arms_wall, "task_wall_this_call": time.perf_counter() - t_task,
        },
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out

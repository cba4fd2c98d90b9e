"""The multi-task suite's sweeps (``benchmarks.suite``), as early-stopping tasks.

Per suite task (``friedman``: val MSE, minimised; ``digits-sgd``, ``digits-cosine`` and
``mnist1d-mlp``: val accuracy, maximised) three sweeps of real training runs, each run
trained by the suite's own ``Task.train`` through its jobs cache:

- **fit**: the suite's sweep, exactly the one the suite fits on (its families x peaks,
  seeds 0 and 1);
- **design** (pruned): the same families x peaks on two other seeds, 10 and 11;
- **confirmation** (pruned): the suite's dense grid (``protocol.dense_peaks``: the peaks'
  gaps split in 3, every family) on one more seed, 12: other seeds *and* mostly other
  configurations than the fitted sweep.

The bundle is always fitted on the fit sweep; the pruned sweeps never share a seed with it.
Runs are cached under ``<runs_dir>/<task>/jobs.jsonl`` (the suite's ``Cache``, one line
per run with its record), so a rerun trains nothing twice.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.early_stopping.sweeps import Task
from benchmarks.suite.jobs import Cache, Job, run_jobs
from benchmarks.suite.protocol import SWEEP_SEEDS, dense_peaks, sweep_grid
from benchmarks.suite.tasks import get
from tracker_sched.schema import RunRecord

SUITE_TASKS = ("friedman", "digits-sgd", "digits-cosine", "mnist1d-mlp")
DESIGN_SEEDS = (10, 11)
CONFIRM_SEED = 12
RUNS_DIR = Path("runs/early_stopping")


def sweep_jobs(name: str, smoke: bool = False) -> dict[str, list[Job]]:
    """The jobs of task ``name``'s three sweeps: ``{"fit" | "design" | "confirm": jobs}``."""
    task = get(name)
    families, peaks = sweep_grid(task, smoke)

    def grid(ps: list[float] | tuple[float, ...], seeds: tuple[int, ...]) -> list[Job]:
        return [Job(name, "run", f, p, s, smoke, keep_record=True)
                for s in seeds for f in families for p in ps]

    return {"fit": grid(peaks, SWEEP_SEEDS), "design": grid(peaks, DESIGN_SEEDS),
            "confirm": grid(dense_peaks(peaks), (CONFIRM_SEED,))}


def suite_task(name: str, runs_dir: Path = RUNS_DIR, workers: int = 1,
               smoke: bool = False) -> Task:
    """Train (or read from the cache) the three sweeps of suite task ``name``.

    Args:
        name: a suite task (``benchmarks.suite.tasks.TASKS``).
        runs_dir: the cache root; the runs go to ``runs_dir/name/jobs.jsonl``
            (``jobs_smoke.jsonl`` with ``smoke``).
        workers: training processes (the suite's spawn pool when > 1).
        smoke: the suite's ``--smoke`` budgets and grid (2 families x 3 peaks).

    Returns:
        The task, its three sweeps as lists of run records.
    """
    jobs = sweep_jobs(name, smoke)
    cache = Cache(runs_dir / name / ("jobs_smoke.jsonl" if smoke else "jobs.jsonl"))
    run_jobs([j for js in jobs.values() for j in js], cache, workers, f"{name} sweeps")

    def records(block: str) -> list[RunRecord]:
        recs = [RunRecord.model_validate(cache.done[j.key]["record"]) for j in jobs[block]]
        # MNIST-1D run ids carry the peak to one digit (0.01 and the dense grid's 0.0144 are
        # both "1e-02"): a clash would drop a run as a duplicate, so such ids get the peak.
        ids = [r.run_id for r in recs]
        return [r if ids.count(r.run_id) == 1 else r.model_copy(
            update={"run_id": f"{r.run_id}-p{j.peak:.4g}", "name": f"{r.run_id}-p{j.peak:.4g}"})
            for r, j in zip(recs, jobs[block], strict=True)]

    fit, design, confirm = records("fit"), records("design"), records("confirm")
    return Task(name, lambda: fit, lambda: design, lambda: confirm)


__all__ = ["CONFIRM_SEED", "DESIGN_SEEDS", "RUNS_DIR", "SUITE_TASKS", "suite_task",
           "sweep_jobs"]

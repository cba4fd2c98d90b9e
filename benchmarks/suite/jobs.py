"""Training jobs of the suite, run in a pool and cached as JSON Lines.

A job is a plain parametric run (``kind="run"``: a family at a peak on a seed)
or an advised run (``kind="generative"`` / ``"control"``: the Advisor drives
the lr from a bundle). Its cache key says what it trained, so the same
parametric run serves every arm that asks for it (the sweep's best is also a
point of the oracle's grid) and a stopped suite resumes where it was:
``runs/suite/<task>/jobs.jsonl`` gets one line per finished job.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from benchmarks.suite.tasks import get

_BUNDLES: dict[str, Any] = {}

#: The generative planner's settings the suite's (g) arm runs with, spelled out so that its
#: cache key says them: (g) rows cached without ``planner`` ran ``lr_target="absolute"``,
#: the planner's default before the suite's variants chose "relative"
#: (``benchmarks/suite/variants.py``).
G_PLANNER = '{"lr_target": "relative"}'


@dataclass(frozen=True)
class Job:
    """One training run to do. ``bundle``/``bundle_tag``: an advised run's bundle folder and
    its identity (the manifest's ``created_at``), so a refitted bundle is a new job.
    ``planner``: generative planner settings spelled out as JSON, whether or not they are
    the defaults (``'{"lr_target": "relative"}'``, ``benchmarks/suite/variants.py``), so the
    key says what the run was advised with; a setting left out takes the code's default,
    which the key does not record."""

    task: str
    kind: str
    family: str
    peak: float
    seed: int
    smoke: bool = False
    keep_record: bool = False
    bundle: str | None = None
    bundle_tag: str | None = None
    planner: str | None = None

    @property
    def key(self) -> str:
        if self.kind == "run":
            return f"run|{self.family}|{self.peak:.6g}|{self.seed}"
        if self.planner is None:
            return f"{self.kind}|{self.seed}|{self.bundle_tag}"
        return f"{self.kind}|{self.seed}|{self.bundle_tag}|{self.planner}"


class Cache:
    """Finished jobs by key, backed by an append-only JSON Lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # several threads of a task put rows at once
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: redo that job
                        continue
                    self.done[row["key"]] = row

    def put(self, row: dict[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
            self.done[row["key"]] = row


class Background:
    """``fn(*args)`` in a daemon thread; :meth:`result` waits for it and re-raises its error.

    A daemon thread, not a ``concurrent.futures`` one: if the main thread stops (an error,
    Ctrl-C), the suite's pool is terminated and a thread still waiting on it must not keep
    the process alive (a terminated pool never answers its waiting callers).
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._out: Any = None
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._out = fn(*args)
        except BaseException as exc:  # handed to the caller by result()
            self._err = exc

    def result(self) -> Any:
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out


_SAY = threading.Lock()


def say(line: str) -> None:
    """Print ``line`` whole: the threads of a task print at once, and ``print`` writes the
    text and its newline separately, so two of its lines could run together."""
    with _SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _init() -> None:
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def suite_pool(workers: int) -> Iterator[Pool | None]:
    """One pool of ``workers`` single-threaded processes for a whole suite invocation (None
    for one worker): every task's sweep, refined grid, schedule-free selection, fits and
    arms run on it, so its processes start and import torch and the tasks once, not five
    times per task. Terminated on an error or an interrupt, closed and joined otherwise.
    """
    if workers <= 1:
        yield None
        return
    from tracker_sched.util.workers import spawn_pool

    pool = spawn_pool(workers, initializer=_init)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


def execute(job: Job) -> dict[str, Any]:
    """Train ``job`` in this process and return its cache row."""
    _init()
    task = get(job.task)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if job.kind == "run":
        out = task.train(job.family, job.peak, job.seed, smoke=job.smoke)
    else:
        from tracker_sched.advising.advisor import Advisor
        from tracker_sched.bundle.folder import Bundle
        from tracker_sched.planning.generative import PlannerConfig

        assert job.bundle is not None
        bundle = _BUNDLES.get(job.bundle)
        if bundle is None:
            bundle = _BUNDLES[job.bundle] = Bundle.load(job.bundle)
        total = task.smoke_steps if job.smoke else task.steps
        config = None if job.planner is None else PlannerConfig(**json.loads(job.planner))
        adv = Advisor(bundle, total_steps=total, mode=job.kind,  # type: ignore[arg-type]
                      config=config)
        spent = [0.0]

        def lr_fn(k: int) -> float:
            t = time.perf_counter()
            value = adv.lr(k)
            spent[0] += time.perf_counter() - t
            return value

        def observer(step: int, loss: float, val: float, lr: float) -> None:
            t = time.perf_counter()
            adv.observe(step, train_loss=loss if math.isfinite(loss) else None,
                        val_metric=val, lr=lr)
            spent[0] += time.perf_counter() - t

        out = task.train(job.family, job.peak, job.seed, smoke=job.smoke, lr_fn=lr_fn,
                         observer=observer)
        lr = out.record.lr
        assert lr is not None
        every = max(1, len(lr.step) // 25)
        extra = {"advisor_s": spent[0], "status": adv.plan.status,
                 "reason": adv.plan.reason[:200], "replans": adv.replans,
                 "predicted_final": adv.plan.predicted_final,
                 "lr_steps": lr.step[::every], "lr": lr.value[::every]}
    row: dict[str, Any] = {
        "key": job.key, **{k: v for k, v in asdict(job).items() if k != "keep_record"},
        "val": out.val, "test": out.test, "state": out.record.state,
        "wall_s": time.perf_counter() - t0, **extra,
    }
    if job.keep_record:
        row["record"] = out.record.model_dump(mode="json")
    return row


def run_jobs(jobs: Iterable[Job], cache: Cache, workers: int, label: str,
             pool: Pool | None = None) -> None:
    """Run every job not in ``cache``, caching each row: on the caller's open ``pool``,
    else (``workers`` > 1) on a spawn pool of this call's own."""
    todo: list[Job] = []
    seen: set[str] = set()
    for j in jobs:
        if j.key not in cache.done and j.key not in seen:
            todo.append(j)
            seen.add(j.key)
    if not todo:
        return
    say(f"  {label}: {len(todo)} runs to train")
    t0 = last = time.perf_counter()

    def done(i: int, row: dict[str, Any]) -> None:
        nonlocal last
        cache.put(row)
        now = time.perf_counter()
        if now - last > 60 or i == len(todo):
            say(f"    {label}: {i}/{len(todo)} in {now - t0:.0f} s")
            last = now

    if pool is not None:
        for i, row in enumerate(pool.imap_unordered(execute, todo), start=1):
            done(i, row)
        return
    if workers <= 1:
        for i, j in enumerate(todo, start=1):
            done(i, execute(j))
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init) as pool:
        for i, row in enumerate(pool.imap_unordered(execute, todo), start=1):
            done(i, row)

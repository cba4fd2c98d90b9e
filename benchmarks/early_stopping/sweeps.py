"""The sweeps the early-stopping benchmark replays, and what each arm needs from them.

Tasks (each: a sweep the bundle is fitted on, a design sweep and a confirmation sweep that
are pruned; the pruned sweeps never share configurations or seeds with the fitted one):

- ``syn-acc``: tests/synthetic.py's dynamics, val accuracy, random configurations (family,
  log-uniform peak, warm-up, floor) drawn afresh for each sweep;
- ``syn-loss``: other constants (slower progress, a larger noise floor), val loss (min);
- ``syn-close``: peaks drawn from a narrow band, so finals lie close together;
- ``mnist1d-cnn``: the real 48-run MNIST-1D CNN sweep in tests/fixtures (24 configurations
  x 2 seeds): fitted on seed 0 and pruned on seed 1 (design), and the reverse (confirmation).

:class:`Replay` holds, per pruned run, the validation reports every arm sees, its final,
and the bundle's forecast of the final at each decision point (computed in one batch from
the run's grid; the decision at grid point ``e`` is charged at the step where cell ``e``
ends, so no arm sees a value before it pays for it).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tests.synthetic import SyntheticTask, schedule, simulate
from tracker_sched.bundle.folder import Bundle
from tracker_sched.data.grid import SweepTensors, to_grid
from tracker_sched.data.validation import validate_sweep
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.fit.stop_calibration import member_finals
from tracker_sched.model.latent import ModelConfig
from tracker_sched.model.stop_odds import StopCalibration
from tracker_sched.schema import RunRecord
from tracker_sched.sources.files import read_sweep

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "cnn_sweep_small.jsonl"
FIT = FitConfig(grid_points=50, window=8, max_iterations=200, ensemble=4,
                model=ModelConfig(latent_dim=8, ode_dim=16, hidden=32, encoder_hidden=32))
SYN_RUNS = 32
SYN_STEPS = 400


@dataclass(frozen=True)
class SynTask:
    name: str
    task: SyntheticTask
    metric: str  # "val_acc" | "val_loss"
    log_peak: tuple[float, float]


SYN_TASKS = (
    SynTask("syn-acc", SyntheticTask(), "val_acc", (-3.3, -0.8)),
    SynTask("syn-loss", SyntheticTask(s0=3.0, b=0.04, lr_crit=8e-3), "val_loss", (-3.3, -0.8)),
    SynTask("syn-close", SyntheticTask(c=1.5, k_acc=0.4), "val_acc", (-2.6, -1.6)),
)


def _lr_fn(family: str, peak: float, tau: np.ndarray) -> np.ndarray:
    """Families named ``base|warmup|floor`` (the random configurations' extra knobs)."""
    base, warm, floor = family.split("|")
    return schedule(base, peak, tau, warmup=float(warm), floor=float(floor))


def random_sweep(t: SynTask, seed: int, runs: int = SYN_RUNS) -> list[RunRecord]:
    """``runs`` random configurations of task ``t``, one seed each (seeded by ``seed``)."""
    rng = np.random.default_rng([zlib.crc32(t.name.encode()), seed])
    out = []
    for i in range(runs):
        base = str(rng.choice(["constant", "cosine", "step"]))
        family = f"{base}|{rng.uniform(0, 0.1):.3f}|{rng.uniform(0.0, 0.2):.3f}"
        peak = float(10 ** rng.uniform(*t.log_peak))
        rec = simulate(t.task, family, peak, seed * 1000 + i, total_steps=SYN_STEPS,
                       metric=t.metric, lr_fn=_lr_fn)  # type: ignore[arg-type]
        out.append(rec.model_copy(update={"run_id": f"{t.name}-s{seed}-{i}",
                                          "name": f"{t.name}-s{seed}-{i}"}))
    return out


def mnist_sweeps() -> dict[int, list[RunRecord]]:
    """The fixture sweep's runs by seed."""
    runs = read_sweep(FIXTURE).runs
    return {s: [r for r in runs if r.config.get("seed") == s] for s in (0, 1)}


def fit_bundle(records: list[RunRecord], seed: int = 0) -> Bundle:
    torch.set_num_threads(1)
    cfg = FIT.model_copy(update={"seed": seed})
    return fit_sweep(records, cfg, workers=1, progress=False).bundle


@dataclass
class Replay:
    """A pruned sweep as every arm sees it."""

    name: str
    direction: Literal["max", "min"]
    total_steps: int
    val_steps: list[np.ndarray]  # per run: the steps of its validation reports
    val_values: list[np.ndarray]
    final: np.ndarray  # (runs,) the last validation value
    decide_steps: np.ndarray  # (K,) tracker-sched's decision steps (cell ends)
    tau: np.ndarray  # (K,) progress of each decision's window end
    mean: np.ndarray  # (runs, K) forecast of the final, transformed units
    spread: np.ndarray  # (runs, K)
    stopping: StopCalibration | None  # the bundle's stop calibration (the odds' scale)
    bundle: Bundle | None = None  # None once sent to a replay process

    @property
    def runs(self) -> int:
        return int(self.final.size)

    def points(self, final: float | None = None) -> float:
        """Regret units: accuracy in points (x100); a loss in percent of ``final``."""
        if self.direction == "max":
            return 100.0
        return 100.0 / abs(final) if final else 100.0


def build_replay(name: str, bundle: Bundle, records: list[RunRecord]) -> Replay:
    """Validate the pruned sweep and forecast every run at every decision point."""
    m = bundle.manifest
    runs = validate_sweep(records).runs
    total = {r.total_steps for r in runs}
    assert len(total) == 1, f"{name}: one budget per sweep, got {total}"
    t = total.pop()
    grid = to_grid(runs, m.grid_points, m.normalisation.transforms)
    data = SweepTensors.from_grid(grid, m.normalisation)
    g = m.grid_points
    ends = np.arange(m.window - 1, g - 1)
    n = len(runs)
    finals = member_finals(bundle.models, m.normalisation, data, np.tile(np.arange(n), ends.size),
                           np.repeat(ends, n), m.window).reshape(-1, ends.size, n)
    spread = finals.std(axis=0) if finals.shape[0] > 1 else np.zeros(finals.shape[1:])
    decide = np.minimum(t, np.ceil((ends + 0.5) / (g - 1) * t)).astype(np.int64)
    vals = [r.series["val_metric"] for r in runs]
    return Replay(
        name=name, direction=m.metrics.direction, total_steps=int(t),
        val_steps=[np.asarray(v.step, dtype=np.int64) for v in vals],
        val_values=[np.asarray(v.value, dtype=np.float64) for v in vals],
        final=np.asarray([float(v.value[-1]) for v in vals]),
        decide_steps=decide, tau=ends / (g - 1), mean=finals.mean(axis=0).T,
        spread=spread.T, stopping=m.stopping, bundle=bundle)


@dataclass(frozen=True)
class Task:
    name: str
    fit: Callable[[], list[RunRecord]]
    design: Callable[[], list[RunRecord]]
    confirm: Callable[[], list[RunRecord]]


def tasks() -> list[Task]:
    out = [Task(t.name, functools.partial(random_sweep, t, 1),
                functools.partial(random_sweep, t, 2), functools.partial(random_sweep, t, 3))
           for t in SYN_TASKS]
    return out


__all__ = ["FIT", "SYN_TASKS", "Replay", "Task", "build_replay", "fit_bundle", "mnist_sweeps",
           "random_sweep", "tasks"]

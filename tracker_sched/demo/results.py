"""The demo's configuration and results: what the stages (:mod:`tracker_sched.demo.run`)
produce and the report (:mod:`tracker_sched.demo.report`) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tracker_sched.errors import InputError
from tracker_sched.fit.config import FitConfig
from tracker_sched.model.latent import ModelConfig

FIRST_COMPARE_SEED = 100


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and fits. ``full()`` is the README's demo, ``quick()`` the test's."""

    folder: Path
    schedules: tuple[str, ...]
    peaks: tuple[float, ...]
    sweep_seeds: tuple[int, ...]
    compare_seeds: tuple[int, ...]
    epochs: int
    fit: FitConfig
    workers: int = 2

    @classmethod
    def full(cls, folder: str | Path, *, seeds: int = 3, workers: int = 2) -> DemoConfig:
        """24 runs of 30 epochs (3 of the benchmark's 4 families at its 4 best peaks, 2 seeds),
        the default fit (4 cross-fitted members) capped at 300 iterations (the benchmark's
        members early-stopped at 250-400; 300 keeps the demo near 3 minutes on 2 idle
        cores), and ``seeds`` comparison seeds per arm."""
        return cls(
            folder=Path(folder), schedules=("constant", "cosine", "onecycle"),
            peaks=(3e-3, 1e-2, 3e-2, 1e-1), sweep_seeds=(0, 1),
            compare_seeds=_seeds(seeds), epochs=30,
            fit=FitConfig(max_iterations=300), workers=workers,
        )

    @classmethod
    def quick(cls, folder: str | Path, *, seeds: int = 1, workers: int = 2) -> DemoConfig:
        """Every stage at toy size (well under a minute): what the tests run."""
        return cls(
            folder=Path(folder), schedules=("constant", "onecycle"), peaks=(3e-3, 1e-2, 3e-2),
            sweep_seeds=(0,), compare_seeds=_seeds(seeds), epochs=3,
            fit=FitConfig(
                max_iterations=30, eval_every=10, batch_size=16, grid_points=40, window=10,
                ensemble=1, model=ModelConfig(latent_dim=4, ode_dim=8, hidden=16,
                                              encoder_hidden=16, step_points=2),
            ),
            workers=workers,
        )


def _seeds(n: int) -> tuple[int, ...]:
    if n < 1:
        raise InputError(f"--seeds must be at least 1, got {n}")
    return tuple(range(FIRST_COMPARE_SEED, FIRST_COMPARE_SEED + n))


@dataclass
class ArmRun:
    """One comparison run: an arm ("parametric" or "advisor") on one seed."""

    arm: str
    seed: int
    run_id: str
    final_val: float
    final_test: float
    steps: list[int]
    lr: list[float]
    val: list[float]
    wall_s: float
    status: str = ""


@dataclass
class DemoResult:
    folder: Path
    tracking_uri: str
    experiment_id: str
    sweep_run_id: str
    compare_run_id: str
    model_uri: str
    best_schedule: str
    best_peak_lr: float
    runs: list[ArmRun] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)

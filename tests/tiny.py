"""Small shared test tools: the smallest fit that still exercises every code path (seconds,
not minutes), and a logged run cut at a step as a live history."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracker_sched.fit.config import FitConfig
from tracker_sched.model.latent import ModelConfig
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import RunRecord, Series

#: The shared fixture sweep: 48 runs of a small CNN on MNIST-1D (tests/fixtures).
FIXTURE = Path(__file__).parent / "fixtures" / "cnn_sweep_small.jsonl"


def tiny_config(**overrides: object) -> FitConfig:
    base: dict[str, object] = {
        "max_iterations": 30, "eval_every": 10, "batch_size": 16, "grid_points": 40,
        "window": 10, "ensemble": 1,
        "model": ModelConfig(latent_dim=4, ode_dim=8, hidden=16, encoder_hidden=16,
                             step_points=2),
    }
    base.update(overrides)
    return FitConfig(**base)  # type: ignore[arg-type]


def history_until(run: RunRecord, upto: int) -> LiveHistory:
    """What a live run following ``run`` has logged by step ``upto``."""
    def part(s: Series | None) -> tuple[np.ndarray, np.ndarray]:
        assert s is not None
        st, v = np.asarray(s.step), np.asarray(s.value)
        return st[st <= upto], v[st <= upto]

    return LiveHistory(train_loss=part(run.train_loss), lr=part(run.lr),
                       val_metric=part(run.val_metric))


def logged_rows(record: RunRecord) -> list[tuple[int, dict[str, float]]]:
    """A run as its training loop logged it: (step, the metrics logged at that step), in order."""
    rows: dict[int, dict[str, float]] = {}
    for role in ("train_loss", "val_metric", "lr"):
        series = record.series(role)  # type: ignore[arg-type]
        assert series is not None
        for s, v in zip(series.step, series.value, strict=True):
            rows.setdefault(s, {})[role] = v
    return sorted(rows.items())

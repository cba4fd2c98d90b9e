"""The smallest fit that still exercises every code path (seconds, not minutes)."""

from __future__ import annotations

from tracker_sched.fit import FitConfig
from tracker_sched.model import ModelConfig


def tiny_config(**overrides: object) -> FitConfig:
    base: dict[str, object] = {
        "max_iterations": 30, "eval_every": 10, "batch_size": 16, "grid_points": 40,
        "window": 10, "ensemble": 1,
        "model": ModelConfig(latent_dim=4, ode_dim=8, hidden=16, encoder_hidden=16,
                             step_points=2),
    }
    base.update(overrides)
    return FitConfig(**base)  # type: ignore[arg-type]

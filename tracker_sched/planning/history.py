"""What a live run has logged so far: the planners' input, and the one warm-up rule.
Torch-free (the remote client and the wire format build one without torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LiveHistory:
    """What a live run has logged so far; each series on its own steps."""

    train_loss: tuple[np.ndarray, np.ndarray]  # (steps, values)
    lr: tuple[np.ndarray, np.ndarray]
    val_metric: tuple[np.ndarray, np.ndarray]

    @property
    def first_step(self) -> int | None:
        """The first step any series logged (the run's first observation); None: none yet."""
        firsts = [int(steps[0]) for steps, _ in (self.train_loss, self.lr, self.val_metric)
                  if len(steps)]
        return min(firsts) if firsts else None


def spans_window(grid_points: int, window: int, step: int, total_steps: int,
                 first_step: int = 0) -> bool:
    """Whether what a run logged from ``first_step`` to ``step`` spans a context window of
    ``window`` points on a grid of ``grid_points`` over ``total_steps`` (the warm-up rule of
    :func:`tracker_sched.advising.serving.window_ready`, for a bundle's grid and window)."""
    return (step - first_step) / total_steps * (grid_points - 1) >= window - 1


__all__ = ["LiveHistory", "spans_window"]

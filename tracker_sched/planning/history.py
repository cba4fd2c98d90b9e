"""What a live run has logged so far: the planners' input. Torch-free (the remote client
and the wire format build one without torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LiveHistory:
    """What a live run has logged so far; each series on its own steps."""

    train_loss: tuple[np.ndarray, np.ndarray]  # (steps, values)
    lr: tuple[np.ndarray, np.ndarray]
    val_metric: tuple[np.ndarray, np.ndarray]

"""Weights & Biases: the sweep callback for runs launched by ``wandb agent``.

Importing this package does not import wandb; the callback does, when built.
"""

from tracker_sched.integrations.wandb.callback import STATUS_CODES, SweepCallback

__all__ = ["STATUS_CODES", "SweepCallback"]

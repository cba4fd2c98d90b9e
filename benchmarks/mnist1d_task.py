"""The MNIST-1D benchmark task; the code lives in ``tracker_sched.tasks.mnist1d``.

It moved into the package so that ``tracker-sched demo`` can train the same runs
without the (uninstalled) ``benchmarks`` folder. This module re-exports it so the
benchmarks and their tests keep one import path.
"""

from __future__ import annotations

from tracker_sched.tasks.mnist1d import (
    DEFAULT_PEAKS,
    MLP,
    MODELS,
    N_CLASSES,
    N_TRAIN,
    N_VAL,
    SCHEDULE_FNS,
    SCHEDULES,
    SEQ_LEN,
    WEIGHT_DECAY,
    ConvNet,
    LrFn,
    Observer,
    Splits,
    TrainResult,
    accuracy,
    build_model,
    constant_lr,
    cosine_lr,
    load_splits,
    make_run_id,
    onecycle_lr,
    schedule_lr,
    step_lr,
    steps_per_epoch,
    train_run,
)

__all__ = [
    "DEFAULT_PEAKS",
    "MLP",
    "MODELS",
    "N_CLASSES",
    "N_TRAIN",
    "N_VAL",
    "SCHEDULES",
    "SCHEDULE_FNS",
    "SEQ_LEN",
    "WEIGHT_DECAY",
    "ConvNet",
    "LrFn",
    "Observer",
    "Splits",
    "TrainResult",
    "accuracy",
    "build_model",
    "constant_lr",
    "cosine_lr",
    "load_splits",
    "make_run_id",
    "onecycle_lr",
    "schedule_lr",
    "step_lr",
    "steps_per_epoch",
    "train_run",
]

"""The trial of the Tune sweep in tune_sweep.py, in a module of its own: Ray's workers import
it to run a trial, and it imports only numpy and Tune (not MLflow, which the driver's checks
need: that import alone costs a worker seconds before its first trial)."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import tune

REPORT_EVERY = 40


def trainable(spec: dict[str, Any], advisor: Any) -> None:
    """One trial: the synthetic dynamics of tests/synthetic.py, stepped under the lr it
    follows (its own schedule, or the advisor's), reported every ``REPORT_EVERY`` steps."""
    from tests.synthetic import SyntheticTask, schedule

    task = SyntheticTask()
    total = int(spec["total_steps"])
    own = schedule(spec["family"], spec["peak_lr"], np.arange(total + 1) / total)
    rng = np.random.default_rng(spec["seed"])
    lrs: list[float] = []
    for step in range(total + 1):
        lr = float(advisor.lr(step)) if spec["advised"] else float(own[step])
        lrs.append(lr)
        if step == 0 or step % REPORT_EVERY:
            continue
        loss, acc = task.curves(np.asarray(lrs))
        metrics = {"step": step, "lr": lr,
                   "train_loss": float(loss[-1] * np.exp(0.03 * rng.standard_normal())),
                   "val_acc": float(acc[-1] + 0.003 * rng.standard_normal())}
        advisor.observe(step, train_loss=metrics["train_loss"], lr=lr,
                        val_metric=metrics["val_acc"])
        tune.report(metrics)

"""The demo's MLflow store: pointing MLflow at it, keeping MLflow quiet, logging a run.

The stages (:mod:`tracker_sched.demo.run`) train; this module is how what they trained
reaches MLflow. Everything here imports mlflow inside functions (the ``demo`` extra).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from tracker_sched.tasks.mnist1d import TrainResult

#: The MLflow metric key of each role, as the task logs it.
METRIC_KEYS = {"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"}


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at the demo's store, then restore the caller's.

    MLflow keeps the URI in module state and mirrors it into MLFLOW_TRACKING_URI;
    both are put back so that an in-process caller (a notebook, a test) is unaffected.
    """
    import os

    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before, env_before = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets
        if env_before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Keep the demo's output to its own lines: MLflow's info logs, download bars and
    model-logging hints (input examples, cloudpickle) say nothing about the demo."""
    import os
    import warnings

    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
            yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def describe(config: dict[str, Any], what: str) -> str:
    """A run's description (``mlflow.note.content``): what it is and what it logs."""
    return (f"{what}: MNIST-1D {config.get('model', 'cnn').upper()}, schedule "
            f"{config.get('schedule')} at peak lr {config.get('peak_lr'):g}, seed "
            f"{config.get('seed')}, {config.get('epochs')} epochs. Metrics: train_loss, lr (the "
            "lr the optimizer applied), val_acc and test_acc (fractions, 0 to 1).")


def log_run(client: MlflowClient, experiment_id: str, parent_id: str, result: TrainResult,
             tags: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """One finished training run as an MLflow child run: params, histories, final test acc."""
    from mlflow.entities import Metric, Param

    rec = result.record
    what = {"sweep": "Sweep run", "parametric": "Comparison arm, the sweep's best schedule"}
    run = client.create_run(experiment_id, run_name=rec.run_id, tags={
        "mlflow.parentRunId": parent_id, "tracker_sched.run_id": rec.run_id,
        "mlflow.note.content": describe(rec.config, what.get(
            tags.get("tracker_sched.demo", ""), "Run")), **tags})
    rid: str = run.info.run_id
    params = [Param(k, str(v)) for k, v in rec.config.items()]
    params.append(Param("total_steps", str(rec.total_steps)))
    params.extend(Param(k, v) for k, v in (extra or {}).items())
    t0 = int(time.time() * 1000)
    metrics: list[Metric] = []
    for role, key in METRIC_KEYS.items():
        series = rec.series(role)  # type: ignore[arg-type]
        assert series is not None  # train_run logs all three
        metrics.extend(Metric(key, float(v), t0 + i, int(s))
                       for i, (s, v) in enumerate(zip(series.step, series.value, strict=True)))
    last = rec.val_metric.step[-1] if rec.val_metric and rec.val_metric.step else 0
    metrics.append(Metric("test_acc", float(result.final_test_acc), t0 + len(metrics), last))
    for i in range(0, max(len(metrics), 1), 900):  # log_batch takes 1,000 entities at most
        client.log_batch(rid, metrics=metrics[i:i + 900], params=params if i == 0 else [])
    client.set_terminated(rid, status="FINISHED" if rec.state == "finished" else "FAILED")
    return rid

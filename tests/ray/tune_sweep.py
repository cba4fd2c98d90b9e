"""A 16-trial Tune sweep over synthetic training curves, shared by the local and the
two-node tests: the trainable, the run, and the checks of what reached MLflow.

The trainable is tiny on purpose (no torch training): each trial steps the analytic
dynamics of tests/synthetic.py under its own lr (half the trials take it from the
advisor), reports every ``REPORT_EVERY`` steps, and Tune logs every result to MLflow through
its own ``MLflowLoggerCallback``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback

from tracker_sched.bundle.folder import Bundle
from tracker_sched.integrations.ray import TrackerSchedScheduler, with_advisor
from tracker_sched.model.stop_odds import StopRule

REPORT_EVERY = 20
EXPERIMENT = "tune-sweep"


def loopback_ray(mp: Any, repo: Path) -> None:
    """Ray on loopback only, no usage stats, the tests importable by its workers.

    Ray turns a ``127.0.0.1`` address into the machine's own IP unless its "no cluster"
    switch is off (the switch is read at import: this process gets it patched, Ray's
    processes through the environment).
    """
    import ray._private.ray_constants as constants

    for key, value in ray_env(repo).items():
        mp.setenv(key, value)
    mp.setattr(constants, "ENABLE_RAY_CLUSTER", False)


def ray_env(repo: Path) -> dict[str, str]:
    """Environment for Ray's processes (see :func:`loopback_ray`)."""
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0",
            # MLflow's file store: a real store, and 20x faster per logged row than sqlite
            # here (Tune's MLflow callback logs each metric of each result on its own).
            "MLFLOW_ALLOW_FILE_STORE": "true"}


def trainable(config: dict[str, Any], advisor: Any) -> None:
    """One trial: the synthetic dynamics, stepped under the lr it follows."""
    from tests.synthetic import SyntheticTask, schedule

    task = SyntheticTask()
    total = int(config["total_steps"])
    own = schedule(config["family"], config["peak_lr"], np.arange(total + 1) / total)
    rng = np.random.default_rng(config["seed"])
    lrs: list[float] = []
    for step in range(total + 1):
        lr = float(advisor.lr(step)) if config["advised"] else float(own[step])
        lrs.append(lr)
        if step == 0 or step % REPORT_EVERY:
            continue
        loss, acc = task.curves(np.asarray(lrs))
        metrics = {"step": step, "lr": lr,
                   "train_loss": float(loss[-1] * np.exp(0.03 * rng.standard_normal())),
                   "val_acc": float(acc[-1] + 0.003 * rng.standard_normal())}
        advisor.observe(step, train_loss=metrics["train_loss"], lr=lr,
                        val_metric=metrics["val_acc"])
        if config.get("slow_s"):
            time.sleep(config["slow_s"])  # keeps trials in flight while a node goes away
        tune.report(metrics)


def param_space(sweep: Any, total_steps: int, slow_s: float = 0.0) -> dict[str, Any]:
    """16 trials: 8 configurations of the sweep (best first), each followed and advised."""
    configs = [sweep.configs[i] for i in (0, 3, 6, 9, 11, 12, 13, 14)]
    grid = [{"family": c.family, "peak_lr": c.peak_lr, "advised": adv, "seed": 20 + i,
             "total_steps": total_steps, "slow_s": slow_s}
            for i, (c, adv) in enumerate((c, a) for a in (False, True) for c in configs)]
    return {"trial": tune.grid_search(grid), **{}}


def run_sweep(bundle: Bundle, sweep: Any, storage: Path, tracking_uri: str, *,
              callbacks: list[Any] = (), max_failures: int = 0,
              slow_s: float = 0.0) -> tuple[Any, TrackerSchedScheduler]:
    """Run the 16 trials through Tune with the scheduler, the advisor and MLflow logging."""
    total = sweep.total_steps
    scheduler = TrackerSchedScheduler(bundle, total, metric="val_acc", mode="max",
                                      time_attr="step", rule=StopRule(threshold=0.05,
                                                                      patience=2))

    def train(config: dict[str, Any], advisor: Any) -> None:
        trainable(config["trial"], advisor)

    tuner = tune.Tuner(
        with_advisor(train, bundle, total),
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True,
                                    max_concurrent_trials=2),
        param_space=param_space(sweep, total, slow_s),
        run_config=tune.RunConfig(
            name="sweep", storage_path=str(storage), verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=tracking_uri,
                                            experiment_name=EXPERIMENT), *callbacks],
            failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit(), scheduler


def check_histories(results: Any, scheduler: TrackerSchedScheduler,
                    tracking_uri: str) -> dict[str, Any]:
    """Every trial ended without error and its whole history is in MLflow; returns a summary."""

    assert len(results) == 16 and not results.errors, results.errors
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 16
    by_trial = {r.data.tags.get("trial_name"): r for r in runs}
    stopped = 0
    for res in results:
        trial_id = res.metrics["trial_id"]
        last = int(res.metrics["step"])
        run = next(r for name, r in by_trial.items() if name and trial_id in name)
        steps = {int(m.value) for m in client.get_metric_history(run.info.run_id, "step")}
        # Every report from step 8 to the last, none missing (a retried trial logs again).
        assert steps == set(range(REPORT_EVERY, last + 1, REPORT_EVERY)), (trial_id, steps)
        for key in ("val_acc", "train_loss", "lr"):
            assert client.get_metric_history(run.info.run_id, key), (trial_id, key)
        if trial_id in scheduler.stopped:
            stopped += 1
            assert last < res.config["trial"]["total_steps"]
        else:
            assert last == res.config["trial"]["total_steps"]
    return {"stopped": stopped, "finished": len(scheduler.finals)}

"""A 16-trial Tune sweep over synthetic training curves (the two-node test's): the
trainable, the run, and the checks of what reached MLflow.

The trainable (tests/ray/trainable.py) is tiny on purpose (no torch training): each trial
steps the analytic dynamics of tests/synthetic.py under its own lr (half the trials take it
from the advisor), reports every ``REPORT_EVERY`` steps, and Tune logs every result to MLflow
through its own ``MLflowLoggerCallback``. A trial's configuration is its index into
:func:`trial_specs` (one number per result for Tune to log, not six).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback

from tests.ray.trainable import REPORT_EVERY, trainable
from tracker_sched.bundle.folder import Bundle
from tracker_sched.integrations.ray import TrackerSchedScheduler, with_advisor
from tracker_sched.model.stop_odds import StopRule

EXPERIMENT = "tune-sweep"
RULE = StopRule(threshold=0.05, patience=2)


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
            # Ray runs its workers at niceness 15 (under the driver): on a shared machine
            # that starves the trials behind everyone else's processes.
            "RAY_worker_niceness": "0",
            # MLflow's file store: a real store, and 20x faster per logged row than sqlite
            # here (Tune's MLflow callback logs each metric of each result on its own).
            "MLFLOW_ALLOW_FILE_STORE": "true"}


def trial_specs(sweep: Any, total_steps: int) -> list[dict[str, Any]]:
    """16 trials: 8 configurations of the sweep (best first), each followed and advised."""
    configs = [sweep.configs[i] for i in (0, 3, 6, 9, 11, 12, 13, 14)]
    return [{"family": c.family, "peak_lr": c.peak_lr, "advised": adv, "seed": 20 + i,
             "total_steps": total_steps}
            for i, (c, adv) in enumerate((c, a) for a in (False, True) for c in configs)]


def run_sweep(bundle: Bundle, sweep: Any, storage: Path, tracking_uri: str, *,
              callbacks: list[Any] = (), max_failures: int = 0,
              ) -> tuple[Any, TrackerSchedScheduler, list[dict[str, Any]]]:
    """Run the 16 trials through Tune with the scheduler, the advisor and MLflow logging.

    Returns Tune's results, the scheduler (its decisions) and the trials' specs (a result's
    ``config["trial"]`` indexes them).
    """
    total = sweep.total_steps
    specs = trial_specs(sweep, total)
    scheduler = TrackerSchedScheduler(bundle, total, metric="val_acc", mode="max",
                                      time_attr="step", rule=RULE)

    def train(config: dict[str, Any], advisor: Any) -> None:
        trainable(specs[config["trial"]], advisor)

    tuner = tune.Tuner(
        with_advisor(train, bundle, total),
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True,
                                    max_concurrent_trials=2),
        param_space={"trial": tune.grid_search(list(range(len(specs))))},
        run_config=tune.RunConfig(
            name="sweep", storage_path=str(storage), verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=tracking_uri,
                                            experiment_name=EXPERIMENT), *callbacks],
            failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit(), scheduler, specs


def check_histories(results: Any, scheduler: TrackerSchedScheduler, specs: list[dict[str, Any]],
                    tracking_uri: str) -> dict[str, Any]:
    """Every trial ended without error, where the scheduler's own decisions say it ended, and
    its whole history is in MLflow; returns a summary (trial ids stopped and finished, and
    each trial's MLflow ``step`` history, in logged order)."""
    assert len(results) == len(specs) and not results.errors, results.errors
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == len(specs)
    by_trial = {r.data.tags.get("trial_name"): r for r in runs}
    total = specs[0]["total_steps"]
    summary: dict[str, Any] = {"stopped": [], "finished": [], "steps": {}}
    for res in results:
        trial_id = res.metrics["trial_id"]
        last = int(res.metrics["step"])
        # The scheduler's decision, not the trial's last step, says whether it was stopped:
        # a stopped trial ended at the step of the decision, every other one at its budget.
        decision = scheduler.stopped.get(trial_id)
        if decision is not None:
            assert decision.stop and decision.tau is not None
            assert last == round(decision.tau * total) < total, (trial_id, last, decision)
            summary["stopped"].append(trial_id)
        else:
            assert last == total, (trial_id, last)
            assert trial_id in scheduler.finals  # the incumbent counts every finished trial
            summary["finished"].append(trial_id)
        run = next(r for name, r in by_trial.items() if name and trial_id in name)
        history = client.get_metric_history(run.info.run_id, "step")
        steps = [int(m.value) for m in sorted(history, key=lambda m: m.timestamp)]
        # Every report from the first to the last, none missing (a retried trial logs again).
        assert set(steps) == set(range(REPORT_EVERY, last + 1, REPORT_EVERY)), (trial_id, steps)
        for key in ("val_acc", "train_loss", "lr"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(steps)
        summary["steps"][trial_id] = steps
    assert len(summary["finished"]) == len(scheduler.finals)
    return summary

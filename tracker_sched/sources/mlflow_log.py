"""Write RunRecords to MLflow as a sweep: one parent run, a child run per record.

The inverse of :class:`~tracker_sched.sources.mlflow_source.MlflowSource`: tests,
benchmarks and the demo use it to put a sweep on a tracking server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import JsonValue

from tracker_sched.budget import stated_budget
from tracker_sched.schema import ROLES, RunRecord
from tracker_sched.sources.mlflow_source import (
    _STATES,
    PARENT_TAG,
    RUN_ID_TAG,
    _client,
    _mlflow,
)

LOG_BATCH_MAX_METRICS = 1000  # MLflow's log_batch limit
LOG_BATCH_MAX_PARAMS = 100


def _param_value(value: JsonValue) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _batches(params: list[Any], metrics: list[Any]) -> Iterator[tuple[list[Any], list[Any]]]:
    """log_batch payloads within MLflow's limits: 100 params, 1000 metrics, 1000 entities."""
    while params or metrics:
        p, params = params[:LOG_BATCH_MAX_PARAMS], params[LOG_BATCH_MAX_PARAMS:]
        room = LOG_BATCH_MAX_METRICS - len(p)
        m, metrics = metrics[:room], metrics[room:]
        yield p, m


def log_sweep(
    runs: Sequence[RunRecord],
    experiment: str,
    *,
    tracking_uri: str | None = None,
    parent_name: str = "sweep",
) -> str:
    """Log RunRecords as MLflow child runs under one new parent run; return the parent's id.

    Each child gets the record's config as params (plus ``total_steps`` when the
    config has no budget param), its series under the keys of ``metric_keys``
    (else the role names) with their steps, one ``log_batch`` per 1,000 metrics,
    and the record's state. The experiment is created if missing.
    """
    _mlflow()
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    client, _ = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    parent_id: str = client.create_run(exp_id, run_name=parent_name).info.run_id
    status = {v: k for k, v in _STATES.items()}
    t0 = int(time.time() * 1000)
    for rec in runs:
        child = client.create_run(exp_id, run_name=rec.name or rec.run_id, tags={
            PARENT_TAG: parent_id, RUN_ID_TAG: rec.run_id})
        cid = child.info.run_id
        config = {k: v for k, v in rec.config.items() if k != "_keys_seen"}
        stated = stated_budget(config)
        if rec.total_steps is not None and "total_steps" not in config and (
                stated is None or stated.steps != rec.total_steps):
            config["total_steps"] = rec.total_steps
        params = [Param(k, _param_value(v)) for k, v in config.items()]
        metrics: list[Metric] = []
        for role in ROLES:
            series = rec.series(role)
            if series is None:
                continue
            key = rec.metric_keys.get(role, role)
            # Timestamps increase with the step so "last logged" is well defined on read.
            metrics.extend(Metric(key, float(v), t0 + i, int(s))
                           for i, (s, v) in enumerate(zip(series.step, series.value, strict=True)))
        for batch_params, batch_metrics in _batches(params, metrics):
            client.log_batch(cid, metrics=batch_metrics, params=batch_params)
        client.set_terminated(cid, status=status.get(rec.state, "FINISHED"))
    client.log_batch(parent_id, tags=[RunTag("tracker_sched.sweep_runs", str(len(runs)))])
    client.set_terminated(parent_id, status=RunStatus.to_string(RunStatus.FINISHED))
    return parent_id

"""The MLflow callback's opt-in stop, against a real sqlite store: the loop ends cleanly, the
run is tagged with the odds, and every point logged before the stop is read back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.tiny import logged_rows
from tracker_sched.integrations.mlflow import MlflowAdvisorCallback
from tracker_sched.integrations.mlflow.callback import LR_METRIC, TAG_STOPPED
from tracker_sched.model.stop_odds import StopRule

KEYS = {"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"}


def _train(cb: MlflowAdvisorCallback, run) -> dict[str, list[tuple[int, float]]]:  # type: ignore[no-untyped-def]
    """The user's loop: log, advise, end when the callback says so."""
    logged: dict[str, list[tuple[int, float]]] = {k: [] for k in KEYS.values()}
    for step, row in logged_rows(run):
        metrics = {KEYS[role]: value for role, value in row.items()}
        cb.log_metrics(metrics, step)
        for key, value in metrics.items():
            logged[key].append((step, value))
        if cb.should_stop:
            break
    return logged


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> Iterator[str]:
    """A sqlite store as MLflow's default for the test only: set_tracking_uri would pin it
    for every later test of the session."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with _use_tracking_uri(uri):
        yield uri


@pytest.mark.parametrize("opt_in", [True, False])
def test_opt_in_stop_ends_the_loop_and_keeps_every_point(stop_fit, mlflow_uri: str,
                                                         opt_in: bool) -> None:
    fit, sweep = stop_fit
    uri = mlflow_uri
    loser = sweep.configs[-8]
    run = sweep.run(loser.family, loser.peak_lr, 4)
    best = sweep.configs[0].final_val
    asked: list[int] = []

    def incumbent() -> float:  # e.g. read the sweep's best finished run when asked
        asked.append(1)
        return best

    with mlflow.start_run() as active:
        with MlflowAdvisorCallback(fit.bundle, sweep.total_steps,
                                   stop=StopRule(threshold=0.05, patience=2) if opt_in else None,
                                   incumbent=incumbent) as cb:
            logged = _train(cb, run)
        run_id = active.info.run_id
    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    last = max(s for s, _ in logged["train_loss"])
    if not opt_in:
        assert not cb.should_stop and last == sweep.total_steps and TAG_STOPPED not in tags
        assert not asked
        return
    assert cb.should_stop and last < sweep.total_steps
    decision = cb.stop_watch.decision
    assert decision is not None and decision.stop and cb.stop_watch.stopped_at == last
    assert tags[TAG_STOPPED] == "true"
    assert float(tags["tracker_sched.stop_p_beat"]) == pytest.approx(decision.p_beat, rel=1e-4)
    assert float(tags["tracker_sched.stop_incumbent"]) == pytest.approx(best, rel=1e-5)
    assert int(tags["tracker_sched.stop_step"]) == last
    # Nothing lost: every point logged before the stop is in the store, and the lr metric too.
    for key, points in logged.items():
        stored = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [s for s, _ in stored] == [s for s, _ in points], key
        assert [v for _, v in stored] == pytest.approx([v for _, v in points]), key
    lr_steps = [m.step for m in client.get_metric_history(run_id, LR_METRIC)]
    assert max(lr_steps) == last
    assert client.get_run(run_id).info.status == "FINISHED"

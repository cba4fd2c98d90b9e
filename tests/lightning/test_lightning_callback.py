"""The Lightning callback end to end: a real ``lightning.Trainer`` on a tiny MLP, with
``MLFlowLogger`` (sqlite store) and ``WandbLogger`` (offline) attached.

The applied lr is read back from what *Lightning* logged: ``LearningRateMonitor``'s
``lr-SGD/pg1`` and ``lr-SGD/pg2`` in the MLflow run and in the W&B run file (read with our
own offline reader), not from the callback's own account.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.frameworks import data, finish_wandb, lightning_module, trackers
from tests.wandb.sweep_helpers import read_log, summary_of
from tracker_sched.planning.generative import PlannerConfig
from tracker_sched.schema import MetricMap

L = pytest.importorskip("lightning")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from lightning.pytorch.callbacks import LearningRateMonitor  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger  # noqa: E402

from tracker_sched.integrations.lightning import AdvisorCallback  # noqa: E402

pytestmark = pytest.mark.slow

EPOCHS, BATCHES = 6, 11  # 66 optimizer steps
PEAK = 0.05


def fit(callback: AdvisorCallback, loggers: Any, epochs: int = EPOCHS) -> Any:
    x, y = data(1, BATCHES * 8 + 64)
    train = torch.utils.data.TensorDataset(x[:BATCHES * 8], y[:BATCHES * 8])
    val = torch.utils.data.TensorDataset(x[BATCHES * 8:], y[BATCHES * 8:])
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=epochs, logger=loggers, log_every_n_steps=2,
        callbacks=[callback, LearningRateMonitor(logging_interval="step")] if loggers
        else [callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1, num_sanity_val_steps=0, val_check_interval=5,
    )
    # Two param groups (head at a tenth of the body's lr) and a StepLR that halves the lr
    # each epoch: the callback must keep the ratio and overrule the scheduler.
    module = lightning_module(lr=PEAK, head_lr_ratio=0.1, val_key="val_acc", max_epochs=epochs)
    trainer.fit(module, torch.utils.data.DataLoader(train, batch_size=8),
                torch.utils.data.DataLoader(val, batch_size=64))
    return trainer


@pytest.fixture(scope="module")
def advised(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pl-advised")
    uri = f"sqlite:///{root}/mlflow.db"
    import wandb

    with trackers(root, uri, "pl-advised", "pl-advised") as wandb_dir:
        cb = AdvisorCallback(f"file:{tiny_bundle_dir}", planner=PlannerConfig(candidates=8),
                             replan_every=5)  # made after the URI is set, as documented
        wandb.teardown()  # settings an earlier test left behind must not decide where it logs
        loggers = [MLFlowLogger(experiment_name="pl-advised", tracking_uri=uri,
                                run_name="advised"),
                   WandbLogger(project="pl-advised", save_dir=str(wandb_dir), offline=True)]
        trainer = fit(cb, loggers)
        wandb_id, files = loggers[1].experiment.id, Path(loggers[1].experiment.dir)
        finish_wandb()
        wandb.teardown()
    return {"cb": cb, "trainer": trainer, "client": mlflow.tracking.MlflowClient(uri), "uri": uri,
            "run_id": loggers[0].run_id, "wandb_log": files.parent / f"run-{wandb_id}.wandb"}


def history(client: Any, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_budget_and_plan(advised: dict[str, Any]) -> None:
    cb: AdvisorCallback = advised["cb"]
    assert cb.advised.total_steps == EPOCHS * BATCHES  # trainer.estimated_stepping_batches
    assert advised["trainer"].global_step == EPOCHS * BATCHES
    assert cb.advised.error is None
    # One planning attempt once the window was full: a plan, or the planner's reasoned
    # refusal to change course (a fallback that keeps the warm-up schedule).
    plan = cb.advised.plan
    assert plan is not None and plan.status in ("planned", "fallback") and plan.step > 0
    assert cb.advised.plans + cb.advised.fallbacks == 1
    assert cb.advised.applied_steps == EPOCHS * BATCHES and cb.advised.mismatched_steps == 0


def test_applied_lr_read_back_from_mlflow(advised: dict[str, Any]) -> None:
    client, run_id = advised["client"], advised["run_id"]
    body = history(client, run_id, "lr-SGD/pg1")  # LearningRateMonitor's, through MLFlowLogger
    head = history(client, run_id, "lr-SGD/pg2")
    recommended = history(client, run_id, "tracker_sched.lr_recommended")
    common = sorted(set(body) & set(recommended))
    assert len(common) >= 25
    for step in common:  # our lr metrics are rounded to 5 significant digits
        assert body[step] == pytest.approx(recommended[step], rel=1e-4)
        assert head[step] == pytest.approx(recommended[step] / 10, rel=1e-4)  # ratio kept
    # Not the module's StepLR (0.05 halved each epoch): the advisor's schedule.
    own = {s: PEAK * 0.5 ** (s // BATCHES) for s in common}
    assert max(abs(body[s] - own[s]) / own[s] for s in common) > 0.05
    assert history(client, run_id, "tracker_sched.lr_applied") == pytest.approx(
        {s: recommended[s] for s in history(client, run_id, "tracker_sched.lr_applied")})
    plan = advised["cb"].advised.plan
    code = {"planned": 1.0, "fallback": 2.0}[plan.status]
    assert history(client, run_id, "tracker_sched.plan") == {0: 0.0, plan.step: code}
    tags = client.get_run(run_id).data.tags
    assert tags["tracker_sched.status"] == plan.status
    assert tags["tracker_sched.reason"] == plan.reason
    assert int(tags["tracker_sched.plans"]) + int(tags["tracker_sched.fallbacks"]) == 1
    assert tags["tracker_sched.mismatched_steps"] == "0"


def test_applied_lr_read_back_from_the_wandb_run_file(advised: dict[str, Any]) -> None:
    from tracker_sched.sources.wandb_offline import WandbOfflineSource

    path = advised["wandb_log"]
    monitor = WandbOfflineSource(path, MetricMap(lr="lr-SGD/pg1", train_loss="train_loss",
                                                 val_metric="val_acc")).read().runs[0]
    ours = WandbOfflineSource(path, MetricMap(lr="tracker_sched/lr_recommended",
                                              train_loss="train_loss",
                                              val_metric="val_acc")).read().runs[0]
    assert monitor.lr is not None and ours.lr is not None
    got = dict(zip(monitor.lr.step, monitor.lr.value, strict=True))
    want = dict(zip(ours.lr.step, ours.lr.value, strict=True))
    common = sorted(set(got) & set(want))
    assert len(common) >= 25
    assert [got[s] for s in common] == pytest.approx([want[s] for s in common], rel=1e-6)
    summary = summary_of(read_log(path)[0])
    assert summary["tracker_sched/plans"] + summary["tracker_sched/fallbacks"] == 1
    assert summary["tracker_sched/applied_steps"] == EPOCHS * BATCHES
    assert summary["tracker_sched/status_name"] == advised["cb"].advised.plan.status


def test_a_bad_bundle_leaves_the_module_on_its_own_lr(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cb = AdvisorCallback(tmp_path / "no-such-bundle")
    with caplog.at_level(logging.WARNING, logger="tracker_sched"):
        trainer = fit(cb, False)
    assert trainer.global_step == EPOCHS * BATCHES
    opt = trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(PEAK * 0.5 ** EPOCHS)  # StepLR's
    assert len([r for r in caplog.records if "callback off" in r.getMessage()]) == 1


def test_the_callers_tracking_uri_survives_the_loggers_own(
        advised: dict[str, Any], tiny_bundle_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFlowLogger points MLflow's process-wide tracking URI at its own store when the
    Trainer starts its run (in setup, before any callback hook): the callback puts the
    caller's URI (and ``MLFLOW_TRACKING_URI``) back, and its write-back still lands in the
    logger's store. Without the callback's setup hook the first assertion fails."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    callers = f"sqlite:///{tmp_path}/callers.db"
    loggers = advised["uri"]  # a store that exists already: no second schema migration
    monkeypatch.setenv("MLFLOW_TRACKING_URI", callers)
    with _use_tracking_uri(callers):  # the caller sets its URI, then builds the callback
        cb = AdvisorCallback(f"file:{tiny_bundle_dir}", max_replans=0)  # warm-up plan only
        logger = MLFlowLogger(experiment_name="pl-uri", tracking_uri=loggers, run_name="uri")
        trainer = fit(cb, [logger], epochs=1)
        after, env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    assert trainer.global_step == BATCHES and cb.advised.error is None
    assert (after, env) == (callers, callers)
    client = mlflow.tracking.MlflowClient(loggers)
    run = client.get_run(logger.run_id)
    assert run.data.tags["tracker_sched.bundle"].endswith(str(tiny_bundle_dir))
    assert history(client, logger.run_id, "tracker_sched.plan") == {0: 0.0}  # the warm-up
    assert len(history(client, logger.run_id, "tracker_sched.lr_recommended")) >= 3
    assert run.data.tags["tracker_sched.applied_steps"] == str(BATCHES)
    # Nothing of ours in the caller's store: it was never even created.
    assert not (tmp_path / "callers.db").exists()

"""The HF Trainer callback end to end: a real ``transformers.Trainer`` on a tiny model built
in tests/frameworks.py (no hub download), reporting to a real MLflow store and to W&B offline files.

The acceptance check: the lr the optimizer applied is the advisor's, read back from what
the *Trainer* logged (``learning_rate`` in the MLflow run, ``train/learning_rate`` in the
W&B run file, read with our own offline reader), not from the callback's own account.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.frameworks import data, finish_wandb, hf_model, trackers
from tests.wandb.sweep_helpers import read_log, summary_of
from tracker_sched.planning.generative import PlannerConfig
from tracker_sched.schema import MetricMap

transformers = pytest.importorskip("transformers")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from tracker_sched.integrations.transformers import AdvisorCallback  # noqa: E402

pytestmark = pytest.mark.slow

MAX_STEPS = 60
PEAK = 0.05


def accuracy(pred: Any) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def trainer(root: Path, callback: AdvisorCallback | None, report_to: list[str],
            scheduler: str = "linear") -> Any:
    x, y = data(0, 160 + 64)
    train = [{"x": x[i], "labels": y[i]} for i in range(160)]
    evals = [{"x": x[i], "labels": y[i]} for i in range(160, 224)]
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(root / "out"), learning_rate=PEAK, lr_scheduler_type=scheduler,
        max_steps=MAX_STEPS, per_device_train_batch_size=8, logging_steps=2,
        eval_strategy="steps", eval_steps=10, save_strategy="no", report_to=report_to,
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, log_level="error",
        seed=0, run_name="advised",
    )
    return transformers.Trainer(model=hf_model(), args=args, train_dataset=train,
                                eval_dataset=evals, compute_metrics=accuracy,
                                callbacks=[callback] if callback is not None else None)


@pytest.fixture(scope="module")
def advised(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One Trainer run advised by the bundle, reporting to MLflow (sqlite) and W&B offline."""
    root = tmp_path_factory.mktemp("hf-advised")
    uri = f"sqlite:///{root}/mlflow.db"
    cb = AdvisorCallback(f"file:{tiny_bundle_dir}", planner=PlannerConfig(candidates=8),
                         replan_every=5)
    import wandb

    with trackers(root, uri, "hf-advised", "hf-advised"):
        wandb.teardown()  # settings an earlier test left behind must not decide where it logs
        t = trainer(root, cb, ["mlflow", "wandb"])
        t.train()
        wandb_id, files = wandb.run.id, Path(wandb.run.dir)
        finish_wandb()
        wandb.teardown()
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hf-advised").experiment_id])
    return {"cb": cb, "trainer": t, "client": client, "run_id": run.info.run_id,
            "wandb_log": files.parent / f"run-{wandb_id}.wandb"}


def history(client: Any, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_budget_and_lr_control_come_from_the_trainer(advised: dict[str, Any]) -> None:
    cb: AdvisorCallback = advised["cb"]
    assert cb.advised.total_steps == MAX_STEPS  # state.max_steps
    assert cb.lr_control == "scheduler"  # the Trainer's LambdaLR, driven
    assert cb.advised.error is None
    rec = cb.advised.plan
    assert rec is not None and rec.status == "planned"
    assert cb.advised.plans == 1


def test_applied_lr_read_back_from_mlflow(advised: dict[str, Any]) -> None:
    """What the Trainer's MLflowCallback logged as learning_rate is what the advisor said."""
    client, run_id = advised["client"], advised["run_id"]
    logged = history(client, run_id, "learning_rate")  # written by the Trainer, not by us
    recommended = history(client, run_id, "tracker_sched.lr_recommended")
    assert sorted(logged) == list(range(2, MAX_STEPS + 1, 2))
    assert sorted(recommended) == sorted(logged)
    for step, lr in logged.items():  # our lr metrics are rounded to 5 significant digits
        assert lr == pytest.approx(recommended[step], rel=1e-4)
    # Not the Trainer's own linear decay: the advisor's schedule was applied.
    own = {s: PEAK * (1 - (s - 1) / MAX_STEPS) for s in logged}
    assert max(abs(logged[s] - own[s]) / own[s] for s in logged) > 0.05
    cb: AdvisorCallback = advised["cb"]
    assert cb.advised.applied_steps == len(logged) and cb.advised.mismatched_steps == 0
    assert history(client, run_id, "tracker_sched.lr_applied") == pytest.approx(logged, rel=1e-4)
    # The plan: a marker at the warm-up and at the plan, its prediction, its artifact, tags.
    plan = cb.advised.plan
    assert plan is not None
    assert history(client, run_id, "tracker_sched.plan") == {0: 0.0, plan.step: 1.0}
    assert history(client, run_id, "tracker_sched.predicted_final") == {
        plan.step: pytest.approx(plan.predicted_final)}
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "tracker_sched")}
    assert names == {f"plan-step{s}.{ext}" for s in (0, plan.step) for ext in ("json", "md")}
    tags = client.get_run(run_id).data.tags
    assert tags["tracker_sched.status"] == "planned"
    assert tags["tracker_sched.lr_control"] == "scheduler"
    assert tags["tracker_sched.plans"] == "1"
    assert tags["tracker_sched.applied_steps"] == str(len(logged))
    assert tags["tracker_sched.bundle"].startswith("file:")


def test_applied_lr_read_back_from_the_wandb_run_file(advised: dict[str, Any]) -> None:
    """Our own offline reader finds the Trainer's train/learning_rate equal to the advice."""
    from tracker_sched.sources.wandb_offline import WandbOfflineSource

    path = advised["wandb_log"]
    trainer_lr = WandbOfflineSource(path, MetricMap(lr="train/learning_rate",
                                                    val_metric="eval/accuracy")).read().runs[0]
    ours = WandbOfflineSource(path, MetricMap(lr="tracker_sched/lr_recommended",
                                              val_metric="eval/accuracy")).read().runs[0]
    assert trainer_lr.lr is not None and ours.lr is not None
    assert trainer_lr.lr.step == list(range(2, MAX_STEPS + 1, 2))  # on train/global_step
    assert ours.lr.step == trainer_lr.lr.step
    assert ours.lr.value == pytest.approx(trainer_lr.lr.value, rel=1e-6)
    summary = summary_of(read_log(path)[0])
    assert summary["tracker_sched/plans"] == 1
    assert summary["tracker_sched/fallbacks"] == 0
    assert summary["tracker_sched/applied_steps"] == len(ours.lr.step)
    assert summary["tracker_sched/mismatched_steps"] == 0
    assert summary["tracker_sched/status_name"] == "planned"
    assert summary["tracker_sched/predicted_final"] == pytest.approx(
        advised["cb"].advised.plan.predicted_final)


def test_a_bad_bundle_leaves_the_trainer_on_its_own_schedule(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training finishes on the Trainer's own linear decay; one warning, no write-back."""
    cb = AdvisorCallback(tmp_path / "no-such-bundle")
    with caplog.at_level(logging.WARNING, logger="tracker_sched"):
        t = trainer(tmp_path, cb, [])
        t.train()
    assert t.state.global_step == MAX_STEPS
    lrs = [h["learning_rate"] for h in t.state.log_history if "learning_rate" in h]
    steps = [h["step"] for h in t.state.log_history if "learning_rate" in h]
    assert lrs == pytest.approx([PEAK * (1 - (s - 1) / MAX_STEPS) for s in steps])
    assert cb.lr_control is None and not cb.advised.active
    assert len([r for r in caplog.records if "callback off" in r.getMessage()]) == 1


def test_a_scheduler_that_is_no_lambdalr_gets_the_lr_set_on_the_optimizer(
        tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """reduce_lr_on_plateau: the optimizer's lr is set before each step; the Trainer logs the
    optimizer's lr for that scheduler, so the read-back still checks it."""
    cb = AdvisorCallback(tiny_bundle_dir, planner=PlannerConfig(candidates=8))
    t = trainer(tmp_path, cb, [], scheduler="reduce_lr_on_plateau")
    t.train()
    assert cb.lr_control == "optimizer"
    logged = {h["step"]: h["learning_rate"] for h in t.state.log_history if "learning_rate" in h}
    assert cb.advised.applied_steps == len(logged) and cb.advised.mismatched_steps == 0
    for step, lr in logged.items():
        assert lr == pytest.approx(cb.advised.recommended(step), rel=1e-6)

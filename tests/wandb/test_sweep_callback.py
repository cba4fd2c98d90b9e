"""The W&B sweep callback end to end, on real offline runs (the issue's acceptance test).

1. A small real sweep (runs of tests/fixtures/cnn_sweep_small.jsonl) is logged
   offline with the wandb SDK, as runs of one sweep, with W&B's usual keys.
2. ``tracker-sched fit --source wandb-offline`` fits a bundle from it, in-process.
3. A real torch training run, launched as by ``wandb agent`` (``WANDB_SWEEP_ID``
   and ``WANDB_SWEEP_PARAM_PATH``), is advised by the callback.
4. Its recommendations are read back from the run's ``.wandb`` file.
5. A truncated copy of that file keeps its good records and reports the damage.

No W&B server and no mocks: wandb writes real transaction logs into tmp folders.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny import FIXTURE, tiny_config
from tests.wandb.sweep_helpers import (
    agent_run,
    history_rows,
    read_log,
    replay_sweep,
    run_log,
    summary_of,
)
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import main
from tracker_sched.errors import InputError
from tracker_sched.integrations.wandb import STATUS_CODES, SweepCallback
from tracker_sched.planning.generative import PlannerConfig
from tracker_sched.schema import MetricMap
from tracker_sched.sources.files import read_sweep
from tracker_sched.sources.wandb_offline import WandbOfflineSource

wandb = pytest.importorskip("wandb")

pytestmark = pytest.mark.slow  # 20 to 30 s: a fit, a dozen wandb runs, real training

SWEEP_ID = "mnist1d-cnn"
TOTAL_STEPS = 120
PEAK_LR = 0.05
LR_KEY = "tracker_sched/lr_recommended"
APPLIED_KEY = "tracker_sched/lr_applied"


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight runs of the fixture sweep (every schedule, two peaks), logged offline."""
    root = tmp_path_factory.mktemp("wandb-sweep")
    replay_sweep(root, read_sweep(FIXTURE).runs[::6], SWEEP_ID)
    return root


@pytest.fixture(scope="module")
def bundle_dir(sweep_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle ``tracker-sched fit --source wandb-offline`` fits from the sweep."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    config = out.parent / "fit.json"
    config.write_text(tiny_config().model_dump_json(), encoding="utf-8")
    code = main(["fit", "--source", "wandb-offline", "--path", str(sweep_root), "--out", str(out),
                 "--config", str(config), "--workers", "1", "--no-plots", "--no-progress"])
    assert code == 0
    return out


def _data(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs in 8 dimensions: learnable in a hundred steps, not at once."""
    centres = torch.randn(4, 8, generator=gen)
    labels = torch.randint(0, 4, (512,), generator=gen)
    return centres[labels] + 0.8 * torch.randn(512, 8, generator=gen), labels


def agent_function(run: Any, bundle: str | Path, steps: int | None = None) -> dict[str, Any]:
    """What a W&B user puts in the function ``wandb agent`` runs: a real small training loop.

    The script logs its metrics with ``run.log(..., step=step)`` and hands the
    same dict to the callback, which sets the optimizer's lr for the next step.
    Returns the lr the optimizer used at each step and what the callback returned.
    """
    gen = torch.Generator().manual_seed(0)
    x, y = _data(gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=run.config["peak_lr"], momentum=0.9)
    cb = SweepCallback(bundle, optimizer=opt, planner=PlannerConfig(candidates=8),
                       replan_every=5, mode="generative")  # a plan with a predicted final
    used: list[float] = []
    returned: list[float | None] = []
    for step in range(steps or cb.total_steps):
        idx = torch.randint(128, 512, (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        used.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        metrics = {"train/loss": loss.item(), "lr": used[-1]}
        if step % 5 == 4:
            with torch.no_grad():
                metrics["val/acc"] = (model(x[:128]).argmax(1) == y[:128]).float().mean().item()
        run.log(metrics, step=step)
        returned.append(cb.log(metrics, step))
    cb.finish()
    return {"run_id": run.id, "used": used, "returned": returned, "callback": cb}


@pytest.fixture(scope="module")
def advised(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One agent-launched offline training run advised by the bundle."""
    root = tmp_path_factory.mktemp("wandb-advised")
    with agent_run(root, sweep_id=SWEEP_ID, params={"peak_lr": PEAK_LR},
                   config={"total_steps": TOTAL_STEPS, "peak_lr": 0.5}) as run:
        out = agent_function(run, bundle_dir)
    out["log"] = run_log(root, out["run_id"])
    out["records"], scan = read_log(out["log"])
    assert scan.damage == []
    return out


def test_fit_from_the_offline_sweep(bundle_dir: Path) -> None:
    manifest = Bundle.load(bundle_dir).manifest
    m = manifest.metrics
    assert (m.train_loss, m.lr, m.val_metric, m.direction) == ("train/loss", "lr", "val/acc",
                                                               "max")
    assert manifest.report.runs_total == 8


def test_sweep_id_and_config_come_from_the_agent(advised: dict[str, Any]) -> None:
    cb: SweepCallback = advised["callback"]
    assert cb.sweep_id == SWEEP_ID
    assert cb.config["peak_lr"] == PEAK_LR  # the sweep's value, not the script's default
    assert cb.total_steps == TOTAL_STEPS  # from the config
    (run_rec,) = [r.run for r in advised["records"] if r.WhichOneof("record_type") == "run"]
    assert run_rec.sweep_id == SWEEP_ID
    assert advised["used"][0] == PEAK_LR  # the first step trains on the sweep's lr
    assert cb.error is None


def test_optimizer_follows_the_recommendations(advised: dict[str, Any]) -> None:
    used, returned = advised["used"], advised["returned"]
    assert len(used) == TOTAL_STEPS
    assert all(r is not None for r in returned)
    # cb.log at step s returns, and sets, the lr of step s + 1
    assert used[1:] == returned[:-1]
    assert len({round(lr, 12) for lr in used[1:]}) > 10  # a schedule, not a constant


def test_recommendations_read_back_from_the_run_file(advised: dict[str, Any]) -> None:
    rows = history_rows(advised["records"])
    assert sorted(rows) == list(range(TOTAL_STEPS))  # no extra rows: one per script step
    used = advised["used"]
    for step in range(TOTAL_STEPS):
        row = rows[step]
        assert row["lr"] == used[step]
        assert row[APPLIED_KEY] == used[step]  # the lr the step trained with
        if step == 0:
            assert LR_KEY not in row  # nothing was recommended before the first step
        else:  # what cb.log returned at the step before: the pair charts as one line
            assert row[LR_KEY] == advised["returned"][step - 1] == used[step]
    codes = [rows[s]["tracker_sched/status"] for s in range(TOTAL_STEPS)]
    assert codes[0] == STATUS_CODES["warmup"]
    replan = next(s for s, c in enumerate(codes) if c != STATUS_CODES["warmup"])
    assert codes[replan] == STATUS_CODES["planned"]
    assert 0 < replan < TOTAL_STEPS // 2  # once the context window is full
    # The plan, as a table and a chart, at the start and at the replan only.
    tables = sorted(s for s, row in rows.items() if "tracker_sched/plan._type" in row)
    assert tables == [0, replan]
    assert rows[replan]["tracker_sched/plan._type"] == "table-file"
    assert "tracker_sched/plan_chart_table._type" in rows[replan]
    media = advised["log"].parent / "files" / rows[replan]["tracker_sched/plan.path"]
    assert media.is_file()
    summary = summary_of(advised["records"])
    rec = advised["callback"].recommendation
    assert summary["tracker_sched/status_name"] == rec.status
    assert summary["tracker_sched/reason"] == rec.reason
    assert summary["tracker_sched/sweep_id"] == SWEEP_ID
    assert "tracker_sched/error" not in summary
    assert rec.status == "planned" and rec.predicted_final is not None
    assert rows[replan]["tracker_sched/predicted_final"] == rec.predicted_final
    assert "tracker_sched/predicted_final" not in rows[replan - 1]
    # What the advisor did, in the summary: one plan, every recommendation applied.
    assert summary["tracker_sched/plans"] == 1
    assert summary["tracker_sched/fallbacks"] == 0
    assert summary["tracker_sched/applied_steps"] == TOTAL_STEPS - 1
    assert summary["tracker_sched/mismatched_steps"] == 0
    assert summary["tracker_sched/predicted_final"] == rec.predicted_final
    # The two lr panels are declared, with their last value in the summary.
    defined = {r.metric.name: r.metric for r in advised["records"]
               if r.WhichOneof("record_type") == "metric"}
    assert {LR_KEY, APPLIED_KEY} <= set(defined)
    assert summary[LR_KEY] == used[-1] and summary[APPLIED_KEY] == used[-1]


def test_no_config_update(advised: dict[str, Any]) -> None:
    """Recommendations are metrics: the sweep-controlled config is left alone."""
    for rec in advised["records"]:
        if rec.WhichOneof("record_type") == "config":
            keys = [".".join(i.nested_key) or i.key for i in rec.config.update]
            assert not [k for k in keys if k.startswith("tracker_sched")]


def test_offline_source_reads_the_recommendations(advised: dict[str, Any]) -> None:
    mm = MetricMap(lr=APPLIED_KEY, train_loss="train/loss", val_metric="val/acc")
    (run,) = WandbOfflineSource(advised["log"], mm).read().runs
    assert run.sweep_id == SWEEP_ID
    assert run.lr is not None
    assert run.lr.step == list(range(TOTAL_STEPS))
    assert run.lr.value == advised["used"]


def test_truncated_run_file_keeps_good_records(advised: dict[str, Any], tmp_path: Path) -> None:
    data = advised["log"].read_bytes()
    cut = tmp_path / advised["log"].name
    cut.write_bytes(data[: len(data) * 2 // 3])
    mm = MetricMap(lr=APPLIED_KEY, train_loss="train/loss", val_metric="val/acc")
    out = WandbOfflineSource(cut, mm).read()
    (run,) = out.runs
    (issue,) = out.issues
    assert issue.action == "repaired" and "unreadable" in issue.reason
    assert run.state == "crashed"  # the exit record was past the cut
    assert run.lr is not None
    kept = len(run.lr)
    assert 0 < kept < TOTAL_STEPS
    assert run.lr.step == list(range(kept))
    assert run.lr.value == advised["used"][:kept]
    assert run.sweep_id == SWEEP_ID


def test_missing_budget_is_a_clear_error(tmp_path: Path, bundle_dir: Path) -> None:
    with agent_run(tmp_path, sweep_id=SWEEP_ID, params={"peak_lr": PEAK_LR}), \
            pytest.raises(InputError, match="total_steps=N") as err:
        SweepCallback(bundle_dir)
    assert "config keys seen: peak_lr" in str(err.value)


def test_no_run_is_a_clear_error(bundle_dir: Path) -> None:
    assert wandb.run is None
    with pytest.raises(InputError, match=r"wandb.init\(\) first"):
        SweepCallback(bundle_dir, total_steps=10)


def test_bad_bundle_never_stops_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bundle that cannot load turns the callback off; the run trains on the sweep's lr."""
    missing = tmp_path / "no-such-bundle"
    steps = 12
    with caplog.at_level(logging.WARNING, logger="tracker_sched"), \
            agent_run(tmp_path, sweep_id=SWEEP_ID, params={"peak_lr": PEAK_LR},
                      config={"max_steps": 40}) as run:
        out = agent_function(run, missing, steps=steps)
    cb: SweepCallback = out["callback"]
    assert cb.total_steps == 40  # from max_steps
    assert cb.recommendation is None
    assert out["returned"] == [None] * steps
    assert out["used"] == [PEAK_LR] * steps  # the optimizer is left alone
    warnings = [r for r in caplog.records if "callback off" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per step
    assert str(missing) in warnings[0].getMessage()
    records, _ = read_log(run_log(tmp_path, out["run_id"]))
    rows = history_rows(records)
    assert sorted(rows) == list(range(steps))
    assert {row["tracker_sched/status"] for row in rows.values()} == {STATUS_CODES["off"]}
    assert not any(LR_KEY in row for row in rows.values())
    summary = summary_of(records)
    assert summary["tracker_sched/status_name"] == "off"
    assert summary["tracker_sched/status"] == STATUS_CODES["off"]  # the last logged code
    assert "callback off" in summary["tracker_sched/error"]
    assert str(missing) in summary["tracker_sched/error"]


def test_logging_failure_never_stops_the_run(
    tmp_path: Path, bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """W&B refusing the log (here: the run already finished) costs only the logged values."""
    with agent_run(tmp_path, sweep_id=SWEEP_ID, params={"peak_lr": PEAK_LR},
                   config={"total_steps": 30}) as run:
        cb = SweepCallback(bundle_dir)
    with caplog.at_level(logging.WARNING, logger="tracker_sched"):
        lrs = [cb.log({"train/loss": 1.0, "lr": PEAK_LR}, step) for step in range(3)]
    assert all(isinstance(lr, float) and lr > 0 for lr in lrs)
    assert cb.error is not None and "failed" in cb.error
    assert len([r for r in caplog.records if "logging to W&B failed" in r.getMessage()]) == 1
    assert run.id


def test_metric_names_map_to_roles(tmp_path: Path, bundle_dir: Path) -> None:
    """The bundle's keys first, then the usual names; never a val metric of the wrong sense."""
    bundle = Bundle.load(bundle_dir)
    with agent_run(tmp_path, sweep_id=None, params={"max_steps": 50}) as run:
        cb = SweepCallback(bundle, run=run)
        mapped = SweepCallback(bundle, run=run, metric_map=MetricMap(lr="opt/lr", val_metric="f1"))
        backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
        opt = torch.optim.AdamW([{"params": backbone.parameters(), "lr": 1e-3},
                                 {"params": head.parameters(), "lr": 1e-2}])
        grouped = SweepCallback(bundle, run=run, optimizer=opt)
        lr = grouped.lr(10)
    assert cb.total_steps == 50
    assert cb.roles({"train/loss": 1.0, "lr": 0.1, "val/acc": 0.5, "note": "text"}) == {
        "train_loss": 1.0, "lr": 0.1, "val_metric": 0.5}
    # HF-style names; val/loss is minimised, the bundle's val/acc maximised: not read.
    assert cb.roles({"loss": torch.tensor(2.0), "train/learning_rate": 0.01,
                     "val/loss": 0.3}) == {"train_loss": 2.0, "lr": 0.01, "val_metric": None}
    assert cb.roles({"eval/accuracy": 0.7, "lr": True})["val_metric"] == 0.7
    assert cb.roles({"eval/accuracy": 0.7, "lr": True})["lr"] is None  # a bool is no lr
    got = mapped.roles({"train/loss": 1.0, "lr": 9.0, "opt/lr": 0.2, "f1": 0.4, "val/acc": 0.1})
    assert got == {"train_loss": 1.0, "lr": 0.2, "val_metric": 0.4}
    assert mapped.roles({"lr": 0.1, "val/acc": 0.5}) == {  # named keys are not guessed
        "train_loss": None, "lr": None, "val_metric": None}
    assert lr is not None
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr, 10 * lr])  # ratio kept


@pytest.mark.parametrize("order", ["before", "after"])
def test_script_on_wandbs_own_step_counter(tmp_path: Path, bundle_dir: Path, order: str) -> None:
    """``run.log(metrics)`` without ``step=``: before it, the callback joins each row exactly;
    after it, wandb's counter is ahead, so the values join the next row (as documented)."""
    steps = 8
    with agent_run(tmp_path, sweep_id=None, params={"total_steps": 40}) as run:
        cb = SweepCallback(bundle_dir)
        returned = []
        for i in range(steps):
            metrics = {"train/loss": 1.0 / (i + 1), "lr": PEAK_LR}
            if order == "before":
                returned.append(cb.log(metrics, i))
            run.log(metrics)
            if order == "after":
                returned.append(cb.log(metrics, i))
        run_id = run.id
    rows = history_rows(read_log(run_log(tmp_path, run_id))[0])
    shift = 0 if order == "before" else 1
    assert sorted(rows) == list(range(steps + shift))
    for i in range(1, steps):  # at step i: what was recommended for it, at step i - 1
        assert rows[i + shift][LR_KEY] == returned[i - 1]
    assert all("train/loss" in rows[i] for i in range(steps))
    if order == "after":
        assert APPLIED_KEY not in rows[0] and "train/loss" not in rows[steps]
    assert cb.error is None

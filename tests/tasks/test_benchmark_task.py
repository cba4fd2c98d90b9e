"""The MNIST-1D benchmark task: logging, schedules, seeding, lr override, divergence.

Short real runs (1-2 epochs of 28 steps); the dataset is generated once per process.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.make_sweep import config_table, write_jsonl
from benchmarks.mnist1d_task import (
    SCHEDULES,
    TrainResult,
    load_splits,
    onecycle_lr,
    schedule_lr,
    steps_per_epoch,
    train_run,
)
from benchmarks.thin_sweep import thin_record
from tests.tiny import FIXTURE
from tracker_sched.schema import RunRecord

PEAK = 1e-2



@pytest.fixture(scope="module")
def onecycle_run() -> TrainResult:
    return train_run(model="cnn", schedule="onecycle", peak_lr=PEAK, seed=0, epochs=2)


def test_splits_have_the_documented_sizes() -> None:
    d = load_splits()
    assert d.x_train.shape == (3500, 40) and d.y_train.shape == (3500,)
    assert d.x_val.shape == (500, 40) and d.x_test.shape == (1000, 40)
    assert steps_per_epoch(128) == 28


def test_log_steps_strictly_increasing_and_in_range(onecycle_run: TrainResult) -> None:
    rec = onecycle_run.record
    assert rec.state == "finished"
    assert rec.total_steps == 56
    steps = rec.train_loss.step
    assert steps[0] == 3
    assert all(b > a for a, b in pairwise(steps))
    assert steps[0] >= 1 and steps[-1] == rec.total_steps
    # every 3 steps plus the last one (56 is not a multiple of 3)
    assert steps == [*range(3, 56, 3), 56]
    assert rec.lr.step == steps and rec.val_metric.step == steps
    assert all(math.isfinite(v) for v in rec.train_loss.value)
    assert all(0.0 <= v <= 1.0 for v in rec.val_metric.value)
    assert onecycle_run.final_val_acc == rec.val_metric.value[-1]
    assert 0.0 <= onecycle_run.final_test_acc <= 1.0
    assert rec.config == {
        "task": "mnist1d",
        "model": "cnn",
        "schedule": "onecycle",
        "peak_lr": PEAK,
        "seed": 0,
        "epochs": 2,
        "batch_size": 128,
    }
    assert rec.run_id == "cnn-onecycle-1e-02-s0" and rec.sweep_id == "mnist1d-cnn"
    assert rec.metric_keys == {"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"}


def test_record_round_trips_through_json(onecycle_run: TrainResult) -> None:
    rec = onecycle_run.record
    assert RunRecord.model_validate_json(rec.model_dump_json()) == rec


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_logged_lr_is_the_schedule_of_the_last_step(schedule: str) -> None:
    rec = train_run(schedule=schedule, peak_lr=PEAK, seed=0, epochs=1, log_every=1).record
    total = rec.total_steps
    assert rec.lr.step == list(range(1, total + 1))
    expected = [schedule_lr(schedule, s - 1, total, PEAK) for s in rec.lr.step]
    assert rec.lr.value == pytest.approx(expected, rel=1e-12)
    assert rec.lr.value[0] == pytest.approx(PEAK / 25 if schedule == "onecycle" else PEAK)


def test_onecycle_matches_torch_and_peaks_at_30_percent() -> None:
    for total in (56, 840):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=PEAK, total_steps=total)
        ours, theirs = [], []
        for k in range(total):
            theirs.append(opt.param_groups[0]["lr"])
            ours.append(onecycle_lr(k, total, PEAK))
            opt.step()
            sched.step()
        assert ours == pytest.approx(theirs, rel=1e-12)
        assert ours[0] == pytest.approx(PEAK / 25)
        assert ours[-1] == pytest.approx(PEAK / 25 / 1e4)
        k_max = int(np.argmax(ours))
        assert abs(k_max / total - 0.3) <= 2 / total
        assert max(ours) == pytest.approx(PEAK, rel=1e-3)


def test_cosine_and_step_formulas() -> None:
    total = 840
    assert schedule_lr("cosine", 0, total, 1.0) == 1.0
    assert schedule_lr("cosine", 420, total, 1.0) == pytest.approx(0.5)
    assert schedule_lr("cosine", total - 1, total, 1.0) == pytest.approx(1e-3)  # the floor
    assert min(schedule_lr("cosine", k, total, 1.0) for k in range(total)) > 0
    assert [schedule_lr("step", k, total, 1.0) for k in (0, 419, 420, 629, 630, 839)] == (
        pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    )
    assert schedule_lr("constant", 123, total, 0.3) == 0.3
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_lr("linear", 0, total, 1.0)


def test_same_seed_same_record_different_seed_different(onecycle_run: TrainResult) -> None:
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    again = train_run(model="cnn", schedule="onecycle", peak_lr=PEAK, seed=0, epochs=2)
    assert again.record == onecycle_run.record
    assert again.final_test_acc == onecycle_run.final_test_acc
    other = train_run(model="cnn", schedule="onecycle", peak_lr=PEAK, seed=1, epochs=2)
    assert other.record.train_loss.value != onecycle_run.record.train_loss.value
    assert other.record.run_id == "cnn-onecycle-1e-02-s1"
    # no global random state consumed or reseeded
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]


def test_mlp_runs() -> None:
    res = train_run(model="mlp", schedule="constant", peak_lr=1e-3, seed=0, epochs=1)
    assert res.record.state == "finished"
    assert res.record.run_id == "mlp-constant-1e-03-s0"
    assert res.record.config["model"] == "mlp"


def test_lr_fn_overrides_the_schedule() -> None:
    calls: list[int] = []

    def lr_fn(k: int) -> float:
        calls.append(k)
        return 1e-4 * (1 + k)

    rec = train_run(schedule="onecycle", peak_lr=PEAK, epochs=1, lr_fn=lr_fn).record
    assert rec.lr.value == pytest.approx([1e-4 * s for s in rec.lr.step], rel=1e-12)
    assert calls[-1] == rec.total_steps - 1 and set(range(rec.total_steps)) <= set(calls)
    assert rec.config["schedule"] == "custom"
    assert rec.run_id.startswith("cnn-custom-")
    labelled = train_run(schedule="advisor", epochs=1, lr_fn=lambda k: 1e-3).record
    assert labelled.config["schedule"] == "advisor"
    assert set(labelled.lr.value) == {1e-3}


def test_observer_called_once_per_log_point() -> None:
    seen: list[tuple[int, float, float, float]] = []
    res = train_run(epochs=1, log_every=5, observer=lambda *a: seen.append(a))
    rec = res.record
    assert [s[0] for s in seen] == rec.train_loss.step == [*range(5, 28, 5), 28]
    assert [s[1] for s in seen] == rec.train_loss.value
    assert [s[2] for s in seen] == rec.val_metric.value
    assert [s[3] for s in seen] == rec.lr.value


def test_absurd_lr_crashes_with_nan_loss(tmp_path: Path) -> None:
    seen: list[int] = []
    res = train_run(
        schedule="constant", peak_lr=1e3, epochs=1, observer=lambda s, *_: seen.append(s)
    )
    rec = res.record
    assert rec.state == "crashed"
    losses = rec.train_loss.value
    assert math.isnan(losses[-1])
    assert all(math.isfinite(v) for v in losses[:-1])
    assert rec.train_loss.step[-1] < rec.total_steps
    assert rec.lr.value[-1] == 1e3
    assert seen == rec.train_loss.step  # the crash point is observed too
    assert all(b > a for a, b in pairwise(rec.train_loss.step))
    # NaN survives JSON and thinning
    back = RunRecord.model_validate_json(rec.model_dump_json())
    assert math.isnan(back.train_loss.value[-1])
    thinned = thin_record(rec, every=100)
    assert thinned.train_loss.step[0] == rec.train_loss.step[0]
    assert thinned.train_loss.step[-1] == rec.train_loss.step[-1]
    assert math.isnan(thinned.train_loss.value[-1])

    # sweep helpers: sorted JSONL, NaN written as a JSON constant, table best first
    ok = train_run(schedule="constant", peak_lr=3e-3, epochs=1)
    out = tmp_path / "s.jsonl"
    write_jsonl(out, [ok, res])
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["run_id"] for line in lines]
    assert ids == sorted([ok.record.run_id, rec.run_id])
    assert "NaN" in lines[ids.index(rec.run_id)]
    assert not list(tmp_path.glob(".*tmp"))
    rows = config_table([res, ok])
    assert [r["mean_val_acc"] for r in rows] == sorted(
        [res.final_val_acc, ok.final_val_acc], reverse=True
    )
    assert {r["crashed"] for r in rows} == {0, 1}


def test_fixture_is_the_thinned_sweep() -> None:
    path = FIXTURE
    lines = path.read_text().splitlines()
    assert len(lines) == 48 and path.stat().st_size < 600_000
    recs = [RunRecord.model_validate_json(line) for line in lines]
    assert [r.run_id for r in recs] == sorted(r.run_id for r in recs)
    for r in recs:
        assert r.total_steps == 840 and r.train_loss.step[-1] == 840
        assert r.train_loss.step[0] == 3
        assert r.lr.step == r.train_loss.step == r.val_metric.step


def test_schedulefree_optimizer_runs_at_a_constant_lr() -> None:
    res = train_run(schedule="constant", peak_lr=3e-3, seed=0, epochs=1, optimizer="schedulefree")
    rec = res.record
    assert rec.config["schedule"] == "schedulefree"
    assert rec.lr is not None and set(rec.lr.value) == {3e-3}
    assert 0.0 <= res.final_test_acc <= 1.0
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_run(epochs=1, optimizer="lion")

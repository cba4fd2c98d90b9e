"""The W&B sweep callback's opt-in stop, on a real offline run: the loop ends cleanly, the
run is marked (tag and summary, with the odds) and every row logged is in its .wandb file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import logged_rows
from tests.wandb.sweep_helpers import agent_run, history_rows, read_log, run_log, summary_of
from tracker_sched.integrations.wandb import SweepCallback
from tracker_sched.model.stop_odds import StopRule

wandb = pytest.importorskip("wandb")

KEYS = {"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"}


def test_opt_in_stop_marks_the_run_and_keeps_every_row(stop_fit, tmp_path: Path) -> None:
    fit, sweep = stop_fit
    loser = sweep.configs[-8]
    run_rec = sweep.run(loser.family, loser.peak_lr, 4)
    best = sweep.configs[0].final_val
    logged: dict[int, dict[str, float]] = {}
    with agent_run(tmp_path, sweep_id="stop-sweep", params={"peak_lr": loser.peak_lr},
                   config={"total_steps": sweep.total_steps}) as run:
        cb = SweepCallback(fit.bundle, stop=StopRule(threshold=0.05, patience=2),
                           incumbent=best)
        for step, row in logged_rows(run_rec):
            metrics = {KEYS[role]: value for role, value in row.items()}
            run.log(metrics, step=step)
            cb.log(metrics, step)
            logged[step] = metrics
            if cb.should_stop:
                break
        run_id = run.id
    last = max(logged)
    assert cb.should_stop and last < sweep.total_steps
    decision = cb.stop_watch.decision
    assert decision is not None and decision.stop and decision.p_beat < 0.05

    records, scan = read_log(run_log(tmp_path, run_id))
    assert scan.damage == []
    rows = history_rows(records)
    assert sorted(rows) == sorted(logged)  # one row per logged step, none lost, none after
    for step, metrics in logged.items():
        for key, value in metrics.items():
            assert rows[step][key] == pytest.approx(value), (step, key)
    p_beats = [r["tracker_sched/p_beat"] for r in rows.values() if "tracker_sched/p_beat" in r]
    assert p_beats and p_beats[-1] == pytest.approx(decision.p_beat)
    summary = summary_of(records)
    assert summary["tracker_sched/stopped"] is True
    assert summary["tracker_sched/stop_step"] == last
    assert summary["tracker_sched/stop_p_beat"] == pytest.approx(decision.p_beat)
    assert summary["tracker_sched/stop_incumbent"] == pytest.approx(best)
    tags = [t for r in records if r.WhichOneof("record_type") == "run" for t in r.run.tags]
    assert "tracker_sched.stopped" in tags


def test_stop_is_off_by_default_and_a_failing_decision_never_stops(stop_fit,
                                                                   tmp_path: Path) -> None:
    fit, sweep = stop_fit
    loser = sweep.configs[-8]
    run_rec = sweep.run(loser.family, loser.peak_lr, 4)

    def broken() -> float:
        raise RuntimeError("the sweep's store is down")

    with agent_run(tmp_path, sweep_id=None, params={},
                   config={"total_steps": sweep.total_steps}):
        off = SweepCallback(fit.bundle)
        failing = SweepCallback(fit.bundle, stop=StopRule(), incumbent=broken)
        for step, row in logged_rows(run_rec):
            metrics = {KEYS[role]: value for role, value in row.items()}
            assert off.log(metrics, step) is not None
            assert failing.log(metrics, step) is not None
    assert not off.should_stop and off.stop_watch is None
    assert not failing.should_stop and "store is down" in (failing.stop_watch.error or "")

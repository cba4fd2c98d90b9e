"""The ``best`` planner's forecast: a best plan carries the generative model's predicted final
metric (the generative planner's current-course forecast), once the live window is full and
the bundle has generative members; else None, and never an exception.

On the session's planner bundle (tests/conftest.py): no fit of its own.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.tiny import history_until
from tracker_sched.advising.advisor import Advisor
from tracker_sched.bundle.folder import Bundle
from tracker_sched.planning.best import BestPlanner
from tracker_sched.planning.control import make_planner
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import RunRecord

TOTAL = 840  # the fixture sweep's budget
NOW = 300  # a full window: 40 grid points, window 10 need 840 * 9 / 39 = 194 steps


@pytest.fixture(scope="module")
def run(fixture_runs: list[RunRecord]) -> RunRecord:
    return next(r for r in fixture_runs if r.run_id == "cnn-onecycle-3e-02-s0")


def test_a_best_plan_carries_the_generative_forecast_of_its_course(
        planner_bundle: Bundle, run: RunRecord) -> None:
    history = history_until(run, NOW)
    best = make_planner(planner_bundle, "best").plan(history, step=NOW, total_steps=TOTAL)
    # The generative planner's forecast of the current course: its answer when no candidate
    # may beat it (a fallback keeps the course and says what it predicts).
    keep = GenerativePlanner(planner_bundle, PlannerConfig(min_gain=1e9)).plan(
        history, step=NOW, total_steps=TOTAL)
    assert best.status == "planned" and best.mode == "best"
    assert keep.status == "fallback" and keep.predicted_final is not None
    assert best.predicted_final == pytest.approx(keep.predicted_final, rel=1e-5)
    assert best.predicted_spread == pytest.approx(keep.predicted_spread, rel=1e-3, abs=1e-6)
    assert best.predicted_spread is not None and best.predicted_spread > 0  # 2 members
    early = BestPlanner(planner_bundle).plan(history_until(run, 50), step=50,
                                             total_steps=TOTAL)
    assert early.schedule == best.schedule  # the forecast changes nothing of the plan


def test_no_forecast_before_a_full_window_or_without_the_metric(
        planner_bundle: Bundle, run: RunRecord, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracker_sched.planning.best")
    planner = BestPlanner(planner_bundle)
    early = planner.plan(history_until(run, 150), step=150, total_steps=TOTAL)
    assert early.status == "planned" and early.predicted_final is None
    h = history_until(run, NOW)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    no_val = LiveHistory(train_loss=h.train_loss, lr=h.lr, val_metric=empty)
    nothing = planner.plan(no_val, step=NOW, total_steps=TOTAL)
    assert nothing.predicted_final is None and nothing.predicted_spread is None
    assert planner.plan(LiveHistory(empty, empty, empty), step=NOW,
                        total_steps=TOTAL).predicted_final is None  # nothing logged
    assert not caplog.records  # expected: not warned about


def test_a_failed_forecast_leaves_the_plan_and_warns_once(
        planner_bundle: Bundle, run: RunRecord, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracker_sched.planning.best")

    def broken(self: GenerativePlanner, w: object) -> None:
        raise RuntimeError("solver blew up")

    monkeypatch.setattr(GenerativePlanner, "_search", broken)
    advisor = Advisor(planner_bundle, total_steps=TOTAL, mode="best", replan_every=5,
                      max_replans=None)
    for step in range(0, NOW + 1, 20):
        advisor.observe(step, train_loss=1.0, val_metric=0.5, lr=0.01)
    assert advisor.replans >= 2 and advisor.plan.status == "planned"
    assert advisor.plan.predicted_final is None
    assert [r.getMessage() for r in caplog.records] == [
        "tracker-sched: no forecast for the best plan: RuntimeError: solver blew up"]


def test_a_control_bundle_plans_best_without_a_forecast(control_bundle: Bundle) -> None:
    from tests.synthetic import make_sweep

    run = make_sweep(total_steps=200).runs[0]
    rec = make_planner(control_bundle, "best").plan(history_until(run, 150), step=150,
                                                    total_steps=200)
    assert rec.mode == "best" and rec.predicted_final is None

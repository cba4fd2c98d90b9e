"""The local advisor on the planner bundle (tests/conftest.py): warm-up, plans, retries,
never a raise."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tracker_sched.advising.advisor import MAX_FAILURES, Advisor
from tracker_sched.bundle.folder import Bundle
from tracker_sched.schema import Recommendation, RunRecord


@pytest.fixture(scope="module")
def runs(fixture_runs: list[RunRecord]) -> list[RunRecord]:
    return fixture_runs


@pytest.fixture(scope="module")
def bundle(planner_bundle: Bundle) -> Bundle:
    return planner_bundle


def a_run(runs: list[RunRecord], rid: str = "cnn-onecycle-3e-02-s0") -> RunRecord:
    return next(r for r in runs if r.run_id == rid)


def test_open_loop_advisor_plans_once(bundle: Bundle, runs: list[RunRecord]) -> None:
    run = a_run(runs)
    adv = Advisor(bundle, total_steps=840, replan_every=1, max_replans=1)
    assert run.train_loss and run.val_metric and run.lr
    for i, step in enumerate(run.train_loss.step):
        adv.observe(step, train_loss=run.train_loss.value[i], val_metric=run.val_metric.value[i],
                    lr=run.lr.value[i])
    assert adv.replans == 1
    assert adv.plan.status in ("planned", "fallback")


def test_advisor_follows_the_warmup_plan_then_plans(
    bundle: Bundle, runs: list[RunRecord]
) -> None:
    run = a_run(runs)
    adv = Advisor(bundle, total_steps=840, replan_every=5)
    assert adv.plan.status == "warmup"
    sweep = bundle.manifest.sweep
    assert adv.lr(0) == pytest.approx(sweep.warmup_lr[0], rel=1e-6)
    assert run.train_loss and run.val_metric and run.lr
    for i, step in enumerate(run.train_loss.step):
        if step > 400:
            break
        adv.observe(step, train_loss=run.train_loss.value[i], val_metric=run.val_metric.value[i],
                    lr=run.lr.value[i])
    assert adv.plan.status in ("planned", "fallback")
    assert adv.plan.step > 200
    assert 0 < adv.lr(500) <= sweep.best_peak_lr * (1 + 1e-9)


def test_advisor_never_raises(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    adv = Advisor(bundle, total_steps=100, replan_every=1)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planner exploded")

    adv.planner.plan = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="tracker_sched.advisor"):
        for step in range(1, 100):
            rec = adv.observe(step, train_loss=float("nan"), val_metric=None, lr=-1.0)
            assert adv.lr(step) > 0
        adv.observe(50, train_loss=1.0)  # out of order: ignored
        assert rec.status == "fallback"
        assert "planner exploded" in rec.reason
    assert sum("planner exploded" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert adv.lr(10**9) > 0
    # A failed replan does not use up the plans; after MAX_FAILURES the advisor stops trying.
    assert adv.replans == 0 and adv.failures == MAX_FAILURES
    # A step that is no number at all still never raises.
    for bad in (None, float("nan"), "x"):
        assert adv.observe(bad, train_loss=1.0).status == "fallback"  # type: ignore[arg-type]


def test_a_failed_replan_is_retried(bundle: Bundle, runs: list[RunRecord]) -> None:
    adv = Advisor(bundle, total_steps=runs[0].total_steps or 840, replan_every=5)
    real, calls = adv.planner.plan, []

    def flaky(*args: Any, **kwargs: Any) -> Recommendation:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return real(*args, **kwargs)

    adv.planner.plan = flaky  # type: ignore[method-assign]
    run = runs[0]
    assert run.train_loss and run.val_metric and run.lr
    val = dict(zip(run.val_metric.step, run.val_metric.value, strict=True))
    for i, step in enumerate(run.train_loss.step):
        adv.observe(step, train_loss=run.train_loss.value[i], val_metric=val.get(step),
                    lr=run.lr.value[i])
    assert len(calls) == 2 and adv.failures == 1 and adv.replans == 1
    assert adv.plan.status in ("planned", "fallback")
    assert "transient" not in adv.plan.reason


# --------------------------------------------------------------------------- LRScheduler

"""The generative planner on the planner bundle (tests/conftest.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.tiny import history_until
from tracker_sched.bundle.folder import Bundle
from tracker_sched.data.grid import LOG_LR
from tracker_sched.errors import InputError
from tracker_sched.model.latent import solve_stacked
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import RunRecord, Schedule


@pytest.fixture(scope="module")
def runs(fixture_runs: list[RunRecord]) -> list[RunRecord]:
    return fixture_runs


@pytest.fixture(scope="module")
def bundle(planner_bundle: Bundle) -> Bundle:
    return planner_bundle


def a_run(runs: list[RunRecord], rid: str = "cnn-onecycle-3e-02-s0") -> RunRecord:
    return next(r for r in runs if r.run_id == rid)


def test_plan_is_a_valid_schedule_to_the_end_of_the_budget(
    bundle: Bundle, runs: list[RunRecord]
) -> None:
    run = a_run(runs)
    planner = GenerativePlanner(bundle)
    rec = planner.plan(history_until(run, 300), step=300, total_steps=840)
    assert rec.status in ("planned", "fallback")
    steps, lrs = np.asarray(rec.schedule.step), np.asarray(rec.schedule.lr)
    assert steps[-1] == 840 and np.all(np.diff(steps) > 0) and steps[0] <= 300
    assert np.all(np.isfinite(lrs)) and np.all(lrs > 0)
    assert lrs.max() <= bundle.manifest.sweep.best_peak_lr * (1 + 1e-9)
    assert rec.samples_drawn == 64 and 1 <= rec.samples_accepted <= 64
    assert rec.predicted_final is not None and 0 <= rec.predicted_final <= 1.5


def test_plans_are_seeded_and_leave_global_rng_alone(
    bundle: Bundle, runs: list[RunRecord]
) -> None:
    h = history_until(a_run(runs), 300)
    before = torch.get_rng_state()
    a = GenerativePlanner(bundle, PlannerConfig(seed=3)).plan(h, step=300, total_steps=840)
    b = GenerativePlanner(bundle, PlannerConfig(seed=3)).plan(h, step=300, total_steps=840)
    assert torch.equal(before, torch.get_rng_state())
    assert a == b


def test_lr_cap_guard(bundle: Bundle, runs: list[RunRecord]) -> None:
    cfg = PlannerConfig(lr_cap=0.05)
    rec = GenerativePlanner(bundle, cfg).plan(history_until(a_run(runs), 300), step=300,
                                             total_steps=840)
    assert max(rec.schedule.lr) <= 0.05 * bundle.manifest.sweep.best_peak_lr * (1 + 1e-9)


def test_no_rise_late_in_training(bundle: Bundle, runs: list[RunRecord]) -> None:
    cfg = PlannerConfig(no_rise_after_tau=0.0)  # never rise, from now on
    rec = GenerativePlanner(bundle, cfg).plan(history_until(a_run(runs), 300), step=300,
                                             total_steps=840)
    assert np.all(np.diff(np.asarray(rec.schedule.lr)) <= 1e-15)


def test_change_per_replan_is_limited(bundle: Bundle, runs: list[RunRecord]) -> None:
    current = Schedule(step=[0, 840], lr=[1e-3, 1e-3])
    cfg = PlannerConfig(max_change_dex=0.1, no_rise_after_tau=1.0, lr_cap=1e6,
                        trust_region_dex=None)
    rec = GenerativePlanner(bundle, cfg).plan(history_until(a_run(runs), 300), step=300,
                                             total_steps=840, current=current)
    log_lr = np.log10(rec.schedule.lr)
    assert np.all(np.abs(log_lr + 3) <= 0.1 + 1e-9)


def test_trust_region_around_the_incumbent(bundle: Bundle, runs: list[RunRecord]) -> None:
    cfg = PlannerConfig(trust_region_dex=0.05, lr_cap=1e6, no_rise_after_tau=1.0)
    planner = GenerativePlanner(bundle, cfg)
    rec = planner.plan(history_until(a_run(runs), 300), step=300, total_steps=840)
    inc = planner.incumbent(np.asarray(rec.schedule.step), 840)
    assert np.all(np.abs(np.log10(rec.schedule.lr) - inc) <= 0.05 + 1e-9)
    # the incumbent is the sweep's best run's schedule stretched to the run's budget
    sweep = bundle.manifest.sweep
    assert planner.incumbent(np.array([0, 840]), 840) == pytest.approx(
        np.log10([sweep.warmup_lr[0], sweep.warmup_lr[-1]])
    )


def test_fallback_when_nothing_matches_the_live_phase(
    bundle: Bundle, runs: list[RunRecord]
) -> None:
    current = Schedule(step=[0, 840], lr=[2e-3, 2e-3])
    cfg = PlannerConfig(tolerance=1e-9, min_tolerance=1e-9, noise_sigma=1.0)
    rec = GenerativePlanner(bundle, cfg).plan(history_until(a_run(runs), 300), step=300,
                                             total_steps=840, current=current)
    assert rec.status == "fallback"
    assert "phase alignment" in rec.reason
    assert np.allclose(rec.schedule.lr, 2e-3)  # the current plan is kept


def test_fallback_when_no_candidate_beats_the_current_course(
    bundle: Bundle, runs: list[RunRecord]
) -> None:
    rec = GenerativePlanner(bundle, PlannerConfig(min_gain=1e9)).plan(
        history_until(a_run(runs), 300), step=300, total_steps=840
    )
    assert rec.status == "fallback"
    assert "beats the current course" in rec.reason


def test_bad_input_raises_input_error(bundle: Bundle, runs: list[RunRecord]) -> None:
    planner = GenerativePlanner(bundle)
    with pytest.raises(InputError, match="outside the budget"):
        planner.plan(history_until(a_run(runs), 300), step=900, total_steps=840)
    empty = LiveHistory(*(3 * [(np.zeros(0, dtype=np.int64), np.zeros(0))]))
    with pytest.raises(InputError, match="no point"):
        planner.plan(empty, step=10, total_steps=840)


def test_stacked_solve_equals_member_by_member(bundle: Bundle) -> None:
    gen = torch.Generator().manual_seed(0)
    models = bundle.models
    h0 = torch.randn(len(models), 5, models[0].config.ode_dim, generator=gen)
    offsets = torch.arange(20, dtype=torch.float32) / 39
    with torch.no_grad():
        stacked = solve_stacked(models, h0, offsets, interp="cubic")
        for i, m in enumerate(models):
            torch.testing.assert_close(stacked[i], m.solve(h0[i], offsets), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- advisor


def test_a_relative_lr_target_moves_the_current_plan_by_the_decoded_difference(
    bundle: Bundle, runs: list[RunRecord]
) -> None:
    # A copy whose decoders read no lr from the latent: every candidate, the live course
    # included, decodes the same lr, so the top candidates' difference from it is zero.
    flat = copy.deepcopy(bundle)
    with torch.no_grad():
        for model in flat.models:
            model.decoder.weight[LOG_LR].zero_()
    h = history_until(a_run(runs), 300)
    current = Schedule(step=[0, 300, 840], lr=[3e-3, 2e-3, 5e-4])
    free = {"lr_cap": 1e6, "no_rise_after_tau": 1.0, "max_change_dex": 10.0,
            "trust_region_dex": None}
    plans = {t: GenerativePlanner(flat, PlannerConfig(lr_target=t, **free)).plan(
        h, step=300, total_steps=840, current=current) for t in ("absolute", "relative")}
    assert {r.status for r in plans.values()} == {"planned"}
    steps = np.asarray(plans["relative"].schedule.step)
    kept = np.interp(steps, current.step, np.log10(current.lr))
    assert np.allclose(np.log10(plans["relative"].schedule.lr), kept, atol=1e-9)
    # the absolute target is the decoded lr, whatever the current plan says
    other = GenerativePlanner(flat, PlannerConfig(lr_target="absolute", **free)).plan(
        h, step=300, total_steps=840, current=Schedule(step=[0, 840], lr=[1e-4, 1e-4]))
    absolute = np.log10(plans["absolute"].schedule.lr)
    assert np.allclose(np.log10(other.schedule.lr), absolute, atol=1e-9)
    assert np.abs(absolute - kept).max() > 0.1
    # without a current plan there is no plan to move: the relative target is the absolute
    # one (the decoded live course is `current`), on the unmodified bundle too
    a, r = (GenerativePlanner(bundle, PlannerConfig(lr_target=t)).plan(h, step=300,
                                                                        total_steps=840)
            for t in ("absolute", "relative"))
    assert a.status == r.status == "planned"
    assert np.allclose(a.schedule.lr, r.schedule.lr, rtol=1e-9)

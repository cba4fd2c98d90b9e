"""The generative planner, the advisor and the LRScheduler, on a bundle fitted to the fixture."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.tiny import history_until
from tracker_sched.advising.advisor import MAX_FAILURES, Advisor
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.integrations.pytorch.scheduler import AdvisorLR
from tracker_sched.model.latent import ModelConfig, solve_stacked
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import Recommendation, RunRecord, Schedule
from tracker_sched.sources.files import read_sweep

FIXTURE = Path(__file__).parent / "fixtures" / "cnn_sweep_small.jsonl"



@pytest.fixture(scope="module")
def runs() -> list[RunRecord]:
    return read_sweep(FIXTURE).runs


@pytest.fixture(scope="module")
def bundle(runs: list[RunRecord]) -> Bundle:
    cfg = FitConfig(
        max_iterations=40, eval_every=20, batch_size=32, grid_points=40, window=10, ensemble=2,
        model=ModelConfig(latent_dim=6, ode_dim=12, hidden=24, encoder_hidden=24),
    )
    return fit_sweep(runs, cfg, workers=1, progress=False).bundle


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


def test_open_loop_advisor_plans_once(bundle: Bundle, runs: list[RunRecord]) -> None:
    run = a_run(runs)
    adv = Advisor(bundle, total_steps=840, replan_every=1, max_replans=1)
    assert run.train_loss and run.val_metric and run.lr
    for i, step in enumerate(run.train_loss.step):
        adv.observe(step, train_loss=run.train_loss.value[i], val_metric=run.val_metric.value[i],
                    lr=run.lr.value[i])
    assert adv.replans == 1
    assert adv.plan.status in ("planned", "fallback")


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


def test_lr_scheduler_in_a_real_training_loop(bundle: Bundle) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 0.1},
        {"params": model[2].parameters(), "lr": 0.05},  # half the first group's lr
    ])
    total = 60
    adv = Advisor(bundle, total_steps=total, replan_every=3)
    sched = AdvisorLR(opt, adv)
    losses = []
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(adv.lr(step), rel=1e-9)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * adv.lr(step), rel=1e-9)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
        if step % 3 == 2:  # observe first, so a replan applies from the very next step
            adv.observe(step + 1, train_loss=losses[-1], val_metric=0.5, lr=adv.lr(step))
        sched.step()
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- recommend CLI


def test_recommend_cli(bundle: Bundle, runs: list[RunRecord], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    from tracker_sched.cli import main
    from tracker_sched.schema import Recommendation

    bundle.save(tmp_path / "b")
    run = a_run(runs)
    assert run.train_loss and run.val_metric and run.lr
    lines = ["step,train_loss,val_metric,lr"]
    for i, step in enumerate(run.train_loss.step):
        if step <= 300:
            lines.append(f"{step},{run.train_loss.value[i]},{run.val_metric.value[i]},"
                         f"{run.lr.value[i]}")
    (tmp_path / "h.csv").write_text("\n".join(lines) + "\n")
    rc = main(["recommend", "--bundle", str(tmp_path / "b"), "--history",
               str(tmp_path / "h.csv"), "--total-steps", "840"])
    assert rc == 0
    rec = Recommendation.model_validate_json(capsys.readouterr().out)
    assert rec.step == max(s for s in run.train_loss.step if s <= 300)
    assert rec.schedule.step[-1] == 840 and rec.lr_now > 0

    (tmp_path / "bad.csv").write_text("step,train_loss\nx,1.0\n")
    rc = main(["recommend", "--bundle", str(tmp_path / "b"), "--history",
               str(tmp_path / "bad.csv"), "--total-steps", "840"])
    assert rc == 1
    assert "integer 'step'" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "train_loss": 1.0}\n[1, 2]\n')
    rc = main(["recommend", "--bundle", str(tmp_path / "b"), "--history",
               str(tmp_path / "bad.jsonl"), "--total-steps", "840"])
    err = capsys.readouterr().err
    assert rc == 1 and "row 2: a JSON object per line" in err and "Traceback" not in err

"""The generative planner on a sweep whose best schedule is known (tests/synthetic.py).

The sweep: constant, cosine and step schedules at five peak lrs, two seeds
each, on analytic noisy dynamics where cosine at 1e-2 is best by 4.4 points of
accuracy. A tiny model is fitted to it once per module (about 20 s on one
thread); live runs are fresh seeds of the same task, so a recommendation can
be scored against the truth (``SyntheticSweep.switched_final``).

"Picks the best" is measured in decades of lr over the remaining budget: the
plan's nearest sweep configuration (mean |log10 lr difference|) must be the
known best, within ``TOL_DEX``, half the spacing of the sweep's peak grid
(0.5 dex), so a neighbouring peak cannot pass.

The plan tests turn the schedule guards off (``GUARDS_OFF``, a non-default
setting, said here on purpose): the default trust region is a band around the
sweep's best schedule, which here *is* the known best, so with it on the
planner would pass without the model doing anything. Phase alignment stays at
its default unless a test says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from tests.synthetic import SyntheticSweep, make_sweep
from tests.tiny import history_until, tiny_config
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.model.latent import LatentODE, solve_stacked
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import Recommendation, Schedule

TOL_DEX = 0.25
NOW_TAU = 0.3  # replan point: the advisor's first plan after a 10-point window on a 40-point grid
LIVE_SEED = 7  # not one of the sweep's seeds
GUARDS_OFF: dict[str, Any] = {"lr_cap": 1e3, "trust_region_dex": None, "no_rise_after_tau": 1.0}


def fit(sweep: SyntheticSweep) -> Bundle:
    # Every run in the fit (no holdout, so no early stopping); the tiny model, 300 iterations.
    cfg = tiny_config(max_iterations=300, eval_every=300, batch_size=32, holdout_fraction=0.0)
    return fit_sweep(sweep.runs, cfg, workers=1, progress=False).bundle


@pytest.fixture(scope="module")
def sweep() -> SyntheticSweep:
    return make_sweep()


@pytest.fixture(scope="module")
def bundle(sweep: SyntheticSweep) -> Bundle:
    return fit(sweep)


def plan_from(sweep: SyntheticSweep, bundle: Bundle, family: str, peak: float,
              tau: float = NOW_TAU, current: Schedule | None = None,
              **config: object) -> tuple[Recommendation, int]:
    now = int(tau * sweep.total_steps)
    run = sweep.run(family, peak, LIVE_SEED)
    planner = GenerativePlanner(bundle, PlannerConfig(**config))  # type: ignore[arg-type]
    return planner.plan(history_until(run, now), step=now, total_steps=sweep.total_steps,
                        current=current), now


def future(rec: Recommendation, now: int) -> tuple[Sequence[int], Sequence[float]]:
    """The plan over the remaining budget (the schedule may start a grid cell before now)."""
    keep = [i for i, s in enumerate(rec.schedule.step) if s >= now]
    return [rec.schedule.step[i] for i in keep], [rec.schedule.lr[i] for i in keep]


# --------------------------------------------------------------------------- the known best


def test_the_sweep_has_a_clear_known_best_and_the_bundle_names_it(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    assert (sweep.best.family, sweep.best.peak_lr) == ("cosine", 1e-2)
    assert sweep.margin > 0.03  # 10x the validation noise (0.003)
    best = bundle.manifest.sweep.best_config
    assert (best["family"], best["peak_lr"]) == ("cosine", 1e-2)


def test_predicted_finals_rank_the_known_best_first(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    """The planner's score of the course each configuration is on (a fallback reports the
    current course's prediction: min_gain=1e9 makes every plan fall back).

    Read at tau 0.6: before tau 1/3 a step run and a constant run at the same peak have
    identical histories, so no model can rank them from there.
    """
    preds, truth = [], []
    for c in sweep.configs:
        rec, _ = plan_from(sweep, bundle, c.family, c.peak_lr, tau=0.6, min_gain=1e9)
        assert rec.status == "fallback" and rec.predicted_final is not None
        preds.append(rec.predicted_final)
        truth.append(c.final_val)
    assert int(np.argmax(preds)) == 0  # configs are ranked best first
    rank = np.argsort(np.argsort(preds))
    true_rank = np.argsort(np.argsort(truth))
    spearman = np.corrcoef(rank, true_rank)[0, 1]
    assert spearman > 0.9


def test_plan_from_the_best_start_stays_on_the_best_schedule(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    best = sweep.best
    rec, now = plan_from(sweep, bundle, best.family, best.peak_lr, **GUARDS_OFF)
    steps, lrs = future(rec, now)
    assert sweep.nearest(steps, lrs) == best
    assert sweep.distance_dex(best.family, best.peak_lr, steps, lrs) <= TOL_DEX
    # Following the plan ends close to the known best (the runner-up is 4.4 points down).
    assert sweep.switched_final(best.family, best.peak_lr, now, steps, lrs) >= (
        best.final_val - 0.02
    )


def test_plan_from_a_worse_family_at_the_best_peak_switches_to_the_best(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    """A constant-lr run at the best peak (true final 0.859): with the default phase
    alignment the cosine runs match its state at tau 0.3, so it can take their course.

    This and the test above also pass for a model fitted 10 iterations: the sweep's average
    lr shape after tau 0.3 decays like the best's. The ranking test and the switch up from
    cosine 3e-3 below are the ones such a model fails (docs/planner.md)."""
    best = sweep.best
    rec, now = plan_from(sweep, bundle, "constant", best.peak_lr, **GUARDS_OFF)
    assert rec.status == "planned"
    steps, lrs = future(rec, now)
    assert sweep.nearest(steps, lrs) == best
    assert sweep.distance_dex(best.family, best.peak_lr, steps, lrs) <= TOL_DEX
    stay = next(c for c in sweep.configs if (c.family, c.peak_lr) == ("constant", best.peak_lr))
    gained = sweep.switched_final("constant", best.peak_lr, now, steps, lrs) - stay.final_val
    assert gained > 0.03


def test_default_phase_alignment_cannot_leave_a_worse_peak(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    """A known limitation, pinned down: from cosine at 3e-3, the best runs' latents decode a
    different train loss and metric at now, so ``match="now"`` rejects them, and the plan
    stays near the run's own course. If this fails, the planner learnt to switch: update
    docs/planner.md and turn this into a test that it picks the best."""
    rec, now = plan_from(sweep, bundle, "cosine", 3e-3, **GUARDS_OFF)
    steps, lrs = future(rec, now)
    assert rec.samples_accepted < rec.samples_drawn
    own = sweep.distance_dex("cosine", 3e-3, steps, lrs)
    best = sweep.distance_dex(sweep.best.family, sweep.best.peak_lr, steps, lrs)
    assert own < best


@pytest.mark.parametrize("peak", [3e-3, 3e-2])
def test_without_phase_alignment_a_worse_peak_switches_to_the_best(
    sweep: SyntheticSweep, bundle: Bundle, peak: float
) -> None:
    """Non-default setting: ``tolerance=1e9`` accepts every candidate (phase alignment
    off), so the best runs' latents compete on their predicted final metric alone."""
    best = sweep.best
    rec, now = plan_from(sweep, bundle, "cosine", peak, tolerance=1e9, **GUARDS_OFF)
    assert rec.status == "planned" and rec.samples_accepted == rec.samples_drawn
    steps, lrs = future(rec, now)
    assert sweep.nearest(steps, lrs) == best
    assert sweep.distance_dex(best.family, best.peak_lr, steps, lrs) <= TOL_DEX
    stay = next(c for c in sweep.configs if (c.family, c.peak_lr) == ("cosine", peak))
    assert sweep.switched_final("cosine", peak, now, steps, lrs) > stay.final_val + 0.04


@pytest.mark.slow
def test_a_minimised_metric_picks_the_same_best() -> None:
    """Direction "min" (validation loss): the planner must prefer the lowest prediction."""
    sweep = make_sweep(metric="val_loss")
    bundle = fit(sweep)
    assert bundle.manifest.metrics.direction == "min"
    best = sweep.best
    assert (best.family, best.peak_lr) == ("cosine", 1e-2)
    rec, now = plan_from(sweep, bundle, "constant", best.peak_lr, **GUARDS_OFF)
    steps, lrs = future(rec, now)
    assert sweep.nearest(steps, lrs) == best
    assert sweep.switched_final("constant", best.peak_lr, now, steps, lrs) < (
        sweep.configs[1].final_val
    )


# --------------------------------------------------------------------------- guards, fallbacks
# (those not in tests/planning/test_planner.py)


def test_a_fallback_keeps_the_current_plan_but_still_caps_it(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    peak = bundle.manifest.sweep.best_peak_lr
    current = Schedule(step=[0, sweep.total_steps], lr=[10 * peak, 10 * peak])
    rec, _ = plan_from(sweep, bundle, "cosine", 1e-2, current=current, min_gain=1e9)
    assert rec.status == "fallback" and "beats the current course" in rec.reason
    assert np.allclose(rec.schedule.lr, peak)  # the kept plan, cut down to the cap


def test_a_fallback_without_a_current_plan_follows_the_decoded_course(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    rec, now = plan_from(sweep, bundle, "cosine", 1e-2, min_gain=1e9, **GUARDS_OFF)
    assert rec.status == "fallback"
    steps, lrs = future(rec, now)
    assert sweep.distance_dex("cosine", 1e-2, steps, lrs) <= TOL_DEX


def test_the_trust_region_wins_over_the_change_limit(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    """A current plan far below the band: the per-replan limit would hold the lr there, the
    trust region pulls it into the band (documented order: the incumbent's band wins)."""
    current = Schedule(step=[0, sweep.total_steps], lr=[1e-6, 1e-6])
    rec, _ = plan_from(sweep, bundle, "cosine", 1e-2, current=current, max_change_dex=0.1,
                         lr_cap=1e3, no_rise_after_tau=1.0)
    assert rec.status == "planned"
    planner = GenerativePlanner(bundle)
    inc = planner.incumbent(np.asarray(rec.schedule.step), sweep.total_steps)
    assert np.all(np.abs(np.log10(rec.schedule.lr) - inc) <= 0.3 + 1e-9)


def test_fewer_candidates_than_regimes_and_no_regimes(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    rec, _ = plan_from(sweep, bundle, "cosine", 1e-2, candidates=2)
    assert rec.samples_drawn == 2 and 1 <= rec.samples_accepted <= 2
    rec, _ = plan_from(sweep, bundle, "cosine", 1e-2, regimes=0, noise_sigma=0.0)
    # noise 0: every candidate is the current course, none can beat it
    assert rec.status == "fallback" and "beats the current course" in rec.reason


def test_unusable_live_points_are_dropped_and_all_bad_is_an_input_error(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    planner = GenerativePlanner(bundle)
    run = sweep.run("cosine", 1e-2, LIVE_SEED)
    h = history_until(run, 120)
    steps, lrs = h.lr
    bad_lr = LiveHistory(train_loss=h.train_loss, val_metric=h.val_metric,
                         lr=(steps, np.where(steps > 60, -1.0, lrs)))  # zero/negative lr
    rec = planner.plan(bad_lr, step=120, total_steps=400)
    # the plan starts where the usable points end (within one grid cell), not at step 120
    assert rec.schedule.step[0] <= 60 + 400 / 39
    nan_loss = LiveHistory(train_loss=(h.train_loss[0], np.full(h.train_loss[0].size, np.nan)),
                           lr=h.lr, val_metric=h.val_metric)
    with pytest.raises(InputError, match="no point"):
        planner.plan(nan_loss, step=120, total_steps=400)
    with pytest.raises(InputError, match="outside the budget"):
        planner.plan(h, step=-1, total_steps=400)
    with pytest.raises(InputError, match="outside the budget"):
        planner.plan(h, step=0, total_steps=0)


# --------------------------------------------------------------------------- fast paths


def test_the_planners_fast_paths_equal_the_models_own(bundle: Bundle) -> None:
    """The planner's batched encoder and rk4 loop against ``LatentODE.encode`` and
    ``solve_stacked`` (torchdiffeq), on three members with random weights."""
    gen = torch.Generator().manual_seed(1)
    cfg = bundle.manifest.model
    models = [LatentODE(cfg, generator=gen) for _ in range(3)]
    for m in models:
        m.eval()
    three = Bundle(bundle.manifest.model_copy(update={"members": 3}), models)
    planner = GenerativePlanner(three)
    with torch.no_grad():
        x = torch.randn(6, 10, 7, generator=gen)
        z = planner._fast.encoder(x)
        for i, m in enumerate(models):
            torch.testing.assert_close(z[i], m.encode(x, torch.full((6,), 10)),
                                       atol=1e-5, rtol=1e-5)
        h0 = torch.randn(3, 5, cfg.ode_dim, generator=gen)
        offsets = torch.arange(29, dtype=torch.float32) / 39
        ref = solve_stacked(models, h0, offsets, interp="linear")
        ref_dec = torch.stack([m.decode(h) for m, h in zip(models, ref, strict=True)])
        torch.testing.assert_close(planner._decode_path(h0, offsets), ref_dec,
                                   atol=1e-5, rtol=1e-5)


def test_coarser_planning_steps_change_the_plan_only_within_tolerance(
    sweep: SyntheticSweep, bundle: Bundle
) -> None:
    for family, peak in (("cosine", 1e-2), ("constant", 1e-2), ("cosine", 3e-3)):
        ref, _ = plan_from(sweep, bundle, family, peak)
        coarse, _ = plan_from(sweep, bundle, family, peak, solver_step_points=3)
        assert (coarse.status, coarse.samples_accepted) == (ref.status, ref.samples_accepted)
        assert np.abs(np.log10(coarse.schedule.lr) - np.log10(ref.schedule.lr)).max() < 1e-3
        assert coarse.predicted_final == pytest.approx(ref.predicted_final, abs=1e-4)

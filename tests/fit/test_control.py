"""Control mode: the lr-driven latent ODE, its fit checks, the control planner and its guards.

Fits are real (torch, small) on synthetic sweeps from ``tests/synthetic.py``, whose
analytic dynamics give the true outcome of ANY schedule: the planner's plans are
scored against the truth, not against the model that made them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.synthetic import SyntheticSweep, make_sweep, schedule, simulate
from tests.tiny import FIXTURE, history_until, tiny_config
from tracker_sched.advising.advisor import Advisor
from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import BundleManifest
from tracker_sched.errors import BundleError, InputError
from tracker_sched.fit.checks import (
    ControlChecks,
    RankingCheck,
    ResponseCheck,
    ResponseCheckConfig,
    exploit_scale,
    pooled_seed_sd,
    response_flags,
)
from tracker_sched.fit.control import ControlFitConfig, fit_control, recheck
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.model.control import ControlODE, interp_input
from tracker_sched.model.latent import ModelConfig
from tracker_sched.planning.control import ControlPlanner, ControlPlannerConfig, make_planner
from tracker_sched.planning.history import LiveHistory
from tracker_sched.schema import RunRecord, Series

GRID, WINDOW = 40, 12
SMALL = ModelConfig(latent_dim=6, ode_dim=12, hidden=24, encoder_hidden=24, step_points=2)


def random_lr(family: str, peak: float, tau: np.ndarray) -> np.ndarray:
    """The synthetic families, plus ``random-K``: a seeded smooth random log-lr curve around
    ``peak`` (what breaks the tie between lr and progress in a sweep)."""
    if not family.startswith("random"):
        return schedule(family, peak, tau)
    rng = np.random.default_rng(1000 + int(family.split("-")[1]))
    knots = np.log10(peak) + rng.uniform(-1.0, 0.5, 5)
    return np.asarray(schedule("constant", 1.0, tau) * 10 ** np.interp(tau, np.linspace(0, 1, 5),
                                                                         knots))


@pytest.fixture(scope="module")
def sweep() -> SyntheticSweep:
    return make_sweep(lr_fn=random_lr)


def with_random_runs(sw: SyntheticSweep, n: int) -> list[RunRecord]:
    return list(sw.runs) + [simulate(sw.task, f"random-{k}", 1e-2, 0, total_steps=sw.total_steps,
                                     lr_fn=random_lr) for k in range(n)]


@pytest.fixture(scope="module")
def tiny_bundle(sweep: SyntheticSweep) -> Bundle:
    """Seconds to fit; enough for every structural test (guards, fallbacks, formats)."""
    cfg = ControlFitConfig(grid_points=GRID, window=WINDOW, iterations=15, batch_size=16,
                           members=3, model=SMALL)
    return fit_control(sweep.runs, cfg, workers=1)


def plan_step(total: int) -> int:
    """The first step at which the advisor has a full window (its first plan)."""
    return int(np.ceil((WINDOW - 1) / (GRID - 1) * total))


# --------------------------------------------------------------------------- model


def test_interp_input_is_piecewise_linear_and_batched() -> None:
    u = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]])
    dt = 0.5
    assert torch.allclose(interp_input(u, torch.tensor(0.25), dt), torch.tensor([0.5, 2.0]))
    assert torch.allclose(interp_input(u, torch.tensor(0.75), dt), torch.tensor([2.0, 1.0]))
    assert torch.allclose(interp_input(u, torch.tensor(1.0), dt), torch.tensor([3.0, 0.0]))
    assert torch.allclose(interp_input(u, torch.tensor(5.0), dt), torch.tensor([3.0, 0.0]))


def test_the_lr_drives_the_forecast() -> None:
    """Same context, different future lr: different forecasts (the lr is an input)."""
    torch.manual_seed(0)
    model = ControlODE(SMALL, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 5, 7)
    offsets = torch.linspace(0, 0.5, 11)
    lo, _ = model.forward_input(x, torch.tensor([5]), offsets, torch.full((1, 11), -1.0), 0.05)
    hi, _ = model.forward_input(x, torch.tensor([5]), offsets, torch.full((1, 11), 1.0), 0.05)
    assert lo.shape == (1, 11, 2)
    assert torch.allclose(lo[:, 0], hi[:, 0])  # anchored at the same observation
    assert not torch.allclose(lo[:, -1], hi[:, -1])


# --------------------------------------------------------------------------- bundle


def test_control_bundle_round_trips_with_its_kind_and_checks(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    m = tiny_bundle.manifest
    assert m.kind == "control_ode" and m.members == 3
    checks = ControlChecks.model_validate(m.control)
    assert checks.ranking is not None and checks.response is not None
    assert len(checks.ranking.spearman) == 5
    tiny_bundle.save(tmp_path / "b")
    loaded = Bundle.load(tmp_path / "b")
    assert loaded.manifest.kind == "control_ode"
    assert all(isinstance(x, ControlODE) for x in loaded.models)
    x = torch.randn(2, 4, 7)
    u = torch.zeros(2, 6)
    off = torch.linspace(0, 0.2, 6)
    m0, m1 = tiny_bundle.models[0], loaded.models[0]
    assert isinstance(m0, ControlODE) and isinstance(m1, ControlODE)
    a, _ = m0.forward_input(x, torch.tensor([4, 3]), off, u, 0.04)
    b, _ = m1.forward_input(x, torch.tensor([4, 3]), off, u, 0.04)
    assert torch.allclose(a, b)


def test_a_manifest_without_kind_is_a_generative_bundle(tiny_bundle: Bundle,
                                                        tmp_path: Path) -> None:
    """Old bundles have no ``kind``: they load as latent_ode, so the kind picks the class."""
    raw = tiny_bundle.manifest.model_dump(mode="json")
    del raw["kind"]
    assert BundleManifest.model_validate(raw).kind == "latent_ode"
    tiny_bundle.save(tmp_path / "b")
    path = tmp_path / "b" / "bundle.json"
    path.write_text(path.read_text().replace('"kind": "control_ode",', ""))
    with pytest.raises(BundleError, match="do not fit the model config"):
        Bundle.load(tmp_path / "b")


# --------------------------------------------------------------------------- checks


def response(predicted: list[float], hold_low: float, sweep_final: list[float],
             best: float = 0.92, sd: float = 0.1) -> ResponseCheck:
    dex = list(np.linspace(-1.0, 0.0, len(predicted)))
    return ResponseCheck(
        family="cosine", context_run="r", context_tau=0.3, peak_dex=dex, predicted=predicted,
        sweep_dex=list(np.linspace(-1.0, 0.0, len(sweep_final))), sweep_final=sweep_final,
        hold_low_predicted=hold_low, best_observed=best, final_sd=sd,
        exploit_threshold=best + 0.5 * sd,
    )


def test_response_flags() -> None:
    cfg = ResponseCheckConfig()
    ok_peaked = response([0.8, 0.9, 0.93, 0.9], 0.7, [0.7, 0.92, 0.85])
    assert response_flags(ok_peaked, None, 1.0, cfg) == []
    # the sweep's best is at the top of the range and the model agrees: not a confounded model
    ok_edge = response([0.7, 0.8, 0.9, 0.93], 0.7, [0.6, 0.8, 0.92])
    assert response_flags(ok_edge, None, 1.0, cfg) == []
    # the pre-study's failure: ever better at lower lr, where the sweep is worse
    confounded = response([0.95, 0.94, 0.93, 0.92], 0.7, [0.6, 0.8, 0.92])
    flags = response_flags(confounded, None, 1.0, cfg)
    assert len(flags) == 1 and "monotone" in flags[0]
    exploitable = response([0.8, 0.9, 0.93, 0.9], 1.2, [0.7, 0.92, 0.85])
    flags = response_flags(exploitable, None, 1.0, cfg)
    assert len(flags) == 1 and "exploitable" in flags[0] and "hold a low lr" in flags[0]
    # a minimised metric: signs flip
    low_is_good = response([0.3, 0.2, 0.25, 0.3], 0.5, [0.4, 0.2, 0.3], best=0.2, sd=0.1)
    low_is_good = low_is_good.model_copy(update={"exploit_threshold": 0.15})
    assert response_flags(low_is_good, None, -1.0, cfg) == []
    # ... and a loss predicted far below anything observed is exploitable (the lowest
    # prediction is the most optimistic one; the hold-low probe is not the culprit here)
    too_low = low_is_good.model_copy(update={"predicted": [0.3, 0.10, 0.25, 0.3]})
    flags = response_flags(too_low, None, -1.0, cfg)
    assert len(flags) == 1 and "exploitable" in flags[0] and "peak sweep" in flags[0]
    ranked = RankingCheck(context_tau=0.3, context_runs=["r"], spearman=[-0.2], mean=-0.2,
                          worst=-0.2)
    flags = response_flags(ok_peaked, ranked, 1.0, ResponseCheckConfig(min_rank_corr=0.3))
    assert len(flags) == 1 and "ranking" in flags[0]


def test_pooled_seed_sd_and_the_exploit_scale() -> None:
    # pairs (a+d, a-d): sd d*sqrt(2) each; a single seed or a NaN adds no degree of freedom
    s = pooled_seed_sd([[0.9, 0.92], [0.5, 0.48, float("nan")], [0.7]])
    assert s == pytest.approx(0.01 * np.sqrt(2))
    assert pooled_seed_sd([[0.9], [0.8]]) is None
    assert exploit_scale(0.003, 0.008) == 0.008  # close configurations: the noise floor
    assert exploit_scale(0.012, 0.005) == 0.012  # spread configurations: their spread
    assert exploit_scale(0.003, None) == 0.003


def with_finals(runs: list[RunRecord], finals: dict[str, float]) -> list[RunRecord]:
    """The runs with their last validation value replaced (the early context is untouched,
    so a control model's predictions from it do not change)."""
    out = []
    for r in runs:
        assert r.val_metric is not None
        v = list(r.val_metric.value)
        v[-1] = finals[r.run_id]
        out.append(r.model_copy(update={"val_metric": Series(step=r.val_metric.step, value=v)}))
    return out


def test_the_seed_noise_floor_flags_only_predictions_beyond_the_noise(
    tiny_bundle: Bundle, sweep: SyntheticSweep
) -> None:
    """Through ``recheck`` (the real checks on a fitted model, no refit): the five leading
    configurations are made nearly equal (spread 0.0001) with seeds 0.01 apart in sd, and
    placed at 1 or 5 seed sds below what the model predicts for the best run's schedule.
    The old scale (their spread) flags both; the floor flags only the far one."""
    base = ControlChecks.model_validate(recheck(tiny_bundle, sweep.runs).manifest.control)
    assert base.response is not None and base.ranking is not None
    top = max(max(base.response.predicted), base.response.hold_low_predicted)
    by_cfg: dict[str, list[RunRecord]] = {}
    for r in sweep.runs:
        by_cfg.setdefault(repr(sorted((k, v) for k, v in r.config.items() if k != "seed")),
                          []).append(r)
    assert all(len(v) == 2 for v in by_cfg.values())
    # the leading configurations in their order (one context run each), kept in that order
    # so that the best run, the probe's context, stays the same
    lead = [next(k for k, v in by_cfg.items() if any(r.run_id == rid for r in v))
            for rid in base.ranking.context_runs]
    assert len(set(lead)) == 5
    seed_sd, d = 0.01, 0.01 / np.sqrt(2)
    for below, flagged in [(1.0, False), (5.0, True)]:
        x = top - below * seed_sd
        finals = {r.run_id: x - 0.2 for r in sweep.runs}
        for i, k in enumerate(lead):
            a, b = by_cfg[k]
            finals[a.run_id], finals[b.run_id] = x - 1e-4 * i + d, x - 1e-4 * i - d
        runs = with_finals(list(sweep.runs), finals)
        new = ControlChecks.model_validate(recheck(tiny_bundle, runs).manifest.control)
        old = ControlChecks.model_validate(recheck(
            tiny_bundle, runs, ResponseCheckConfig(seed_noise_floor=False)).manifest.control)
        assert new.response is not None and old.response is not None
        assert new.response.context_run == base.response.context_run
        assert max(max(new.response.predicted), new.response.hold_low_predicted) == \
            pytest.approx(top, abs=1e-5)
        assert new.response.seed_sd == pytest.approx(seed_sd, rel=1e-3)
        assert new.response.leading_sd is not None and new.response.leading_sd < 2e-4
        assert new.response.final_sd == new.response.seed_sd
        assert any("exploitable" in f for f in old.flags)  # the shrunken scale flags both
        assert old.response.seed_sd is None
        assert any("exploitable" in f for f in new.flags) is flagged


def test_old_bundle_checks_load_without_the_new_fields(tiny_bundle: Bundle) -> None:
    """Bundles fitted before the floor have no ``leading_sd``/``seed_sd``; they still load,
    and the planner keeps reading their ``final_sd``."""
    raw = dict(tiny_bundle.manifest.control or {})
    resp = {k: v for k, v in raw["response"].items() if k not in ("leading_sd", "seed_sd")}
    checks = ControlChecks.model_validate({**raw, "response": resp})
    assert checks.response is not None and checks.response.seed_sd is None
    old_fit = {k: v for k, v in tiny_bundle.manifest.fit["checks"].items()
               if k != "seed_noise_floor"}
    assert ResponseCheckConfig.model_validate(old_fit).seed_noise_floor


# --------------------------------------------------------------------------- planner


def incumbent_band(planner: ControlPlanner, rec_steps: list[int], total: int) -> np.ndarray:
    return planner.incumbent(np.asarray(rec_steps), total)


@pytest.mark.parametrize("band", [0.1, 0.3])
def test_plans_stay_inside_the_trust_region(tiny_bundle: Bundle, sweep: SyntheticSweep,
                                            band: float) -> None:
    cfg = ControlPlannerConfig(trust_region_dex=band, max_change_dex=1.0, require_checks=False,
                               lr_cap=10.0, pessimism=0.0)
    planner = ControlPlanner(tiny_bundle, cfg)
    total = sweep.total_steps
    step = plan_step(total)
    live = history_until(sweep.run("step", 3e-3, 5), step)
    rec = planner.plan(live, step=step, total_steps=total)
    assert rec.status == "planned", rec.reason  # a fallback would pass trivially
    inc = incumbent_band(planner, rec.schedule.step, total)
    dev = np.log10(rec.schedule.lr) - inc
    assert np.all(np.abs(dev) <= band + 1e-6), dev
    assert rec.schedule.step[-1] == total and rec.schedule.step[0] <= step


def test_pessimism_prefers_what_the_members_agree_on(tiny_bundle: Bundle,
                                                     sweep: SyntheticSweep) -> None:
    total = sweep.total_steps
    step = plan_step(total)
    hist = history_until(sweep.run("cosine", 1e-2, 5), step)
    recs = {}
    for k in (0.0, 20.0):
        cfg = ControlPlannerConfig(pessimism=k, require_checks=False, trust_region_dex=0.5,
                                   exploit_margin=100.0)
        recs[k] = ControlPlanner(tiny_bundle, cfg).plan(hist, step=step, total_steps=total)
    s0, s20 = recs[0.0].predicted_spread, recs[20.0].predicted_spread
    assert s0 is not None and s20 is not None
    # The search is seeded alike, so without pessimism in the score the plans would be equal.
    assert recs[0.0].status == recs[20.0].status == "planned"
    assert recs[0.0].schedule != recs[20.0].schedule
    assert s20 <= s0 + 1e-6


def test_a_flagged_model_is_refused_with_the_reason(tiny_bundle: Bundle,
                                                    sweep: SyntheticSweep) -> None:
    checks = ControlChecks.model_validate(tiny_bundle.manifest.control)
    flagged = checks.model_copy(update={"flags": ["exploitable lr response: test"]})
    manifest = tiny_bundle.manifest.model_copy(update={"control": flagged.model_dump()})
    bad = Bundle(manifest, tiny_bundle.models)
    total = sweep.total_steps
    step = plan_step(total)
    hist = history_until(sweep.run("cosine", 1e-2, 5), step)
    rec = ControlPlanner(bad).plan(hist, step=step, total_steps=total)
    assert rec.status == "fallback"
    assert "refused" in rec.reason and "exploitable" in rec.reason
    # the fallback keeps the current plan: with none given, the incumbent (the sweep's best)
    inc = ControlPlanner(bad).incumbent(np.asarray(rec.schedule.step), total)
    assert np.allclose(np.log10(rec.schedule.lr), np.minimum(inc, np.log10(
        bad.manifest.sweep.best_peak_lr)), atol=1e-6)
    no_checks = Bundle(tiny_bundle.manifest.model_copy(update={"control": None}),
                       tiny_bundle.models)
    rec = ControlPlanner(no_checks).plan(hist, step=step, total_steps=total)
    assert rec.status == "fallback" and "no fit checks" in rec.reason


def test_fallbacks_and_mode_errors(tiny_bundle: Bundle, sweep: SyntheticSweep) -> None:
    total = sweep.total_steps
    step = plan_step(total)
    hist = history_until(sweep.run("cosine", 1e-2, 5), step)
    rec = ControlPlanner(tiny_bundle, ControlPlannerConfig(
        require_checks=False, min_gain=10.0)).plan(hist, step=step, total_steps=total)
    assert rec.status == "fallback" and "no schedule beats the current plan" in rec.reason
    # replanning: a large penalty for moving away from the current plan keeps it
    current = ControlPlanner(tiny_bundle, ControlPlannerConfig(require_checks=False)).plan(
        hist, step=step, total_steps=total).schedule
    rec = ControlPlanner(tiny_bundle, ControlPlannerConfig(
        require_checks=False, move_penalty=1e3)).plan(hist, step=step, total_steps=total,
                                                      current=current)
    assert rec.status == "fallback"
    assert np.allclose(rec.schedule.lr, np.interp(rec.schedule.step, current.step, current.lr),
                       rtol=1e-3)
    with pytest.raises(InputError, match="outside the budget"):
        ControlPlanner(tiny_bundle).plan(hist, step=total + 1, total_steps=total)
    empty = LiveHistory(train_loss=(np.array([]), np.array([])), lr=(np.array([]), np.array([])),
                        val_metric=(np.array([]), np.array([])))
    with pytest.raises(InputError, match="no point"):
        ControlPlanner(tiny_bundle).plan(empty, step=10, total_steps=total)
    with pytest.raises(InputError, match="control mode"):
        make_planner(tiny_bundle, "generative")


def test_generative_bundle_refuses_control_mode(sweep: SyntheticSweep) -> None:
    gen = fit_sweep(sweep.runs[:8], tiny_config(max_iterations=3), workers=1,
                    progress=False).bundle
    with pytest.raises(InputError, match="control-mode bundle"):
        ControlPlanner(gen)
    with pytest.raises(InputError, match="control-mode bundle"):
        Advisor(gen, total_steps=400, mode="control")


def test_advisor_in_control_mode_never_raises_and_plans_once(
    tiny_bundle: Bundle, sweep: SyntheticSweep, caplog: pytest.LogCaptureFixture
) -> None:
    total = sweep.total_steps
    adv = Advisor(tiny_bundle, total_steps=total, mode="control",
                  control=ControlPlannerConfig(require_checks=False))
    run = sweep.run("cosine", 1e-2, 9)
    assert run.train_loss and run.val_metric and run.lr
    val = dict(zip(run.val_metric.step, run.val_metric.value, strict=True))
    statuses = []
    with caplog.at_level(logging.WARNING, logger="tracker_sched.advisor"):
        for i, st in enumerate(run.train_loss.step):
            rec = adv.observe(st, train_loss=run.train_loss.value[i], val_metric=val.get(st),
                              lr=adv.lr(st))
            statuses.append(rec.status)
    assert statuses[0] == "warmup" and statuses[-1] == "planned", adv.plan.reason
    assert adv.replans == 1 and adv.failures == 0
    assert not any("advisor error" in r.getMessage() for r in caplog.records)
    assert all(np.isfinite(adv.lr(s)) and adv.lr(s) > 0 for s in range(0, total + 1, 7))


def test_recommend_cli_control_mode(tiny_bundle: Bundle, sweep: SyntheticSweep, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tracker_sched.cli import main
    from tracker_sched.schema import Recommendation

    tiny_bundle.save(tmp_path / "b")
    run = sweep.run("cosine", 1e-2, 3)
    assert run.train_loss and run.val_metric and run.lr
    val = dict(zip(run.val_metric.step, run.val_metric.value, strict=True))
    lines = ["step,train_loss,val_metric,lr"]
    for i, st in enumerate(run.train_loss.step):
        if st <= 200:
            lines.append(f"{st},{run.train_loss.value[i]},{val.get(st, '')},{run.lr.value[i]}")
    (tmp_path / "h.csv").write_text("\n".join(lines) + "\n")
    args = ["recommend", "--bundle", str(tmp_path / "b"), "--history", str(tmp_path / "h.csv"),
            "--total-steps", "400"]
    assert main([*args, "--mode", "control"]) == 0
    rec = Recommendation.model_validate_json(capsys.readouterr().out)
    assert rec.schedule.step[-1] == 400 and rec.lr_now > 0
    assert main(args) == 0  # the bundle's kind chooses the mode
    Recommendation.model_validate_json(capsys.readouterr().out)
    assert main([*args, "--mode", "generative"]) == 1
    err = capsys.readouterr().err
    assert "plan with mode 'control'" in err and len(err.strip().splitlines()) == 1


def test_fit_cli_control_mode_reports_checks_and_confounding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from tracker_sched.cli import main

    fixture = FIXTURE
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"iterations": 5, "members": 1, "grid_points": 40, "window": 10,
                               "batch_size": 16}))
    out = tmp_path / "bundle"
    assert main(["fit", "--mode", "control", "--path", str(fixture), "--out", str(out),
                 "--config", str(cfg), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    # A sweep of parametric schedules: the fit says it is too confounded to plan from.
    assert "sweep design: too confounded to plan from: 48 runs" in text
    assert "suggest-runs" in text and "control planner:" in text
    bundle = Bundle.load(out)
    assert bundle.manifest.kind == "control_ode" and bundle.manifest.members == 1
    assert bundle.manifest.control and not bundle.manifest.control["confounding"]["learnable"]
    assert main(["inspect", str(out)]) == 0
    assert "too confounded" in capsys.readouterr().out
    # Options of the generative fit are refused in control mode, in one line.
    assert main(["fit", "--mode", "control", "--path", str(fixture), "--out",
                 str(tmp_path / "b2"), "--holdout", "0.2"]) == 1
    assert "generative fit" in capsys.readouterr().err
    cfg.write_text(json.dumps({"members": 0}))
    assert main(["fit", "--mode", "control", "--path", str(fixture), "--out",
                 str(tmp_path / "b3"), "--config", str(cfg)]) == 1
    assert "invalid control fit options: members" in capsys.readouterr().err


# --------------------------------------------------------------------------- recovery


def recovery(bundle: Bundle, sw: SyntheticSweep, cfg: ControlPlannerConfig,
             seeds: tuple[int, ...] = (11, 12)) -> tuple[list[float], float, list[str]]:
    """Plan live runs of the sweep's best configuration once, after the warm-up; return the
    TRUE gains over following the incumbent, the true best gain inside the planner's search
    space, and the recommendations' reasons."""
    total = sw.total_steps
    step = plan_step(total)
    steps = np.arange(total + 1)
    best = bundle.manifest.sweep.best_config
    family, peak = str(best["family"]), float(best["peak_lr"])  # type: ignore[arg-type]
    inc = np.log10(random_lr(family, peak, steps / total))
    planner = ControlPlanner(bundle, cfg)
    base = sw.task.final(10 ** inc)
    gains, reasons = [], []
    for seed in seeds:
        live = simulate(sw.task, family, peak, seed, total_steps=total, lr_fn=random_lr)
        rec = planner.plan(history_until(live, step), step=step, total_steps=total)
        planned = np.interp(steps, rec.schedule.step, np.log10(rec.schedule.lr))
        gains.append(sw.task.final(10 ** np.where(steps >= step, planned, inc)) - base)
        reasons.append(f"{rec.status}: {rec.reason}")
    cap = float(np.log10(cfg.lr_cap * bundle.manifest.sweep.best_peak_lr))
    return gains, true_best_in_band(sw, inc, step, cap, cfg) - base, reasons


def true_best_in_band(sw: SyntheticSweep, inc: np.ndarray, step: int, cap: float,
                      cfg: ControlPlannerConfig) -> float:
    """The best true final over the planner's own search space (knots inside the band, the
    cap, no late rise), found by a cross-entropy search on the analytic truth."""
    total = sw.total_steps
    steps = np.arange(total + 1)
    tau = steps / total
    knots_tau = np.linspace(step / total, 1, cfg.knots)
    rng = np.random.default_rng(0)
    band = cfg.trust_region_dex
    late = tau >= cfg.no_rise_after_tau

    def value(k: np.ndarray) -> float:
        c = np.clip(inc + np.interp(tau, knots_tau, k), inc - band, np.minimum(inc + band, cap))
        c[late] = np.minimum.accumulate(c[late])
        return sw.task.final(10 ** np.where(steps >= step, c, inc))

    mu, sd = np.zeros(cfg.knots), np.full(cfg.knots, band)
    best = value(mu)
    for _ in range(25):
        pop = mu + sd * rng.standard_normal((120, cfg.knots))
        f = np.array([value(k) for k in pop])
        elite = pop[np.argsort(-f)[:12]]
        mu, sd = elite.mean(0), elite.std(0) + 1e-3
        best = max(best, float(f.max()))
    return best


@pytest.mark.slow
def test_recovers_the_known_best_schedule() -> None:
    """On analytic dynamics, a sweep with randomised-schedule runs: one plan after the warm-up
    gains, in TRUTH, at least half of what the best schedule inside the trust region gains."""
    sw = make_sweep(families=("constant",), lr_fn=random_lr)
    cfg = ControlFitConfig(grid_points=GRID, window=WINDOW, iterations=800, batch_size=32,
                           members=5, model=SMALL.model_copy(update={"step_points": 4}))
    t0 = time.perf_counter()
    bundle = fit_control(with_random_runs(sw, 16), cfg, workers=2)
    fit_s = time.perf_counter() - t0
    gains, available, reasons = recovery(
        bundle, sw, ControlPlannerConfig(require_checks=False, exploit_margin=100.0))
    print(f"fit {fit_s:.0f} s; true gains {gains}; available {available:.4f}; {reasons}")
    assert available > 0.005  # room to show recovery
    assert min(gains) >= 0.5 * available


def test_both_fits_side_by_side_on_one_shared_pool_make_the_same_bundles(
    sweep: SyntheticSweep,
) -> None:
    """The suite runs the generative and the control fit at once on one pool of workers
    (no idle core at either fit's last round). Members are seeded and single-threaded,
    so each bundle equals the one its fit makes on a pool of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from tracker_sched.util.workers import spawn_pool

    gen_cfg = tiny_config(ensemble=2, seed=0, cross_fit=False)
    ctl_cfg = ControlFitConfig(grid_points=GRID, window=WINDOW, iterations=15, batch_size=16,
                               members=3, model=SMALL)
    own_gen = fit_sweep(sweep.runs, gen_cfg, workers=2, progress=False).bundle
    own_ctl = fit_control(sweep.runs, ctl_cfg, workers=2)
    with spawn_pool(2) as pool, ThreadPoolExecutor(2) as ex:
        g = ex.submit(fit_sweep, sweep.runs, gen_cfg, workers=7, progress=False, pool=pool)
        c = ex.submit(fit_control, sweep.runs, ctl_cfg, workers=7, pool=pool)
        shared_gen, shared_ctl = g.result().bundle, c.result()
    pairs = [(own_gen, shared_gen), (own_ctl, shared_ctl)]
    for own, shared in pairs:
        assert shared.manifest.kind == own.manifest.kind
        assert len(shared.models) == len(own.models) >= 2
        for a, b in zip(own.models, shared.models, strict=True):
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the generative fit's report still lists every member's own iterations and seed
    assert [m["seed"] for m in shared_gen.manifest.report.members] == [0, 1]

"""Stop decisions: calibrated odds at fit time, the rule, the Stopper in a live run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import history_until
from tracker_sched.advising.stopping import Stopper, forecast_final
from tracker_sched.bundle.folder import Bundle
from tracker_sched.fit.stop_calibration import calibrate, format_reliability
from tracker_sched.model.stop_odds import (
    StopBucket,
    StopCalibration,
    StopRule,
    judge,
    normal_cdf,
    student_t_cdf,
)


def _cal(**bucket: float) -> StopCalibration:
    b = {"tau": 0.5, "bias": 0.0, "floor": 0.01, "scale": 0.0, "runs": 10, **bucket}
    return StopCalibration(scheme="holdout", direction="max", transform="identity",
                           buckets=[StopBucket(**b)], runs=10)  # type: ignore[arg-type]


def test_p_beat_is_the_normal_probability_in_the_metric_direction() -> None:
    cal = _cal(floor=0.02, bias=0.01)
    # mean 0.80 + bias 0.01 against 0.83: z = -1 -> Phi(-1)
    assert cal.p_beat(0.5, 0.80, 0.0, 0.83) == pytest.approx(normal_cdf(-1.0))
    lower = cal.model_copy(update={"direction": "min"})
    assert lower.p_beat(0.5, 0.80, 0.0, 0.83) == pytest.approx(normal_cdf(1.0))
    scaled = _cal(floor=0.03, scale=2.0)
    assert scaled.p_beat(0.5, 0.80, 0.02, 0.85) == pytest.approx(normal_cdf(-0.05 / 0.05))
    logged = cal.model_copy(update={"transform": "log10"})
    assert logged.to_transformed(100.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="positive"):
        logged.to_transformed(-1.0)


@pytest.mark.parametrize(("x", "df", "want"), [
    (1.0, 1, 0.75), (2.0, 2, 0.9082483), (2.0, 3, 0.9303370), (2.0, 5, 0.9490303),
    (-2.0, 4, 0.0580583), (2.0, 30, 0.9726875), (2.0, None, 0.9772499), (0.0, 7, 0.5)])
def test_student_t_cdf_matches_tables(x: float, df: int | None, want: float) -> None:
    assert student_t_cdf(x, df) == pytest.approx(want, abs=1e-6)


def test_heavier_tails_give_a_far_forecast_better_odds() -> None:
    normal = _cal(floor=0.01)
    heavy = normal.model_copy(update={"df": 3})
    assert heavy.p_beat(0.5, 0.80, 0.0, 0.84) > 10 * normal.p_beat(0.5, 0.80, 0.0, 0.84)


def test_rule_waits_for_window_grace_and_patience() -> None:
    rule = StopRule(threshold=0.1, grace=0.3, patience=2)
    d = judge(rule, p_beat=0.01, tau=0.5, window_full=False)
    assert not d.stop and "window" in d.reason
    d = judge(rule, p_beat=0.01, tau=0.2, window_full=True)
    assert not d.stop and "grace" in d.reason and d.below == 1
    d = judge(rule, p_beat=0.01, tau=0.5, window_full=True)
    assert not d.stop and d.below == 1
    d = judge(rule, p_beat=0.01, tau=0.5, window_full=True, below_before=1)
    assert d.stop and d.below == 2 and d.p_beat == 0.01
    d = judge(rule, p_beat=0.5, tau=0.5, window_full=True, below_before=5)
    assert not d.stop and d.below == 0


def test_fit_stores_a_calibration_and_a_reliability_table(stop_fit, tmp_path: Path) -> None:
    fit, _ = stop_fit
    cal = fit.bundle.manifest.stopping
    assert cal is not None and cal.scheme == "cross-fit" and cal.direction == "max"
    assert cal.runs == 30 and len(cal.buckets) >= 8
    assert cal.df in (None, 30, 10, 5, 3, 2)  # the tail the likelihood chose
    assert all(b.floor > 0 and math.isfinite(b.bias) for b in cal.buckets)
    # The table covers every pair of runs at every bucket, and its rows are probabilities.
    assert sum(r.pairs for r in cal.reliability) > 30 * 29
    assert all(0 <= r.observed <= 1 and r.lo <= r.predicted <= r.hi for r in cal.reliability)
    assert fit.report.stop_reliability == cal.reliability
    # Odds that say something: better than a coin on the pairs (synthetic runs differ a lot).
    assert cal.log_loss is not None and cal.log_loss < 0.6
    assert "observed" in format_reliability(cal)
    assert calibrate(fit) == cal  # the same numbers from the stored fit options
    # Stored with the bundle; a manifest without the field (an old bundle) still loads.
    out = fit.bundle.save(tmp_path / "b")
    assert Bundle.load(out).manifest.stopping == cal
    raw = json.loads((out / "bundle.json").read_text())
    raw.pop("stopping")
    (out / "bundle.json").write_text(json.dumps(raw))
    raw_weights = (out / "weights.pt").read_bytes()
    assert raw_weights  # the weights are untouched; only the manifest lost the field
    assert Bundle.load(out).manifest.stopping is None


def test_stopper_stops_a_losing_run_and_keeps_the_best(stop_fit) -> None:
    fit, sweep = stop_fit
    bundle = fit.bundle
    best = sweep.configs[0]
    finals = {c.name: c.final_val for c in sweep.configs}
    worst = min(sweep.configs, key=lambda c: c.final_val)
    rule = StopRule(threshold=0.05, patience=2)
    total = sweep.total_steps
    incumbent = best.final_val  # the best run has finished: every other run chases it

    def decisions(family: str, peak: float, seed: int) -> list:
        run = sweep.run(family, peak, seed)
        stopper = Stopper(bundle, total, rule)
        return [stopper.decide(history_until(run, s), s, incumbent)
                for s in range(0, total + 1, 8)]

    losing = decisions(worst.family, worst.peak_lr, seed=7)
    assert any(d.stop for d in losing), [d.reason for d in losing]
    first = next(i for i, d in enumerate(losing) if d.stop)
    assert losing[first].p_beat is not None and losing[first].p_beat < 0.05
    assert "window" in losing[0].reason  # never before the window is full
    # Against a lower bar (the runner-up's final), the best configuration is not stopped.
    runner_up = sorted(finals.values())[-2] - 0.01
    run = sweep.run(best.family, best.peak_lr, 7)
    stopper = Stopper(bundle, total, rule)
    kept = [stopper.decide(history_until(run, s), s, runner_up) for s in range(0, total + 1, 8)]
    assert not any(d.stop for d in kept), [(d.tau, d.p_beat) for d in kept]
    assert kept[-1].predicted_final is None and "budget" in kept[-1].reason  # it finished
    assert kept[-2].predicted_final == pytest.approx(best.final_val, abs=0.05)


def test_stopper_never_raises_and_counts_a_repeated_step_once(stop_fit) -> None:
    fit, sweep = stop_fit
    stopper = Stopper(fit.bundle, sweep.total_steps, StopRule(threshold=0.5, patience=2))
    worst = min(sweep.configs, key=lambda c: c.final_val)
    h = history_until(sweep.run(worst.family, worst.peak_lr, 3), 150)
    first = stopper.decide(h, 150, 0.99)
    again = stopper.decide(h, 150, 0.99)
    assert first.below == again.below == 1 and not again.stop
    assert stopper.decide(h, 151, 0.99).stop
    # At (or past) the end of its budget a run has finished: a stop there would save nothing
    # and lose a finished run (Ray Tune asks again on a trial's last result).
    full = history_until(sweep.run(worst.family, worst.peak_lr, 3), sweep.total_steps)
    for step in (sweep.total_steps, 10**12):
        d = Stopper(fit.bundle, sweep.total_steps, StopRule(threshold=0.5, patience=1)).decide(
            full, step, 0.99)
        assert not d.stop and "budget" in d.reason
    # Garbage in: a decision not to stop, with the reason.
    for step, inc in ((150, float("nan")), ("x", 0.9), (-3, 0.9)):
        d = stopper.decide(h, step, inc)  # type: ignore[arg-type]
        assert not d.stop and "failed" in d.reason
    assert not stopper.decide(h, 150, None).stop
    # A bundle without a calibration never stops, and says why.
    old = Bundle(fit.bundle.manifest.model_copy(update={"stopping": None}), fit.bundle.models)
    d = Stopper(old, sweep.total_steps).decide(h, 150, 0.99)
    assert not d.stop and "refit" in d.reason
    fc = forecast_final(fit.bundle, h, 150, sweep.total_steps)
    assert 0.7 < fc.tau < 0.8 and fc.spread >= 0 and np.isfinite(fc.mean)

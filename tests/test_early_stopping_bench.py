"""The early-stopping benchmark's replayed rules on small hand-made sweeps with known answers
(the full benchmark runs as ``python -m benchmarks.early_stopping``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from benchmarks.early_stopping import arms
from benchmarks.early_stopping.sweeps import Replay
from tracker_sched.model.stop_odds import StopBucket, StopCalibration, StopRule, normal_cdf


def _replay(finals: list[float], means: list[list[float]],
            direction: Literal["max", "min"] = "max") -> Replay:
    cal = StopCalibration(scheme="holdout", direction=direction, transform="identity",
                          buckets=[StopBucket(tau=0.5, bias=0.0, floor=0.01, scale=0.0,
                                              runs=4)], runs=4)
    k = len(means[0])
    steps = np.arange(1, 11) * 10
    return Replay(
        name="toy", direction=direction, total_steps=100,
        val_steps=[steps for _ in finals],
        val_values=[np.linspace(f - 0.3, f, 10) for f in finals],
        final=np.asarray(finals), decide_steps=np.arange(1, k + 1) * 20,
        tau=np.linspace(0.2, 0.8, k), mean=np.asarray(means), spread=np.zeros((len(finals), k)),
        stopping=cal)


def test_tracker_sched_arm_applies_the_rule_in_order() -> None:
    # run 0 finishes first (no incumbent); run 1 forecasts 0.70 < 0.80: p_beat ~ 0 -> stopped
    # after `patience` decisions; run 2 forecasts 0.9: finishes and becomes the incumbent.
    rep = _replay([0.80, 0.70, 0.90], [[0.8] * 3, [0.70] * 3, [0.9] * 3])
    out = arms.tracker_sched_arm(rep, np.array([0, 1, 2]), StopRule(threshold=0.05, patience=2))
    assert out.finished.tolist() == [True, False, True]
    assert out.steps.tolist() == [100, 40, 100]  # the second decision, at step 40
    compute, regret = arms.score(rep, out)
    assert compute == pytest.approx(240 / 300) and regret == 0.0
    # Best run first: the others are stopped; a margin of 0.15 keeps run 0 (0.80 vs 0.90-0.15).
    out = arms.tracker_sched_arm(rep, np.array([2, 0, 1]), StopRule(threshold=0.05, patience=1))
    assert out.finished.tolist() == [False, False, True]
    kept = arms.tracker_sched_arm(rep, np.array([2, 0, 1]),
                                  StopRule(threshold=0.05, patience=1, margin=0.15))
    assert kept.finished.tolist() == [True, False, True]
    assert normal_cdf((0.8 - 0.75) / 0.01) > 0.05  # the odds the margin gives run 0


def test_wandb_hyperband_rule_and_regret() -> None:
    # Values rise to each final; at band 1 (the second logged value) a run stops when it is
    # worse than the value ranked int(n / eta) among the n runs that reached the band.
    rep = _replay([0.9, 0.5, 0.95], [[0.0]] * 3)
    out = arms.wandb_hyperband_arm(rep, np.array([0, 1, 2]), min_iter=1, eta=3)
    assert out.finished.tolist() == [True, False, True]
    assert out.steps[1] == 20  # stopped at its second logged value
    # The best run stopped: the regret is the gap to the best final, in points.
    lost = arms.Outcome(np.array([100, 100, 20]), np.array([True, True, False]))
    assert arms.score(rep, lost)[1] == pytest.approx(5.0)


def test_optuna_arm_is_run_by_optuna() -> None:
    rep = _replay([0.9, 0.2, 0.3, 0.25, 0.35, 0.3, 0.2], [[0.0]] * 7)
    out = arms.optuna_arm(rep, np.arange(7), lambda: __import__("optuna").pruners.MedianPruner(
        n_startup_trials=1))
    assert out.finished[0] and not out.finished[1:].all()
    assert (out.steps[~out.finished] < 100).all()


def test_the_default_rule_is_the_benchmarks_choice() -> None:
    """One definition of the defaults: StopRule's (which every stop uses when given no rule)
    are the setting the committed benchmark chose on its design block."""
    report = Path(__file__).resolve().parents[1] / "benchmarks/results/early_stopping.json"
    chosen = json.loads(report.read_text())["chosen"]
    rule = StopRule()
    assert (rule.threshold, rule.patience) == (chosen["threshold"], chosen["patience"])
    assert rule.margin == 0.0 == chosen["margin_goal_units"] and rule.grace == 0.0


def test_suite_sweeps_are_the_suites_sweep_and_other_seeds() -> None:
    """Fit on exactly the suite's sweep; prune the same grid on other seeds (design) and the
    suite's dense grid on one more seed (confirmation)."""
    from benchmarks.early_stopping.suite_sweeps import sweep_jobs
    from benchmarks.suite.protocol import SWEEP_SEEDS, dense_peaks
    from benchmarks.suite.tasks import get

    task = get("digits-sgd")
    jobs = sweep_jobs(task.name)
    cells = {(j.family, j.peak, j.seed) for j in jobs["fit"]}
    assert cells == {(f, p, s) for f in task.families for p in task.peaks for s in SWEEP_SEEDS}
    assert len(jobs["fit"]) == len(cells) == 32
    seeds = {b: {j.seed for j in js} for b, js in jobs.items()}
    assert not seeds["fit"] & seeds["design"] and not seeds["confirm"] & (
        seeds["fit"] | seeds["design"])
    assert {(j.family, j.peak) for j in jobs["design"]} == {c[:2] for c in cells}
    assert sorted({j.peak for j in jobs["confirm"]}) == dense_peaks(task.peaks)
    assert {j.family for j in jobs["confirm"]} == set(task.families)
    assert all(j.keep_record and j.kind == "run" for js in jobs.values() for j in js)


def test_suite_task_trains_once_into_records_a_replay_takes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real Friedman runs (the suite's --smoke budget, one per sweep) through the suite's jobs
    cache, read back as records the replay takes whole; a second call trains nothing."""
    from benchmarks.early_stopping import suite_sweeps
    from benchmarks.suite import jobs as suite_jobs
    from tracker_sched.data.validation import validate_sweep

    def tiny(name: str, smoke: bool = False) -> dict[str, list[suite_jobs.Job]]:
        return {b: [suite_jobs.Job(name, "run", "cosine", 1e-2, s, smoke, keep_record=True)]
                for b, s in (("fit", 0), ("design", 10), ("confirm", 12))}

    monkeypatch.setattr(suite_sweeps, "sweep_jobs", tiny)
    task = suite_sweeps.suite_task("friedman", tmp_path, smoke=True)
    cache = tmp_path / "friedman" / "jobs_smoke.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 3
    monkeypatch.setattr(suite_jobs, "execute", lambda job: pytest.fail(f"retrained {job}"))
    again = suite_sweeps.suite_task("friedman", tmp_path, smoke=True)
    assert cache.read_text().splitlines() == lines
    records = [*again.fit(), *again.design(), *again.confirm()]
    assert [r.config["seed"] for r in records] == [0, 10, 12]
    checked = validate_sweep(records)
    assert not checked.issues and len(checked.runs) == 3
    for r in checked.runs:  # what build_replay needs: one budget, the metric to its end
        assert r.total_steps == 40 and r.series["val_metric"].step[-1] == 40
    assert {r.metric_keys["val_metric"] for r in records} == {"val_loss"}
    assert [r.val_metric.value for r in task.design()] == [  # type: ignore[union-attr]
        r.val_metric.value for r in again.design()]  # type: ignore[union-attr]

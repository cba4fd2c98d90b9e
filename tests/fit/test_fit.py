"""Fitting a sweep end to end on the real 48-run MNIST-1D fixture (tiny, real training)."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from tests.tiny import FIXTURE, tiny_config
from tracker_sched.bundle.manifest import METHODS
from tracker_sched.data.grid import CHANNELS, SweepTensors
from tracker_sched.errors import FitError, InputError
from tracker_sched.fit.generative import (
    FitResult,
    fit_sweep,
    holdout_loss,
    report_windows,
    train_member,
)
from tracker_sched.fit.prepare import prepare
from tracker_sched.fit.report import spearman
from tracker_sched.model.forecast import Forecaster
from tracker_sched.model.latent import LatentODE
from tracker_sched.schema import MetricMap, RunRecord, Series
from tracker_sched.sources.files import read_sweep


@pytest.fixture(scope="module")
def runs() -> list[RunRecord]:
    result = read_sweep(FIXTURE)
    assert result.issues == []
    assert len(result.runs) == 48
    return result.runs


@pytest.fixture(scope="module")
def fitted(runs: list[RunRecord]) -> FitResult:
    return fit_sweep(runs, tiny_config(), workers=1, progress=False)


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- report


def test_fit_returns_a_bundle_and_a_complete_report(
    fitted: FitResult, runs: list[RunRecord]
) -> None:
    cfg = tiny_config()
    report = fitted.report
    assert fitted.bundle.manifest.report == report
    assert len(fitted.bundle.models) == fitted.bundle.manifest.members == 1
    assert report.runs_total == 48
    assert report.runs_used == 48
    assert report.runs_fit + report.runs_holdout == report.runs_used
    assert report.runs_holdout == 10  # round(0.2 * 48)
    assert report.issues == []
    assert report.direction == "max"
    assert report.val_key == "val_acc"

    ids = [r.run_id for r in runs]
    assert len(report.holdout_ids) == report.runs_holdout
    assert len(set(report.holdout_ids)) == report.runs_holdout
    assert set(report.holdout_ids) <= set(ids)
    fit_ids = {fitted.prepared.grid.run_ids[i] for i in fitted.prepared.train_idx}
    assert fit_ids.isdisjoint(report.holdout_ids)
    assert fit_ids | set(report.holdout_ids) == set(ids)

    assert report.holdout is not None
    assert report.holdout.window == cfg.window
    for tau in cfg.report_taus:
        for channel in CHANNELS:
            for method in METHODS:
                if method == "curve" and channel == "log_lr":
                    continue  # the learning-curve baseline does not forecast the lr
                row = report.holdout.row(tau, channel, method)
                assert math.isfinite(row.rmse_pooled) and row.rmse_pooled >= 0
                assert math.isfinite(row.rmse_median_run) and row.rmse_median_run >= 0
                assert row.runs == report.runs_holdout
        for method in METHODS:
            rank = report.holdout.rank(tau, method)
            assert rank.runs == report.runs_holdout
            assert rank.spearman is None or -1.0 <= rank.spearman <= 1.0
    n_rows = len(cfg.report_taus) * (len(CHANNELS) * len(METHODS) - 1)
    assert len(report.holdout.forecast) == n_rows
    assert len(report.holdout.ranking) == len(cfg.report_taus) * len(METHODS)
    with pytest.raises(KeyError):
        report.holdout.row(0.9, "val_metric", "model")


def test_training_reduces_the_loss(fitted: FitResult) -> None:
    cfg = tiny_config()
    prep = fitted.prepared
    val = fitted.report.holdout.row(0.5, "val_metric", "model")  # type: ignore[union-attr]
    assert math.isfinite(val.rmse_pooled)

    train, holdout = prep.tensors(prep.train_idx), prep.tensors(prep.holdout_idx)
    weights = torch.tensor(cfg.channel_weights)
    windows = report_windows(holdout, cfg)
    untrained = LatentODE(cfg.model, generator=torch.Generator().manual_seed(cfg.seed))
    before = holdout_loss(untrained, holdout, windows, weights)
    model, hist = train_member(train, holdout, cfg, cfg.seed)
    assert hist.iterations == cfg.max_iterations
    assert len(hist.train_loss) == cfg.max_iterations
    assert min(hist.train_loss) < hist.train_loss[0]
    assert hist.best_holdout_loss is not None
    assert hist.best_holdout_loss < before
    # the kept checkpoint is the best one, and the report's member says so
    assert holdout_loss(model, holdout, windows, weights) == pytest.approx(
        hist.best_holdout_loss, rel=1e-6)
    assert fitted.report.members[0]["best_holdout_loss"] == pytest.approx(
        hist.best_holdout_loss, rel=1e-6)


# --------------------------------------------------------------------------- determinism


def _report_without_timing(result: FitResult) -> dict[str, object]:
    d = json.loads(result.report.model_dump_json())
    d.pop("wall_s")
    for m in d["members"]:
        m.pop("wall_s")
    return d


def test_same_seed_is_deterministic_and_a_new_seed_is_not(
    fitted: FitResult, runs: list[RunRecord]
) -> None:
    again = fit_sweep(runs, tiny_config(), workers=1, progress=False)
    assert _same_state(fitted.bundle.models[0].state_dict(), again.bundle.models[0].state_dict())
    assert _report_without_timing(again) == _report_without_timing(fitted)
    assert again.bundle.manifest.sweep == fitted.bundle.manifest.sweep
    assert again.bundle.manifest.normalisation == fitted.bundle.manifest.normalisation

    other = fit_sweep(runs, tiny_config(seed=1), workers=1, progress=False)
    a, b = fitted.bundle.models[0].state_dict(), other.bundle.models[0].state_dict()
    assert not any(torch.equal(a[k], b[k]) for k in a if a[k].dim() >= 2)
    assert other.report.members[0]["seed"] == 1


# --------------------------------------------------------------------------- bad sweeps


def _with_series(run: RunRecord, **changes: object) -> RunRecord:
    return run.model_copy(update=changes)


def test_bad_runs_are_reported_not_lost(runs: list[RunRecord]) -> None:
    base = runs[5]
    tl = base.train_loss
    assert tl is not None
    nan_values = list(tl.value)
    nan_values[40] = float("nan")
    nan_step = tl.step[40]
    short = {
        role: Series(step=s.step[:2], value=s.value[:2])
        for role in ("train_loss", "lr", "val_metric")
        if (s := base.series(role)) is not None
    }
    bad = [
        _with_series(base, run_id="no-lr", lr=None),
        _with_series(base, run_id="nan-loss", train_loss=Series(step=tl.step, value=nan_values)),
        runs[0].model_copy(update={"config": {"duplicate": True}}),  # same run_id as runs[0]
        _with_series(base, run_id="two-points", **short),
    ]
    records = [*runs, *bad]
    result = fit_sweep(records, tiny_config(), workers=1, progress=False)
    report = result.report
    assert report.runs_total == 52
    assert report.runs_used == 49  # the fixture plus the truncated run
    assert report.runs_fit + report.runs_holdout == 49

    by_id: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for issue in report.issues:
        by_id[issue.run_id].append((issue.action, issue.reason))
    assert by_id["no-lr"] == [("excluded", by_id["no-lr"][0][1])]
    assert "learning rate" in by_id["no-lr"][0][1]
    assert [a for a, _ in by_id["nan-loss"]] == ["truncated"]
    assert "diverged" in by_id["nan-loss"][0][1]
    assert f"step {nan_step}" in by_id["nan-loss"][0][1]
    assert [a for a, _ in by_id[runs[0].run_id]] == ["excluded"]
    assert "duplicate" in by_id[runs[0].run_id][0][1]
    assert [a for a, _ in by_id["two-points"]] == ["excluded"]
    assert "too few points" in by_id["two-points"][0][1]
    assert set(by_id) == {"no-lr", "nan-loss", runs[0].run_id, "two-points"}

    fitted_ids = set(result.prepared.grid.run_ids)
    issue_ids = {i.run_id for i in report.issues}
    for r in records:
        assert r.run_id in fitted_ids or r.run_id in issue_ids, r.run_id
    assert "nan-loss" in fitted_ids
    assert {"no-lr", "two-points"}.isdisjoint(fitted_ids)
    # the duplicate kept is the first one, not the injected copy
    kept = result.prepared.runs[result.prepared.grid.run_ids.index(runs[0].run_id)]
    assert kept.record == runs[0]
    # the truncated run keeps only the points before the NaN
    trunc = result.prepared.runs[result.prepared.grid.run_ids.index("nan-loss")]
    assert trunc.diverged_at == nan_step
    assert all(int(s) < nan_step for s in trunc.series["train_loss"].step)


def test_too_few_usable_runs_is_a_fit_error(runs: list[RunRecord]) -> None:
    records = [*runs[:3], runs[3].model_copy(update={"run_id": "no-lr", "lr": None}),
               runs[4].model_copy(update={"run_id": "no-val", "val_metric": None})]
    with pytest.raises(FitError) as info:
        fit_sweep(records, tiny_config(), workers=1, progress=False)
    msg = str(info.value)
    assert "3 usable runs of 5" in msg
    assert "need >= 4" in msg
    assert "no-lr: no learning rate logged" in msg
    assert "no-val: no validation metric logged" in msg


def test_runs_logging_different_validation_metrics(runs: list[RunRecord]) -> None:
    records = list(runs)
    records[7] = records[7].model_copy(update={"metric_keys": {
        **records[7].metric_keys, "val_metric": "val_loss"}})
    with pytest.raises(InputError) as info:
        fit_sweep(records, tiny_config(), workers=1, progress=False)
    msg = str(info.value)
    assert "val_acc" in msg and "val_loss" in msg
    assert "--val-key" in msg


def test_validation_metric_of_unknown_direction(runs: list[RunRecord]) -> None:
    records = [r.model_copy(update={"metric_keys": {**r.metric_keys, "val_metric": "foo"}})
               for r in runs]
    with pytest.raises(InputError) as info:
        fit_sweep(records, tiny_config(), workers=1, progress=False)
    assert "'foo'" in str(info.value)
    assert "--val-direction" in str(info.value)

    result = fit_sweep(records, tiny_config(), MetricMap(val_direction="max"),
                       workers=1, progress=False)
    assert result.report.val_key == "foo"
    assert result.report.direction == "max"
    assert result.bundle.manifest.metrics.val_metric == "foo"
    assert result.bundle.manifest.metrics.direction == "max"


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="report_taus must lie in"):
        tiny_config(report_taus=(0.5, 1.0))
    with pytest.raises(ValueError, match="window_range"):
        tiny_config(window_range=(2.0, 1.0))


# --------------------------------------------------------------------------- ensemble


def test_ensemble_with_two_worker_processes(fitted: FitResult, runs: list[RunRecord]) -> None:
    cfg = tiny_config(ensemble=2, seed=0, cross_fit=False)
    result = fit_sweep(runs, cfg, workers=2, progress=False)
    assert result.bundle.manifest.members == 2
    assert len(result.bundle.models) == 2
    assert [m["seed"] for m in result.report.members] == [0, 1]
    assert all(m["iterations"] == cfg.max_iterations for m in result.report.members)
    # member 0 trained in a worker process equals the single-member fit with seed 0
    a = result.bundle.models[0].state_dict()
    b = fitted.bundle.models[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    c = result.bundle.models[1].state_dict()
    assert not any(torch.equal(a[k], c[k]) for k in a if a[k].dim() >= 2)


def test_cross_fit_folds_cover_the_sweep_and_report_out_of_fold(runs: list[RunRecord]) -> None:
    cfg = tiny_config(ensemble=3, seed=0)
    result = fit_sweep(runs, cfg, workers=1, progress=False)
    prep, report = result.prepared, result.report
    assert report.scheme == "cross-fit" and report.folds == 3
    held = np.concatenate([ho for _, ho in prep.folds])
    assert sorted(held.tolist()) == list(range(len(prep.runs)))  # disjoint and covering
    for tr, ho in prep.folds:
        assert np.intersect1d(tr, ho).size == 0
        assert tr.size + ho.size == len(prep.runs)
    assert report.runs_holdout == report.runs_used == 48
    assert sorted(report.holdout_ids) == sorted(r.run_id for r in runs)
    assert report.holdout is not None
    assert all(row.runs == 48 for row in report.holdout.forecast)

    # The report's model forecasts are out of fold: recompute RMSE with each run's own
    # held-out member and compare with the pooled figure of the report.
    data = prep.tensors(np.arange(len(prep.runs)))
    g = data.grid_points
    end = round(0.5 * (g - 1))
    std = prep.norm.std[2]
    sq, count = 0.0, 0
    for model, (_, ho) in zip(result.bundle.models, prep.folds, strict=True):
        idx = torch.as_tensor(ho)
        sub = SweepTensors(values=data.values[idx], mask=data.mask[idx])
        n = len(ho)
        pred = Forecaster([model]).forecast(
            sub, torch.arange(n), torch.full((n,), end), torch.full((n,), cfg.window)
        )
        y, m = sub.values[:, end:, 2], sub.mask[:, end:, 2]
        sq += float((((pred[..., 2] - y) * std) ** 2 * m).sum())
        count += int(m.sum())
    assert report.holdout.row(0.5, "val_metric", "model").rmse_pooled == pytest.approx(
        (sq / count) ** 0.5, rel=1e-4
    )


def test_ensemble_without_cross_fit_shares_one_split(runs: list[RunRecord]) -> None:
    prep = prepare(runs, tiny_config(ensemble=3, cross_fit=False))
    assert not prep.cross_fit
    assert all(np.array_equal(ho, prep.holdout_idx) for _, ho in prep.folds)


# --------------------------------------------------------------------------- sweep summary


def test_sweep_summary_against_an_independent_computation(
    fitted: FitResult, runs: list[RunRecord]
) -> None:
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        key = json.dumps({k: v for k, v in r.config.items() if k != "seed"}, sort_keys=True)
        groups[key].append(r)

    def final(r: RunRecord) -> float:
        assert r.val_metric is not None
        return r.val_metric.value[-1]

    means = {k: float(np.mean([final(r) for r in g])) for k, g in groups.items()}
    best_key = max(means, key=means.__getitem__)
    assert sorted(means.values())[-2] < means[best_key]  # no tie for the best
    best_group = groups[best_key]
    best_run = max(best_group, key=final)

    s = fitted.bundle.manifest.sweep
    assert s.runs_used == 48
    assert s.best_run_id == best_run.run_id
    assert s.best_run_id in {r.run_id for r in best_group}
    assert s.best_config == best_run.config
    assert s.best_config_runs == len(best_group)
    assert s.best_config_mean_final_val == pytest.approx(means[best_key], rel=1e-12)

    lrs = [v for r in runs if r.lr is not None for v in r.lr.value]
    assert s.lr_min == min(lrs)
    assert s.lr_max == max(lrs)
    assert best_run.lr is not None
    assert s.best_peak_lr == max(best_run.lr.value)

    cfg = tiny_config()
    assert len(s.warmup_lr) == cfg.grid_points
    assert len(s.warmup_tau) == cfg.grid_points
    assert s.warmup_tau[0] == 0.0 and s.warmup_tau[-1] == 1.0
    assert all(v > 0 for v in s.warmup_lr)
    assert max(s.warmup_lr) <= s.best_peak_lr * (1 + 1e-9)
    assert s.top_runs[0].run_id == max(runs, key=final).run_id
    finals_top = [t.final_val for t in s.top_runs]
    assert finals_top == sorted(finals_top, reverse=True)  # type: ignore[type-var]


# --------------------------------------------------------------------------- spearman


def test_spearman_known_answers() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a**3 + 7) == pytest.approx(1.0)
    assert spearman(a, -np.exp(a)) == pytest.approx(-1.0)
    # ties: ranks of x are (0, 1.5, 1.5, 3); Pearson of the ranks is 4.5 / sqrt(4.5 * 5)
    x = np.array([1.0, 2.0, 2.0, 3.0])
    y = np.array([10.0, 20.0, 30.0, 40.0])
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0), rel=1e-12)
    # a permutation: 1 - 6 sum(d^2) / (n (n^2 - 1)) with d = (0, 2, -1, -1, 0) -> 0.7
    assert spearman(a, np.array([1.0, 4.0, 2.0, 3.0, 5.0])) == pytest.approx(0.7, rel=1e-12)
    assert spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0])) is None
    assert spearman(np.array([]), np.array([])) is None
    assert spearman(np.array([3.0, 3.0, 3.0]), np.array([1.0, 2.0, 3.0])) is None
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])) is None


def test_prepare_split_is_seeded(runs: list[RunRecord]) -> None:
    p0, p0b, p1 = (prepare(runs, tiny_config(seed=s)) for s in (0, 0, 1))
    assert np.array_equal(p0.holdout_idx, p0b.holdout_idx)
    assert not np.array_equal(p0.holdout_idx, p1.holdout_idx)
    assert p0.holdout_idx.size == 10 and p0.train_idx.size == 38


def test_source_issues_are_listed_in_the_report_and_bundle(runs: list[RunRecord]) -> None:
    from tracker_sched.schema import RunIssue

    unreadable = RunIssue(run_id="sweep.jsonl:7", action="excluded", reason="not valid JSON")
    result = fit_sweep(runs, tiny_config(), workers=1, progress=False,
                       source_issues=[unreadable])
    assert result.report.issues[0] == unreadable
    assert result.bundle.manifest.report.issues[0] == unreadable

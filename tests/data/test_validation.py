"""validate_sweep: one test per bad input, plus properties over arbitrary sweeps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker_sched.data.validation import (
    MIN_POINTS,
    MIN_VAL_POINTS,
    CleanRun,
    ValidatedSweep,
    validate_sweep,
)
from tracker_sched.schema import ROLES, RunIssue, RunRecord, Series

STEPS = list(range(10, 501, 10))  # 50 points, 10..500


def good_run(run_id: str = "good", total_steps: int | None = 500, **overrides: Any) -> RunRecord:
    """A clean run: 50 points per role at steps 10..500, total_steps 500."""
    n = len(STEPS)
    fields: dict[str, Any] = {
        "run_id": run_id,
        "total_steps": total_steps,
        "train_loss": Series(step=STEPS, value=[2.0 * 0.97**i + 0.1 for i in range(n)]),
        "lr": Series(step=STEPS, value=[0.1 * (1 - i / n) + 1e-4 for i in range(n)]),
        "val_metric": Series(step=STEPS, value=[0.5 + 0.4 * i / n for i in range(n)]),
    }
    fields.update(overrides)
    return RunRecord(**fields)


def only_issue(sweep: ValidatedSweep) -> RunIssue:
    assert len(sweep.issues) == 1, sweep.issues
    return sweep.issues[0]


def assert_excluded(sweep: ValidatedSweep, run_id: str, phrase: str) -> RunIssue:
    assert run_id not in [r.run_id for r in sweep.runs]
    matches = [i for i in sweep.issues if i.run_id == run_id and i.action == "excluded"]
    assert len(matches) == 1, sweep.issues
    assert phrase in matches[0].reason, matches[0].reason
    return matches[0]


# --- the good run -----------------------------------------------------------------------------


def test_good_run_kept_unchanged() -> None:
    rec = good_run()
    sweep = validate_sweep([rec])
    assert sweep.issues == []
    assert sweep.excluded_ids() == []
    (run,) = sweep.runs
    assert run.record is rec
    assert run.run_id == "good"
    assert run.total_steps == 500
    assert not run.diverged and run.diverged_at is None
    for role in ROLES:
        s = rec.series(role)
        assert s is not None
        np.testing.assert_array_equal(run.series[role].step, s.step)
        np.testing.assert_array_equal(run.series[role].value, s.value)
        assert run.series[role].step.dtype == np.int64
        assert run.series[role].value.dtype == np.float64
    assert run.final_val() == pytest.approx(0.5 + 0.4 * 49 / 50)


def test_empty_sweep() -> None:
    sweep = validate_sweep([])
    assert sweep.runs == [] and sweep.issues == []


# --- exclusions -------------------------------------------------------------------------------


def test_duplicate_run_ids_keep_first() -> None:
    first = good_run("dup", config={"which": "first"})
    second = good_run("dup", config={"which": "second"})
    other = good_run("other")
    sweep = validate_sweep([first, other, second])
    assert [r.run_id for r in sweep.runs] == ["dup", "other"]
    assert sweep.runs[0].record is first
    issue = only_issue(sweep)
    assert issue.run_id == "dup"
    assert issue.action == "excluded"
    assert "duplicate run_id" in issue.reason
    assert "first" in issue.reason
    assert sweep.excluded_ids() == ["dup"]


@pytest.mark.parametrize(
    ("role", "phrase"),
    [
        ("lr", "no learning rate logged"),
        ("val_metric", "no validation metric logged"),
        ("train_loss", "no train loss logged"),
    ],
)
def test_missing_series_excluded(role: str, phrase: str) -> None:
    rec = good_run("r", **{role: None})
    sweep = validate_sweep([rec, good_run("ok")])
    assert [r.run_id for r in sweep.runs] == ["ok"]
    issue = assert_excluded(sweep, "r", phrase)
    assert f"{role} series missing or empty" in issue.reason
    assert len(sweep.issues) == 1


@pytest.mark.parametrize("role", ROLES)
def test_empty_series_excluded(role: str) -> None:
    rec = good_run("r", **{role: Series(step=[], value=[])})
    sweep = validate_sweep([rec])
    assert sweep.runs == []
    assert_excluded(sweep, "r", f"({role} series missing or empty)")


def test_repeated_step_excluded_with_step_and_index() -> None:
    steps = [10, 20, 30, 30, 40, 50, 60]
    rec = good_run("resumed", train_loss=Series(step=steps, value=[1.0] * len(steps)))
    sweep = validate_sweep([rec])
    assert sweep.runs == []
    issue = assert_excluded(sweep, "resumed", "train_loss steps are not strictly increasing")
    assert "step 30 follows 30 at index 3" in issue.reason
    assert "resumed run" in issue.reason


def test_decreasing_step_excluded_with_step_and_index() -> None:
    steps = [10, 20, 30, 40, 50, 25, 60]
    rec = good_run("r", val_metric=Series(step=steps, value=[0.5] * len(steps)))
    sweep = validate_sweep([rec])
    issue = assert_excluded(sweep, "r", "val_metric steps are not strictly increasing")
    assert "step 25 follows 50 at index 5" in issue.reason


def test_negative_step_excluded() -> None:
    steps = [-10, *STEPS[1:]]
    rec = good_run("neg", lr=Series(step=steps, value=[0.1] * len(steps)))
    sweep = validate_sweep([rec])
    assert sweep.runs == []
    assert_excluded(sweep, "neg", "lr has a negative step (-10)")


def test_step_zero_is_allowed() -> None:
    steps = [0, *STEPS[1:]]
    rec = good_run("zero", train_loss=Series(step=steps, value=[1.0] * len(steps)))
    sweep = validate_sweep([rec])
    assert sweep.issues == []
    assert sweep.runs[0].series["train_loss"].step[0] == 0


# --- learning rate ----------------------------------------------------------------------------


def test_non_positive_lr_points_repaired() -> None:
    values = [0.1] * len(STEPS)
    bad_idx = {3: 0.0, 7: -0.05, 11: math.nan, 12: math.inf}
    for i, v in bad_idx.items():
        values[i] = v
    rec = good_run("r", lr=Series(step=STEPS, value=values))
    sweep = validate_sweep([rec])
    (run,) = sweep.runs
    issue = only_issue(sweep)
    assert issue.run_id == "r"
    assert issue.action == "repaired"
    assert "dropped 4 lr points that were <= 0 or not finite" in issue.reason
    bad_steps = {STEPS[i] for i in bad_idx}
    kept_steps = set(run.series["lr"].step.tolist())
    assert kept_steps == set(STEPS) - bad_steps
    assert (run.series["lr"].value > 0).all()
    assert np.isfinite(run.series["lr"].value).all()
    # lr problems do not mark the run diverged or touch the other roles.
    assert not run.diverged
    assert run.series["train_loss"].step.size == len(STEPS)
    assert run.series["val_metric"].step.size == len(STEPS)


@pytest.mark.parametrize(
    "values",
    [
        [0.0] * 50,
        [-0.1] * 50,
        [math.nan] * 50,
        [0.0, -1.0, math.nan, -math.inf, math.inf] * 10,
    ],
    ids=["zeros", "negative", "nan", "mixed"],
)
def test_no_usable_lr_excluded(values: list[float]) -> None:
    rec = good_run("r", lr=Series(step=STEPS, value=values))
    sweep = validate_sweep([rec])
    assert sweep.runs == []
    issue = only_issue(sweep)
    assert issue.action == "excluded"
    assert "no usable learning rate" in issue.reason


def test_lr_repair_leaving_too_few_points_excluded() -> None:
    values = [0.1, 0.1, 0.1, 0.1] + [0.0] * 46
    rec = good_run("r", lr=Series(step=STEPS, value=values))
    sweep = validate_sweep([rec])
    assert sweep.runs == []
    assert [i.action for i in sweep.issues] == ["repaired", "excluded"]
    assert "lr has 4 usable" in sweep.issues[1].reason


# --- divergence -------------------------------------------------------------------------------


def _assert_truncated_before(sweep: ValidatedSweep, at: int, run_id: str = "r") -> None:
    (run,) = sweep.runs
    assert run.run_id == run_id
    assert run.diverged
    assert run.diverged_at == at
    issue = only_issue(sweep)
    assert issue.action == "truncated"
    assert f"diverged at step {at} of {run.total_steps}" in issue.reason
    for role in ROLES:
        s = run.series[role]
        assert s.step.size > 0
        assert (s.step < at).all(), role
        assert np.isfinite(s.value).all(), role
        # Everything before the divergence is kept.
        assert s.step.tolist() == [x for x in STEPS if x < at], role


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_train_loss_truncates(bad: float) -> None:
    values = [1.0] * len(STEPS)
    values[30] = bad  # step 310
    values[40] = 1.0
    rec = good_run("r", train_loss=Series(step=STEPS, value=values))
    _assert_truncated_before(validate_sweep([rec]), 310)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_val_metric_truncates(bad: float) -> None:
    values = [0.5] * len(STEPS)
    values[20] = bad  # step 210
    rec = good_run("r", val_metric=Series(step=STEPS, value=values))
    _assert_truncated_before(validate_sweep([rec]), 210)


def test_divergence_at_earliest_of_loss_and_metric() -> None:
    loss = [1.0] * len(STEPS)
    loss[25] = math.nan  # step 260
    val = [0.5] * len(STEPS)
    val[15] = math.inf  # step 160
    rec = good_run(
        "r", train_loss=Series(step=STEPS, value=loss), val_metric=Series(step=STEPS, value=val)
    )
    _assert_truncated_before(validate_sweep([rec]), 160)


def test_divergence_with_sparser_val_metric_uses_step_not_index() -> None:
    val_steps = list(range(50, 501, 50))  # 10 points
    val = [0.5] * len(val_steps)
    val[8] = math.nan  # step 450
    loss = [1.0] * len(STEPS)
    loss[39] = math.inf  # step 400
    rec = good_run(
        "r", train_loss=Series(step=STEPS, value=loss), val_metric=Series(step=val_steps, value=val)
    )
    sweep = validate_sweep([rec])
    (run,) = sweep.runs
    assert run.diverged_at == 400
    assert run.series["val_metric"].step.tolist() == [50, 100, 150, 200, 250, 300, 350]
    assert run.series["train_loss"].step.max() == 390


def test_diverged_run_truncated_to_too_few_points_excluded() -> None:
    values = [1.0] * len(STEPS)
    values[3] = math.nan  # step 40: 3 points remain
    rec = good_run("r", train_loss=Series(step=STEPS, value=values))
    sweep = validate_sweep([rec])
    assert sweep.runs == []
    assert [i.action for i in sweep.issues] == ["truncated", "excluded"]
    assert "diverged at step 40" in sweep.issues[0].reason
    assert "too few points" in sweep.issues[1].reason
    assert "has 3 usable (need >= 5)" in sweep.issues[1].reason
    assert sweep.excluded_ids() == ["r"]


# --- total_steps ------------------------------------------------------------------------------


def test_points_after_total_steps_dropped() -> None:
    rec = good_run("r", total_steps=400)
    sweep = validate_sweep([rec])
    (run,) = sweep.runs
    assert run.total_steps == 400
    assert not run.diverged
    assert len(sweep.issues) == len(ROLES)
    for issue, role in zip(sweep.issues, ROLES, strict=True):
        assert issue.action == "truncated"
        assert f"dropped 10 {role} points logged after total_steps=400" in issue.reason
    for role in ROLES:
        assert run.series[role].step.tolist() == [s for s in STEPS if s <= 400]
        assert run.series[role].value.size == 40


def test_point_exactly_at_total_steps_kept() -> None:
    sweep = validate_sweep([good_run("r", total_steps=500)])
    assert sweep.issues == []
    assert sweep.runs[0].series["lr"].step[-1] == 500


def test_total_steps_none_uses_last_logged_step() -> None:
    val_steps = [s for s in STEPS if s <= 300]
    rec = good_run(
        "r",
        total_steps=None,
        train_loss=Series(step=STEPS[:-1], value=[1.0] * 49),  # last at 490
        val_metric=Series(step=val_steps, value=[0.5] * len(val_steps)),
    )
    sweep = validate_sweep([rec])
    (run,) = sweep.runs
    assert run.total_steps == 500  # lr goes to 500
    # The validation metric stops at 300, far more than its interval (10) before 500:
    # the run is kept for its dynamics but is not complete.
    (issue,) = sweep.issues
    assert issue.action == "partial" and "val_metric at step 300" in issue.reason
    assert not run.complete and not run.eligible


def test_total_steps_none_and_all_steps_zero_excluded() -> None:
    rec = good_run("r", total_steps=None, **{role: Series(step=[0], value=[1.0]) for role in ROLES})
    sweep = validate_sweep([rec])
    assert sweep.runs == []
    assert_excluded(sweep, "r", "total_steps must be positive, got 0")


# --- too few points ---------------------------------------------------------------------------


def test_too_few_points_excluded_with_count() -> None:
    steps = [200, 300, 400, 500]
    rec = good_run("short", train_loss=Series(step=steps, value=[0.5] * 4))
    sweep = validate_sweep([rec, good_run("ok")])
    assert [r.run_id for r in sweep.runs] == ["ok"]
    issue = assert_excluded(sweep, "short", "too few points")
    assert "train_loss has 4 usable (need >= 5)" in issue.reason


def test_validation_metric_needs_two_points() -> None:
    """Logged once per epoch, a validation metric has few points: two are a trend."""
    two = good_run("two", val_metric=Series(step=[250, 500], value=[0.5, 0.6]))
    one = good_run("one", val_metric=Series(step=[500], value=[0.6]))
    sweep = validate_sweep([two, one])
    assert [r.run_id for r in sweep.runs] == ["two"] and sweep.runs[0].complete
    assert "val_metric has 1 usable (need >= 2)" in assert_excluded(sweep, "one", "few").reason


def test_exactly_min_points_kept() -> None:
    steps = [100, 200, 300, 400, 500]
    rec = good_run("r", val_metric=Series(step=steps, value=[0.5] * 5))
    sweep = validate_sweep([rec])
    assert sweep.issues == []
    assert sweep.runs[0].series["val_metric"].step.size == MIN_POINTS == 5


def test_custom_min_points() -> None:
    sweep = validate_sweep([good_run("r")], min_points=51)
    assert sweep.runs == []
    assert_excluded(sweep, "r", "has 50 usable (need >= 51)")
    assert validate_sweep([good_run("r")], min_points=50).issues == []


def test_exclusion_order_preserved_among_runs() -> None:
    recs = [good_run("a"), good_run("b", lr=None), good_run("c"), good_run("d", val_metric=None)]
    sweep = validate_sweep(recs)
    assert [r.run_id for r in sweep.runs] == ["a", "c"]
    assert sweep.excluded_ids() == ["b", "d"]


def test_step_too_large_for_int64_is_excluded_not_raised() -> None:
    steps = [*STEPS[:-1], 2**64]
    rec = good_run("huge", train_loss=Series(step=steps, value=[1.0] * len(steps)))
    sweep = validate_sweep([rec, good_run("ok")])  # raises OverflowError today
    assert [r.run_id for r in sweep.runs] == ["ok"]
    assert sweep.excluded_ids() == ["huge"]


# --- properties -------------------------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True)
nice_float = st.floats(min_value=1e-3, max_value=10.0)


@st.composite
def series_strategy(draw: st.DrawFn, *, increasing: bool, max_step: int) -> Series | None:
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return None
    n = 0 if kind == 1 else draw(st.integers(4, 16))  # empty, too short, or long enough
    if increasing:
        steps = sorted(draw(st.sets(st.integers(0, max_step), min_size=n, max_size=n)))
    else:
        steps = draw(st.lists(st.integers(-5, max_step), min_size=n, max_size=n))
    # Mostly well-behaved values, with arbitrary floats (NaN, inf, <= 0) at a few places.
    values = draw(st.lists(nice_float, min_size=n, max_size=n))
    if n:
        for i in draw(st.lists(st.integers(0, n - 1), max_size=3)):
            values[i] = draw(any_float)
    return Series(step=steps, value=values)


@st.composite
def record_strategy(draw: st.DrawFn) -> RunRecord:
    increasing = draw(st.integers(0, 7)) > 0
    total = draw(st.one_of(st.none(), st.integers(20, 2000)))
    # Steps mostly within the budget, some past it.
    max_step = (total or 2000) + draw(st.sampled_from([0, 0, 0, 100]))
    return RunRecord(
        run_id=draw(st.sampled_from("abcdefghij")),
        total_steps=total,
        train_loss=draw(series_strategy(increasing=increasing, max_step=max_step)),
        lr=draw(series_strategy(increasing=increasing, max_step=max_step)),
        val_metric=draw(series_strategy(increasing=increasing, max_step=max_step)),
    )


sweep_strategy = st.lists(record_strategy(), min_size=0, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweep_strategy)
def test_property_kept_runs_are_clean(records: list[RunRecord]) -> None:
    sweep = validate_sweep(records)
    for run in sweep.runs:
        rec = run.record
        logged = [s.step[-1] for s in (rec.series(r) for r in ROLES) if s is not None and len(s)]
        expected_total = rec.total_steps if rec.total_steps is not None else max(logged)
        assert run.total_steps == expected_total
        need = {"train_loss": MIN_POINTS, "lr": 1, "val_metric": MIN_VAL_POINTS}
        for role in ROLES:
            s = run.series[role]
            assert s.step.shape == s.value.shape
            assert s.step.size >= need[role]
            assert np.isfinite(s.value).all()
            assert (np.diff(s.step) > 0).all()
            assert (s.step >= 0).all()
            assert (s.step <= run.total_steps).all()
            if run.diverged_at is not None:
                assert (s.step < run.diverged_at).all()
            # Kept points are a subset of the logged points, with their values; an lr
            # logged more sparsely than the loss also holds its last value at loss steps.
            orig = rec.series(role)
            assert orig is not None
            logged_pairs = dict(zip(orig.step, orig.value, strict=True))
            loss_steps = set(rec.train_loss.step if rec.train_loss else ())
            for st_, v in zip(s.step.tolist(), s.value.tolist(), strict=True):
                if role == "lr" and (st_ not in logged_pairs or logged_pairs[st_] != v):
                    assert st_ in loss_steps  # held onto a loss step...
                    assert v in [x for p, x in logged_pairs.items() if p < st_]  # ...from before
                else:
                    assert logged_pairs[st_] == v
        assert (run.series["lr"].value > 0).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweep_strategy)
def test_property_nothing_lost_silently(records: list[RunRecord]) -> None:
    sweep = validate_sweep(records)
    kept_ids = [r.run_id for r in sweep.runs]
    assert len(kept_ids) == len(set(kept_ids))
    excluded = set(sweep.excluded_ids())
    for rec in records:
        assert rec.run_id in kept_ids or rec.run_id in excluded
    # Kept runs are the first occurrence of their id, in input order.
    first: dict[str, RunRecord] = {}
    for rec in records:
        first.setdefault(rec.run_id, rec)
    for run in sweep.runs:
        assert run.record is first[run.run_id]
    assert kept_ids == [i for i in first if i in kept_ids]
    # Issue count: one "excluded" per dropped record (duplicates included).
    n_excluded = sum(1 for i in sweep.issues if i.action == "excluded")
    assert n_excluded == len(records) - len(sweep.runs)
    # A run changed in any way has an issue saying so; an lr logged more sparsely than the
    # loss and held at the loss's steps (the documented reading of a sparse lr) is no change.
    issue_ids = {i.run_id for i in sweep.issues}
    for run in sweep.runs:
        def same(r: str, run: CleanRun = run) -> bool:
            logged = run.record.series(r).step  # type: ignore[union-attr, arg-type]
            kept = run.series[r].step.tolist()  # type: ignore[index]
            if r == "lr" and set(logged) <= set(kept):
                return set(kept) - set(logged) <= set(run.series["train_loss"].step.tolist())
            return kept == logged

        unchanged = all(same(r) for r in ROLES)
        if not unchanged:
            assert run.run_id in issue_ids
        if run.diverged:
            assert any(i.run_id == run.run_id and i.action == "truncated" for i in sweep.issues)


# --- completion: within one logging interval of the budget ------------------------------------

EVERY_3 = list(range(3, 151, 3))  # a loop logging every 3 steps; the budget 152 is not a multiple


def every_3(run_id: str, last: int = 150, *, total: int = 152, state: str = "finished",
            **overrides: Any) -> RunRecord:
    steps = [s for s in EVERY_3 if s <= last]
    n = len(steps)
    fields: dict[str, Any] = {
        "train_loss": Series(step=steps, value=[1.0] * n),
        "lr": Series(step=steps, value=[0.1] * n),
        "val_metric": Series(step=steps, value=[0.5] * n),
    }
    fields.update(overrides)
    return RunRecord(run_id=run_id, total_steps=total, state=state, **fields)


def test_last_point_within_one_interval_of_the_budget_is_complete() -> None:
    sweep = validate_sweep([every_3("r")])  # ends at 150 of 152, interval 3
    assert sweep.issues == [] and sweep.runs[0].complete and sweep.runs[0].eligible


def test_last_point_further_than_one_interval_is_partial() -> None:
    sweep = validate_sweep([every_3("r", last=147)])  # 5 steps short, interval 3
    (run,) = sweep.runs
    assert not run.complete and not run.eligible
    (issue,) = sweep.issues
    assert issue.action == "partial"
    assert "train_loss at step 147 (logging interval 3)" in issue.reason


def test_each_series_is_judged_on_its_own_interval() -> None:
    """A validation metric logged once per 19-step epoch ends at 152; the loss at 150."""
    val = Series(step=list(range(19, 153, 19)), value=[0.5] * 8)
    assert validate_sweep([every_3("r", val_metric=val)]).runs[0].complete
    short = Series(step=list(range(19, 134, 19)), value=[0.5] * 7)  # stops at 133: 19 short
    assert validate_sweep([every_3("r", val_metric=short)]).runs[0].complete  # = one interval
    shorter = Series(step=list(range(19, 115, 19)), value=[0.5] * 6)  # stops at 114
    assert not validate_sweep([every_3("r", val_metric=shorter)]).runs[0].complete


def test_a_crashed_run_at_its_budget_is_partial_evidence() -> None:
    sweep = validate_sweep([every_3("r", state="crashed")])
    (run,) = sweep.runs
    assert run.complete and not run.eligible
    (issue,) = sweep.issues
    assert issue.action == "partial" and "state 'crashed'; reached its budget" in issue.reason


def test_lr_logged_only_at_its_changes_is_held() -> None:
    """A step schedule logged when it changes: 3 points, held between them."""
    lr = Series(step=[0, 75, 120], value=[0.1, 0.01, 0.001])
    sweep = validate_sweep([every_3("r", lr=lr)])
    assert sweep.issues == []
    (run,) = sweep.runs
    held = run.series["lr"]
    assert held.step.tolist() == [0, *EVERY_3]
    assert held.value[held.step.tolist().index(72)] == 0.1
    assert held.value[held.step.tolist().index(75)] == 0.01
    assert held.value[-1] == 0.001 and run.complete


def test_lr_on_the_loss_cadence_is_not_held() -> None:
    sweep = validate_sweep([every_3("r")])
    assert sweep.runs[0].series["lr"].step.tolist() == EVERY_3

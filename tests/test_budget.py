"""Budget inference (tracker_sched.budget): each rule in its order, and both unit mismatches."""

from __future__ import annotations

from typing import Any

import pytest

from tracker_sched.budget import (
    LAST_STEP,
    BudgetSpec,
    config_value,
    resolve,
    stated_budget,
    steps_per_epoch,
    unit_mismatch,
)
from tracker_sched.data.validation import validate_sweep
from tracker_sched.schema import MetricMap, RunRecord, Series
from tracker_sched.sources.files import record_from_raw

NONE = BudgetSpec()


def run(run_id: str, steps: list[int], *, total: int | None = None, state: str = "finished",
        config: dict[str, Any] | None = None) -> RunRecord:
    n = len(steps)
    return RunRecord(run_id=run_id, total_steps=total, state=state, config=config or {},
                     train_loss=Series(step=steps, value=[1.0] * n),
                     lr=Series(step=steps, value=[0.1] * n),
                     val_metric=Series(step=steps, value=[0.5] * n))


# --- steps per epoch ---------------------------------------------------------------------------


def test_steps_per_epoch_from_fractional_epochs() -> None:
    """HF Trainer: epoch = step / steps_per_epoch, logged twice at eval steps."""
    steps = [5, 6, 10, 12, 15, 18, 20, 24, 25, 30, 30, 35, 36, 36]
    epochs = [5 / 12, .5, 10 / 12, 1, 15 / 12, 1.5, 20 / 12, 2, 25 / 12, 2.5, 2.5, 35 / 12, 3, 3]
    assert steps_per_epoch(steps, epochs) == pytest.approx(12)


def test_steps_per_epoch_from_whole_epoch_indices() -> None:
    """Lightning: the epoch index at every logged step (11 steps per epoch, logged every 3)."""
    steps = [2, 5, 8, 10, 11, 14, 17, 20, 21, 23, 26, 29, 32, 35, 38, 41, 43]
    epochs = [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert steps_per_epoch(steps, epochs) == 11


def test_steps_per_epoch_without_information() -> None:
    assert steps_per_epoch([], []) is None
    assert steps_per_epoch([3, 6, 9], [0, 0, 0]) is None  # never left the first epoch


# --- stated budgets ----------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "want"), [
    ({"total_steps": 152}, 152),  # a plain script
    ({"num_training_steps": "300"}, 300),  # an MLflow param arrives as text
    ({"max_steps": 500, "num_train_epochs": 3}, 500),  # HF Trainer with max_steps set
    ({"max_steps": 80, "max_epochs": 1000}, 80),  # Lightning with max_steps set
    ({"trainer": {"max_steps": 64}}, 64),  # a nested (Lightning CLI) config
])
def test_step_counts(config: dict[str, Any], want: int) -> None:
    found = stated_budget(config)
    assert found is not None and found.steps == want


def test_hf_max_steps_minus_one_means_epochs_times_steps_per_epoch() -> None:
    config = {"max_steps": -1, "num_train_epochs": 3.0}
    assert stated_budget(config) is None  # no logged epoch: nothing to convert with
    found = stated_budget(config, ([12, 24, 36], [1.0, 2.0, 3.0]))
    assert found is not None and found.steps == 36
    assert "num_train_epochs=3 x 12 steps per epoch" in found.source


def test_lightning_max_epochs_times_steps_per_epoch() -> None:
    steps = [2, 5, 8, 10, 11, 14, 17, 20, 21]
    found = stated_budget({"max_epochs": 4, "max_steps": -1}, (steps, [0, 0, 0, 0, 1, 1, 1, 1, 1]))
    assert found is not None and found.steps == 44


def test_keras_epochs_with_the_epoch_as_step() -> None:
    found = stated_budget({"epochs": 10}, None, last_step=9)
    assert found is not None and found.steps == 10 and "counts epochs" in found.source
    # Steps past the epoch count, or far short of it: the axis is not shown to count epochs.
    assert stated_budget({"epochs": 10}, None, last_step=150) is None
    assert stated_budget({"epochs": 10}, None, last_step=4) is None


def test_step_counts_win_over_epoch_counts() -> None:
    found = stated_budget({"epochs": 8, "total_steps": 152}, ([19, 38], [1.0, 2.0]), 150)
    assert found is not None and found.steps == 152


def test_text_and_fractions_are_no_budget() -> None:
    assert stated_budget({"total_steps": "many", "max_steps": 2.5, "num_training_steps": True}) \
        is None


def test_config_value_ignores_tracker_internals_and_ambiguity() -> None:
    assert config_value({"_wandb": {"summary": {"max_steps": 9}}}, "max_steps") is None
    assert config_value({"a": {"max_steps": 1}, "b": {"max_steps": 2}}, "max_steps") is None
    assert config_value({"a": {"max_steps": 1}}, "max_steps") == 1


def test_record_from_raw_uses_the_logged_epoch() -> None:
    """Sources find the HF budget while the epoch metric is still at hand."""
    s = list(range(5, 40, 5))
    metrics = {"loss": {"step": s, "value": [1.0] * 7},
               "learning_rate": {"step": s, "value": [0.1] * 7},
               "eval_loss": {"step": [12, 24, 36], "value": [0.5] * 3},
               "epoch": {"step": [*s, 12, 24, 36], "value": [x / 12 for x in [*s, 12, 24, 36]]}}
    rec = record_from_raw({"run_id": "hf", "config": {"max_steps": -1, "num_train_epochs": 3},
                           "metrics": metrics}, MetricMap())
    assert rec.total_steps == 36 and rec.budget_source is not None
    assert rec.metric_keys["epoch"] == "epoch"


# --- resolve: the explicit flag and the last step ----------------------------------------------


def test_explicit_number_and_key_win() -> None:
    got = resolve(BudgetSpec(steps=99), {"total_steps": 10}, 10, "x", 50, True, None)
    assert not isinstance(got, str) and got.steps == 99
    got = resolve(BudgetSpec(key="my_budget"), {"my_budget": "120"}, 10, "x", 50, True, None)
    assert not isinstance(got, str) and got.steps == 120


def test_explicit_key_missing_names_the_keys() -> None:
    got = resolve(BudgetSpec(key="steps"), {"lr": 0.1, "epochs": 3}, None, None, 50, True, None)
    assert isinstance(got, str) and "--total-steps-key steps" in got and "epochs, lr" in got


def test_spec_takes_one_of_number_and_key() -> None:
    with pytest.raises(ValueError, match="not both"):
        BudgetSpec(steps=10, key="k")


def test_last_step_of_a_finished_run_and_of_an_unfinished_one() -> None:
    got = resolve(NONE, {}, None, None, 140, True, None)
    assert not isinstance(got, str) and (got.steps, got.source) == (140, LAST_STEP)
    got = resolve(NONE, {}, None, None, 70, False, 140)  # takes the finished runs' budget
    assert not isinstance(got, str) and got.steps == 140 and not got.from_last_step
    got = resolve(NONE, {}, None, None, 70, False, None)
    assert not isinstance(got, str) and got.from_last_step and got.source != LAST_STEP


def test_unfinished_run_without_budget_is_partial_with_the_sweeps_budget() -> None:
    sweep = validate_sweep([run("done", list(range(10, 141, 10))),
                            run("killed", list(range(10, 71, 10)), state="killed")])
    by_id = {r.run_id: r for r in sweep.runs}
    assert by_id["done"].total_steps == 140 and by_id["done"].eligible
    assert by_id["killed"].total_steps == 140 and not by_id["killed"].complete
    (issue,) = sweep.issues
    assert issue.action == "partial" and "state 'killed'" in issue.reason


# --- unit mismatches ---------------------------------------------------------------------------


def test_budget_in_epochs_against_a_step_axis_is_named() -> None:
    """--total-steps-key epochs on runs whose step is the optimizer step: steps overrun it."""
    sweep = validate_sweep([run("r", list(range(3, 151, 3)), config={"epochs": 8})],
                           budget=BudgetSpec(key="epochs"))
    (issue,) = sweep.issues
    assert issue.action == "excluded"
    assert "reaches 150 but the budget is 8" in issue.reason and "--total-steps" in issue.reason


def test_step_axis_in_epochs_against_a_step_budget_is_named() -> None:
    """A per-epoch logger (the epoch as step) with the budget given in optimizer steps."""
    sweep = validate_sweep([run("r", list(range(10)), total=None,
                                config={"epochs": 10, "total_steps": 1900})])
    (issue,) = sweep.issues
    assert issue.action == "excluded"
    assert "the step axis counts epochs (last step 9, config epochs=10)" in issue.reason
    assert "--total-steps-key epochs" in issue.reason
    fixed = validate_sweep([run("r", list(range(10)), config={"epochs": 10,
                                                               "total_steps": 1900})],
                           budget=BudgetSpec(key="epochs"))
    assert fixed.issues == [] and fixed.runs[0].total_steps == 10


def test_early_stopped_run_is_no_mismatch() -> None:
    budget = stated_or_fail({"total_steps": 1000})
    assert unit_mismatch(budget, {"total_steps": 1000}, 400, 10) is None
    # A run logged every 9 steps that died at step 12 of 840 is short, not in epochs.
    assert unit_mismatch(stated_or_fail({"total_steps": 840}), {"epochs": 30}, 12, 9) is None
    assert unit_mismatch(stated_or_fail({"total_steps": 840}), {"epochs": 30}, 29, 1) is not None


def stated_or_fail(config: dict[str, Any]) -> Any:
    found = stated_budget(config)
    assert found is not None
    return found

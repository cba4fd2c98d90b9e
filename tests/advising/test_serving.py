"""Bad rows in a recommendation request are one clear InputError naming the row."""

from __future__ import annotations

import pytest

from tracker_sched.advising.serving import observations_from_records
from tracker_sched.errors import InputError


@pytest.mark.parametrize(("step", "shown"), [
    (float("inf"), "inf"), (float("nan"), "nan"), (-1, "-1"), (1.7, "1.7"), ("2.5", "'2.5'"),
])
def test_a_step_must_be_a_finite_non_negative_integer(step: object, shown: str) -> None:
    rows = [{"step": 0, "train_loss": 1.0}, {"step": step, "train_loss": 0.9}]
    with pytest.raises(InputError, match=rf"observation 2: step={shown} is not a non-negative"):
        observations_from_records(rows)


def test_integral_steps_in_any_number_form_are_kept() -> None:
    obs = observations_from_records([{"step": 3.0}, {"step": "4"}, {"step": 5}])
    assert [o.step for o in obs] == [3, 4, 5]


def test_non_finite_values_count_as_missing() -> None:
    rows = [{"step": 1, "train_loss": float("inf"), "val_metric": float("-inf"),
             "lr": float("nan")}, {"step": 2, "lr": float("inf"), "train_loss": 0.5}]
    obs = observations_from_records(rows)
    assert [(o.train_loss, o.val_metric, o.lr) for o in obs] == [(None, None, None),
                                                                 (0.5, None, None)]


def test_a_number_too_large_for_a_float_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"observation 1: step=1000.* is not a number"):
        observations_from_records([{"step": 10**400}])

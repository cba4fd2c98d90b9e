"""Schema: metric-key mapping, validation direction and the models' structural checks."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from tracker_sched.errors import InputError
from tracker_sched.schema import MetricMap, Recommendation, RunRecord, Schedule, Series

# --- MetricMap defaults -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["lr", "learning_rate", "lr-AdamW", "train/learning_rate"])
def test_default_lr_keys_resolve(key: str) -> None:
    keys = [key, "some_other_metric", "epoch"]
    assert MetricMap().key_for("lr", keys) == key
    assert MetricMap().resolve(keys)["lr"] == key


@pytest.mark.parametrize("key", ["loss", "train_loss", "train/loss"])
def test_default_train_loss_keys_resolve(key: str) -> None:
    keys = [key, "epoch"]
    assert MetricMap().key_for("train_loss", keys) == key
    assert MetricMap().resolve(keys)["train_loss"] == key


@pytest.mark.parametrize("key", ["val_acc", "val/acc", "eval_accuracy", "eval_loss", "val_loss"])
def test_default_val_metric_keys_resolve(key: str) -> None:
    keys = [key, "epoch"]
    assert MetricMap().key_for("val_metric", keys) == key
    assert MetricMap().resolve(keys)["val_metric"] == key


def test_lightning_glob_picks_first_match_in_sorted_order() -> None:
    assert MetricMap().key_for("lr", ["lr-SGD", "lr-AdamW"]) == "lr-AdamW"


def test_unrelated_keys_resolve_to_none() -> None:
    out = MetricMap().resolve(["epoch", "grad_norm"])
    assert out == {"train_loss": None, "lr": None, "val_metric": None}


def test_lr_beats_learning_rate_when_both_present() -> None:
    assert MetricMap().key_for("lr", ["learning_rate", "lr"]) == "lr"
    assert MetricMap().resolve(["learning_rate", "lr", "loss", "val_acc"])["lr"] == "lr"


def test_doctest_example_resolves_every_role() -> None:
    out = MetricMap().resolve(["loss", "learning_rate", "eval_accuracy"])
    assert out == {"train_loss": "loss", "lr": "learning_rate", "val_metric": "eval_accuracy"}


def test_explicit_key_wins_over_defaults() -> None:
    mm = MetricMap(lr="my_lr", train_loss="my_loss", val_metric="my_val")
    keys = ["lr", "my_lr", "loss", "my_loss", "val_acc", "my_val"]
    assert mm.resolve(keys) == {"train_loss": "my_loss", "lr": "my_lr", "val_metric": "my_val"}


def test_explicit_key_absent_resolves_to_none_even_if_default_present() -> None:
    mm = MetricMap(lr="my_lr")
    out = mm.resolve(["lr", "learning_rate", "loss", "val_acc"])
    assert out["lr"] is None
    assert out["train_loss"] == "loss"


# --- direction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("val_acc", "max"),
        ("eval_accuracy", "max"),
        ("val/acc", "max"),
        ("val_loss", "min"),
        ("eval_loss", "min"),
        ("perplexity", "min"),
        ("val_ppl", "min"),
    ],
)
def test_direction_inferred_from_name(key: str, expected: str) -> None:
    assert MetricMap().direction_for(key) == expected


@pytest.mark.parametrize("direction", ["max", "min"])
def test_explicit_direction_wins(direction: str) -> None:
    mm = MetricMap(val_direction=direction)  # type: ignore[arg-type]
    assert mm.direction_for("val_acc") == direction
    assert mm.direction_for("val_loss") == direction
    assert mm.direction_for("mystery_metric") == direction


def test_unknown_direction_raises_with_flag_hint() -> None:
    with pytest.raises(InputError, match="--val-direction") as info:
        MetricMap().direction_for("mystery_metric")
    assert "'mystery_metric'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_val_direction_rejects_other_values() -> None:
    with pytest.raises(ValidationError, match="val_direction"):
        MetricMap(val_direction="up")  # type: ignore[arg-type]


# --- strict resolution ------------------------------------------------------------------------


def test_strict_resolve_missing_lr_names_role_flag_and_keys() -> None:
    with pytest.raises(InputError) as info:
        MetricMap().resolve(["loss", "val_acc", "epoch"], strict=True)
    msg = str(info.value)
    assert "no lr metric" in msg
    assert "--lr-key" in msg
    assert "Keys seen: epoch, loss, val_acc" in msg
    # The other roles resolved, so they are not mentioned as missing.
    assert "--train-loss-key" not in msg
    assert "--val-key" not in msg


def test_strict_resolve_missing_explicit_key_names_it() -> None:
    with pytest.raises(InputError) as info:
        MetricMap(lr="my_lr").resolve(["loss", "val_acc", "lr"], strict=True)
    msg = str(info.value)
    assert "'my_lr'" in msg
    assert "--lr-key" in msg


def test_strict_resolve_no_keys_says_none_seen() -> None:
    with pytest.raises(InputError) as info:
        MetricMap().resolve([], strict=True)
    msg = str(info.value)
    for flag in ("--train-loss-key", "--lr-key", "--val-key"):
        assert flag in msg
    assert msg.endswith("Keys seen: none")


def test_strict_resolve_passes_when_complete() -> None:
    out = MetricMap().resolve(["loss", "lr", "val_loss"], strict=True)
    assert out == {"train_loss": "loss", "lr": "lr", "val_metric": "val_loss"}


# --- Series / RunRecord -----------------------------------------------------------------------


def test_series_mismatched_lengths_rejected() -> None:
    with pytest.raises(ValidationError, match="same length, got 3 steps and 2 values"):
        Series(step=[1, 2, 3], value=[0.1, 0.2])


def test_series_len() -> None:
    assert len(Series(step=[1, 2, 3], value=[0.1, 0.2, 0.3])) == 3
    assert len(Series(step=[], value=[])) == 0


def test_schedule_mismatched_lengths_rejected() -> None:
    with pytest.raises(ValidationError, match="same length"):
        Schedule(step=[1, 2], lr=[0.1])


def _record_with_non_finite() -> RunRecord:
    return RunRecord(
        run_id="r1",
        total_steps=100,
        config={"peak_lr": 0.1, "tags": ["a", "b"]},
        train_loss=Series(step=[10, 20, 30], value=[1.0, math.nan, math.inf]),
        lr=Series(step=[10, 20], value=[0.1, -math.inf]),
        val_metric=Series(step=[30], value=[0.5]),
        metric_keys={"train_loss": "loss"},
    )


def test_run_record_json_round_trip_keeps_nan_and_inf() -> None:
    rec = _record_with_non_finite()
    text = rec.model_dump_json()
    assert "NaN" in text and "Infinity" in text
    back = RunRecord.model_validate_json(text)
    assert back.train_loss is not None and back.lr is not None
    assert back.train_loss.step == [10, 20, 30]
    assert back.train_loss.value[0] == 1.0
    assert math.isnan(back.train_loss.value[1])
    assert back.train_loss.value[2] == math.inf
    assert back.lr.value == [0.1, -math.inf]
    assert back.config == rec.config
    assert back.metric_keys == rec.metric_keys
    assert back.total_steps == 100
    # A second round trip is byte-identical.
    assert back.model_dump_json() == text


def test_run_record_series_accessor() -> None:
    rec = _record_with_non_finite()
    assert rec.series("train_loss") is rec.train_loss
    assert rec.series("lr") is rec.lr
    assert rec.series("val_metric") is rec.val_metric


def test_empty_run_id_rejected() -> None:
    with pytest.raises(ValidationError, match="run_id"):
        RunRecord(run_id="")


@pytest.mark.parametrize("total", [0, -5])
def test_non_positive_total_steps_rejected(total: int) -> None:
    with pytest.raises(ValidationError, match="total_steps"):
        RunRecord(run_id="r", total_steps=total)


def test_unknown_source_rejected() -> None:
    with pytest.raises(ValidationError, match="source"):
        RunRecord(run_id="r", source="tensorboard")  # type: ignore[arg-type]


# --- Recommendation ---------------------------------------------------------------------------


def _recommendation(lr_now: float) -> Recommendation:
    return Recommendation(
        status="planned", step=10, lr_now=lr_now, schedule=Schedule(step=[20], lr=[0.05])
    )


def test_recommendation_accepts_positive_lr() -> None:
    assert _recommendation(0.1).lr_now == 0.1


@pytest.mark.parametrize("lr_now", [0.0, -0.1])
def test_recommendation_requires_positive_lr(lr_now: float) -> None:
    with pytest.raises(ValidationError, match="lr_now"):
        _recommendation(lr_now)


# --- default names as frameworks log them ------------------------------------------------------


@pytest.mark.parametrize(("keys", "want"), [
    (["loss", "lr-AdamW", "val_loss"], "lr-AdamW"),  # Lightning LearningRateMonitor
    (["loss", "lr-SGD-momentum/pg1", "lr-SGD/pg1", "lr-SGD/pg2"], "lr-SGD/pg1"),  # param groups
    (["train/loss", "train/learning_rate", "eval/loss"], "train/learning_rate"),  # HF with W&B
    (["loss", "learning_rate", "eval_loss"], "learning_rate"),  # HF with MLflow
    (["train_loss", "lr", "val_acc"], "lr"),  # a plain loop
])
def test_lr_names_of_the_frameworks(keys: list[str], want: str) -> None:
    assert MetricMap().key_for("lr", keys) == want


def test_a_one_point_summary_is_passed_over_for_a_series() -> None:
    """HF Trainer logs `train_loss` once, at the end, beside its `loss` series."""
    keys = ["train_loss", "loss", "learning_rate", "eval_loss"]
    lengths = {"train_loss": 1, "loss": 7, "learning_rate": 7, "eval_loss": 3}
    assert MetricMap().key_for("train_loss", keys) == "train_loss"  # names alone
    assert MetricMap().key_for("train_loss", keys, lengths) == "loss"
    # A run that logged only the summary still maps it (validation then says it is short).
    assert MetricMap().key_for("train_loss", ["train_loss"], {"train_loss": 1}) == "train_loss"
    # An explicit key is taken as given.
    assert MetricMap(train_loss="train_loss").key_for("train_loss", keys, lengths) == "train_loss"

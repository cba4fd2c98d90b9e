"""Dataset: resampling onto the progress grid, normalisation, encoder and target batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker_sched.data.grid import (
    CHANNELS,
    LOG_LR,
    N_CHANNELS,
    TRAIN_LOSS,
    VAL_METRIC,
    GridSweep,
    Normalisation,
    SweepTensors,
    choose_transforms,
    context_batch,
    fit_normalisation,
    resample,
    target_batch,
    to_grid,
)
from tracker_sched.data.validation import CleanRun, validate_sweep
from tracker_sched.errors import InputError
from tracker_sched.schema import RunRecord, Series

# --- resample: known answers ------------------------------------------------------------------


def test_resample_linear_dense_series_maps_to_the_line() -> None:
    g, total = 51, 10_000
    steps = np.arange(0, total + 1, 5)
    slope, offset = 2.0, 3.0
    values = offset + slope * steps / total
    out, mask = resample(steps, values, total, g)
    tau = np.linspace(0.0, 1.0, g)
    assert out.shape == mask.shape == (g,)
    assert mask.dtype == bool
    assert mask.all()
    expected = offset + slope * tau
    # Interior cells are centred on their grid point: the cell mean is the line's value.
    np.testing.assert_allclose(out[1:-1], expected[1:-1], atol=1e-9)
    # The end cells are half cells, so their mean sits a quarter cell inside.
    edge = slope * 0.25 / (g - 1)
    assert out[0] == pytest.approx(expected[0] + edge, abs=1e-3)
    assert out[-1] == pytest.approx(expected[-1] - edge, abs=1e-3)


def test_resample_holds_the_last_value_for_one_logging_interval() -> None:
    """Logged every 3 steps with a budget of 152: the last point is 150, the grid ends at 152."""
    steps = np.arange(3, 151, 3)
    values = steps / 100.0
    bare, bare_mask = resample(steps, values, 152, 100)
    assert bare_mask[98] and not bare_mask[99]  # step 150 falls in cell 98 of 0..99
    out, mask = resample(steps, values, 152, 100, hold=3.0)
    assert mask[99] and out[99] == out[98] == bare[98]  # the last observed cell's value
    np.testing.assert_array_equal(out[:99], bare[:99])


def test_resample_holds_no_further_than_one_interval() -> None:
    """Stopped at 120 of 200, logged every 10: cells past 130 stay masked."""
    steps = np.arange(10, 121, 10)
    out, mask = resample(steps, steps / 10.0, 200, 21, hold=10.0)  # cell c is step 10 c
    assert mask[1:14].all() and not mask[14:].any() and not mask[0]
    assert out[13] == out[12] == 12.0  # step 130 holds the value at 120


def test_resample_sparse_series_is_interpolated_between_cells() -> None:
    g, total = 11, 100
    steps = np.array([0, 50, 100])
    values = np.array([0.0, 5.0, 20.0])
    out, mask = resample(steps, values, total, g)
    assert mask.all()
    np.testing.assert_allclose(out, [0, 1, 2, 3, 4, 5, 8, 11, 14, 17, 20])


def test_resample_cell_averages_observations() -> None:
    g, total = 11, 100
    # Steps 9, 10, 11 all fall in the cell of tau = 0.1; 20 is the next cell.
    out, mask = resample(np.array([9, 10, 11, 20]), np.array([1.0, 2.0, 6.0, 7.0]), total, g)
    assert mask.tolist() == [False, True, True] + [False] * 8
    assert out[1] == pytest.approx(3.0)
    assert out[2] == pytest.approx(7.0)


def test_resample_partial_coverage_is_masked_outside() -> None:
    g, total = 51, 1000
    steps = np.arange(200, 601, 4)
    values = np.sin(steps / 50.0)
    out, mask = resample(steps, values, total, g)
    lo, hi = round(0.2 * (g - 1)), round(0.6 * (g - 1))
    expected = np.zeros(g, dtype=bool)
    expected[lo : hi + 1] = True
    np.testing.assert_array_equal(mask, expected)
    assert np.isnan(out[~mask]).all()
    assert np.isfinite(out[mask]).all()


def test_resample_empty_input_is_all_masked() -> None:
    out, mask = resample(np.array([], dtype=np.int64), np.array([]), 100, 20)
    assert out.shape == mask.shape == (20,)
    assert not mask.any()
    assert np.isnan(out).all()


def test_resample_single_point() -> None:
    out, mask = resample(np.array([50]), np.array([4.0]), 100, 11)
    assert mask.tolist() == [False] * 5 + [True] + [False] * 5
    assert out[5] == 4.0


@st.composite
def series_on_grid(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    total = draw(st.integers(1, 5000))
    g = draw(st.integers(10, 120))
    steps = sorted(draw(st.sets(st.integers(0, total), min_size=1, max_size=60)))
    values = draw(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            min_size=len(steps),
            max_size=len(steps),
        )
    )
    return np.asarray(steps, dtype=np.int64), np.asarray(values), total, g


@settings(max_examples=60, deadline=None)
@given(series_on_grid())
def test_property_resample_mask_values_and_range(
    case: tuple[np.ndarray, np.ndarray, int, int],
) -> None:
    steps, values, total, g = case
    out, mask = resample(steps, values, total, g)
    assert out.shape == mask.shape == (g,)
    on = np.nonzero(mask)[0]
    assert on.size >= 1
    # One contiguous block, from the first observed cell to the last.
    np.testing.assert_array_equal(on, np.arange(on[0], on[-1] + 1))
    assert on[0] == int(np.rint(steps[0] / total * (g - 1)))
    assert on[-1] == int(np.rint(steps[-1] / total * (g - 1)))
    assert np.isnan(out[~mask]).all()
    assert np.isfinite(out[mask]).all()
    tol = 1e-9 * max(1.0, float(np.abs(values).max()))
    assert out[mask].min() >= values.min() - tol
    assert out[mask].max() <= values.max() + tol


@settings(max_examples=60, deadline=None)
@given(series_on_grid(), st.floats(-1e3, 1e3, allow_nan=False))
def test_property_resample_constant_series_stays_constant(
    case: tuple[np.ndarray, np.ndarray, int, int], c: float
) -> None:
    steps, _, total, g = case
    out, mask = resample(steps, np.full(steps.shape, c), total, g)
    np.testing.assert_allclose(out[mask], c, rtol=1e-12, atol=1e-12)


# --- validated runs -> grid -------------------------------------------------------------------

STEPS = list(range(10, 401, 10))


def clean_runs(
    n: int = 4,
    *,
    loss: Any = None,
    val: Any = None,
    seed: int = 0,
) -> list[CleanRun]:
    """Validated runs with positive losses and accuracies unless overridden."""
    rng = np.random.default_rng(seed)
    k = len(STEPS)
    records = []
    for i in range(n):
        total = 400 if i % 2 == 0 else 600  # the odd runs stop at two thirds of their budget
        train = loss(i) if loss else list(1.0 + rng.random(k))
        metric = val(i) if val else list(0.3 + 0.6 * rng.random(k))
        lr = list(10 ** rng.uniform(-4, -1, size=k))
        records.append(
            RunRecord(
                run_id=f"run{i}",
                total_steps=total,
                train_loss=Series(step=STEPS, value=train),
                lr=Series(step=STEPS, value=lr),
                val_metric=Series(step=STEPS, value=metric),
            )
        )
    sweep = validate_sweep(records)
    # The odd runs are kept as partial evidence: they did not reach their budget.
    assert [(i.run_id, i.action) for i in sweep.issues] == [
        (f"run{i}", "partial") for i in range(1, n, 2)]
    return sweep.runs


def test_choose_transforms_positive_loss_and_max_metric() -> None:
    assert choose_transforms(clean_runs(), "max") == ("log10", "log10", "identity")


def test_choose_transforms_positive_minimised_metric_is_log() -> None:
    assert choose_transforms(clean_runs(), "min") == ("log10", "log10", "log10")


def test_choose_transforms_non_positive_loss_is_identity() -> None:
    def loss(i: int) -> list[float]:
        v = [1.0] * len(STEPS)
        if i == 2:
            v[5] = 0.0  # one run, one point
        return v

    assert choose_transforms(clean_runs(loss=loss), "max")[TRAIN_LOSS] == "identity"


def test_choose_transforms_non_positive_minimised_metric_is_identity() -> None:
    def val(i: int) -> list[float]:
        return [-0.5 - 0.01 * j for j in range(len(STEPS))] if i == 1 else [0.5] * len(STEPS)

    assert choose_transforms(clean_runs(val=val), "min") == ("log10", "log10", "identity")


def test_to_grid_layout_and_transforms() -> None:
    runs = clean_runs()
    transforms = choose_transforms(runs, "max")
    grid = to_grid(runs, 21, transforms)
    assert grid.run_ids == [r.run_id for r in runs]
    assert grid.values.shape == grid.mask.shape == (4, 21, N_CHANNELS)
    assert grid.grid_points == 21
    np.testing.assert_allclose(grid.tau, np.linspace(0, 1, 21))
    assert not grid.diverged.any()
    # Even runs cover their whole budget; odd runs (total 600, last step 400) stop at 2/3.
    assert grid.mask[0].all()
    assert grid.mask[1, : round(400 / 600 * 20) + 1].all()
    assert not grid.mask[1, round(400 / 600 * 20) + 1 :].any()
    np.testing.assert_array_equal(grid.complete(), [True, False, True, False])
    # Channel 1 is log10(lr): the grid point at step 200 of run 0 is the mean of its cell.
    run0 = runs[0]
    lr_steps, lr_vals = run0.series["lr"].step, run0.series["lr"].value
    cell = np.rint(lr_steps / 400 * 20) == 10
    assert grid.values[0, 10, LOG_LR] == pytest.approx(np.log10(lr_vals[cell]).mean())
    # The accuracy is kept as logged.
    val_steps, val_vals = run0.series["val_metric"].step, run0.series["val_metric"].value
    cell = np.rint(val_steps / 400 * 20) == 10
    assert grid.values[0, 10, VAL_METRIC] == pytest.approx(val_vals[cell].mean())

    sub = grid.subset([2, 0])
    assert sub.run_ids == ["run2", "run0"]
    np.testing.assert_array_equal(sub.values[1], grid.values[0])


def test_to_grid_rejects_tiny_grid() -> None:
    with pytest.raises(InputError, match="grid_points must be >= 10, got 5"):
        to_grid(clean_runs(), 5, ("log10", "log10", "identity"))


# --- normalisation ----------------------------------------------------------------------------


def _random_grid(runs: int, g: int, seed: int, constant_channel: int | None = None) -> GridSweep:
    rng = np.random.default_rng(seed)
    values = rng.normal(loc=[5.0, -3.0, 0.7], scale=[2.0, 0.5, 0.1], size=(runs, g, N_CHANNELS))
    if constant_channel is not None:
        values[..., constant_channel] = 0.25
    mask = rng.random((runs, g, N_CHANNELS)) < 0.7
    values = np.where(mask, values, np.nan)
    return GridSweep(
        run_ids=[f"r{i}" for i in range(runs)],
        values=values,
        mask=mask,
        diverged=np.zeros(runs, dtype=bool),
        tau=np.linspace(0, 1, g),
    )


def test_fit_normalisation_standardises_observed_values() -> None:
    grid = _random_grid(6, 30, seed=1)
    transforms = ("log10", "log10", "identity")
    norm = fit_normalisation(grid, transforms)
    assert norm.transforms == transforms
    assert norm.channels == CHANNELS
    z = norm.normalise(grid.values)
    for c in range(N_CHANNELS):
        obs = z[..., c][grid.mask[..., c]]
        assert obs.mean() == pytest.approx(0.0, abs=1e-9)
        assert obs.std() == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(norm.denormalise(z)[grid.mask], grid.values[grid.mask])


def test_fit_normalisation_constant_channel_gets_unit_std() -> None:
    grid = _random_grid(5, 20, seed=2, constant_channel=VAL_METRIC)
    norm = fit_normalisation(grid, ("log10", "log10", "identity"))
    assert norm.std[VAL_METRIC] == 1.0
    assert norm.mean[VAL_METRIC] == pytest.approx(0.25)
    assert all(np.isfinite(norm.mean)) and all(np.isfinite(norm.std))
    z = norm.normalise(np.nan_to_num(grid.values))
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[..., VAL_METRIC][grid.mask[..., VAL_METRIC]], 0.0, atol=1e-12)


def test_normalisation_transform_round_trip() -> None:
    norm = Normalisation(transforms=("log10", "log10", "identity"), mean=(0, 0, 0), std=(1, 1, 1))
    raw = np.array([0.01, 1.0, 100.0])
    np.testing.assert_allclose(norm.transform(TRAIN_LOSS, raw), [-2, 0, 2])
    np.testing.assert_allclose(norm.untransform(TRAIN_LOSS, norm.transform(TRAIN_LOSS, raw)), raw)
    np.testing.assert_array_equal(norm.transform(VAL_METRIC, raw), raw)
    np.testing.assert_array_equal(norm.untransform(VAL_METRIC, raw), raw)


def test_sweep_tensors_from_grid() -> None:
    runs = clean_runs()
    transforms = choose_transforms(runs, "max")
    grid = to_grid(runs, 20, transforms)
    norm = fit_normalisation(grid, transforms)
    data = SweepTensors.from_grid(grid, norm)
    assert data.values.dtype == torch.float32
    assert data.mask.dtype == torch.bool
    assert data.grid_points == 20
    np.testing.assert_array_equal(data.mask.numpy(), grid.mask)
    assert torch.isfinite(data.values).all()
    assert (data.values[~data.mask] == 0).all()
    expected = norm.normalise(grid.values)[grid.mask]
    np.testing.assert_allclose(data.values[data.mask].numpy(), expected, rtol=1e-5, atol=1e-5)


# --- encoder windows and targets against a naive loop -----------------------------------------


def _random_tensors(runs: int, g: int, seed: int) -> SweepTensors:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(runs, g, N_CHANNELS, generator=gen) < 0.75
    values = torch.randn(runs, g, N_CHANNELS, generator=gen) * mask
    return SweepTensors(values=values, mask=mask)


def _naive_context(
    data: SweepTensors, runs: list[int], ends: list[int], lengths: list[int], direction: str
) -> tuple[np.ndarray, list[int]]:
    g = data.grid_points
    vals, mask = data.values.numpy(), data.mask.numpy()
    clipped = [min(n, e + 1) for n, e in zip(lengths, ends, strict=True)]
    max_len = max(clipped)
    x = np.zeros((len(runs), max_len, 1 + 2 * N_CHANNELS), dtype=np.float32)
    for b, (r, e, n) in enumerate(zip(runs, ends, clipped, strict=True)):
        for j in range(n):
            gi = e - j if direction == "backward" else e - n + 1 + j
            assert 0 <= gi <= e
            x[b, j, 0] = gi / (g - 1)
            for c in range(N_CHANNELS):
                m = mask[r, gi, c]
                x[b, j, 1 + c] = vals[r, gi, c] if m else 0.0
                x[b, j, 1 + N_CHANNELS + c] = 1.0 if m else 0.0
    return x, clipped


@pytest.mark.parametrize("direction", ["backward", "forward"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_context_batch_matches_naive_loop(direction: str, seed: int) -> None:
    g, n_runs, batch = 17, 5, 12
    data = _random_tensors(n_runs, g, seed)
    rng = np.random.default_rng(seed)
    runs = rng.integers(0, n_runs, size=batch).tolist()
    ends = rng.integers(0, g, size=batch).tolist()
    lengths = rng.integers(1, g + 3, size=batch).tolist()
    ends[0], lengths[0] = 0, 5  # clipped to a single point
    ends[1], lengths[1] = g - 1, g + 2  # clipped to the whole grid
    x, out_len = context_batch(
        data,
        torch.tensor(runs),
        torch.tensor(ends),
        torch.tensor(lengths),
        direction,  # type: ignore[arg-type]
    )
    expected, clipped = _naive_context(data, runs, ends, lengths, direction)
    assert out_len.tolist() == clipped
    assert out_len[0] == 1 and out_len[1] == g
    assert tuple(x.shape) == expected.shape
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)
    # Padding rows are all zero.
    for b, n in enumerate(clipped):
        assert (x[b, n:] == 0).all()


def test_context_batch_row_order_by_direction() -> None:
    g = 12
    values = torch.arange(g, dtype=torch.float32)[None, :, None].expand(1, g, N_CHANNELS).clone()
    data = SweepTensors(values=values, mask=torch.ones(1, g, N_CHANNELS, dtype=torch.bool))
    args = (data, torch.tensor([0]), torch.tensor([7]), torch.tensor([4]))
    back, _ = context_batch(*args, "backward")
    fwd, _ = context_batch(*args, "forward")
    assert back[0, :, 1].tolist() == [7, 6, 5, 4]
    assert fwd[0, :, 1].tolist() == [4, 5, 6, 7]
    np.testing.assert_allclose(back[0, :, 0].numpy(), np.array([7, 6, 5, 4]) / (g - 1))
    assert (back[0, :, 1 + N_CHANNELS :] == 1).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_target_batch_matches_naive_loop(seed: int) -> None:
    g, n_runs, batch, horizon = 15, 4, 10, 6
    data = _random_tensors(n_runs, g, seed)
    rng = np.random.default_rng(100 + seed)
    runs = rng.integers(0, n_runs, size=batch).tolist()
    ends = rng.integers(0, g, size=batch).tolist()
    ends[0] = g - 1  # only the first target is inside the grid
    ends[1] = g - 3
    y, m = target_batch(data, torch.tensor(runs), torch.tensor(ends), horizon)
    assert tuple(y.shape) == tuple(m.shape) == (batch, horizon, N_CHANNELS)
    assert m.dtype == torch.bool
    vals, mask = data.values.numpy(), data.mask.numpy()
    for b, (r, e) in enumerate(zip(runs, ends, strict=True)):
        for h in range(horizon):
            gi = e + h
            if gi < g:
                np.testing.assert_array_equal(m[b, h].numpy(), mask[r, gi])
                np.testing.assert_array_equal(y[b, h].numpy(), vals[r, gi])
            else:
                assert not m[b, h].any(), (b, h)
    assert not m[0, 1:].any()
    assert not m[1, 3:].any()


def test_batches_on_a_real_grid() -> None:
    runs = clean_runs()
    transforms = choose_transforms(runs, "max")
    grid = to_grid(runs, 20, transforms)
    data = SweepTensors.from_grid(grid, fit_normalisation(grid, transforms))
    run_idx = torch.tensor([0, 1, 3])
    end_idx = torch.tensor([19, 19, 10])
    x, lengths = context_batch(data, run_idx, end_idx, torch.tensor([5, 5, 30]))
    expected, clipped = _naive_context(data, [0, 1, 3], [19, 19, 10], [5, 5, 30], "backward")
    assert lengths.tolist() == clipped == [5, 5, 11]
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    # Run 1 stops at 2/3 of its budget: the newest rows of its window are unobserved.
    assert (x[1, :, 1 + N_CHANNELS :] == 0).all()
    y, m = target_batch(data, run_idx, end_idx, 4)
    assert m[0, 0].all() and not m[0, 1:].any()
    assert not m[1].any()
    assert m[2].all()
    assert torch.equal(y[2], data.values[3, 10:14])

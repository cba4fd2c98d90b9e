"""From validated runs to tensors on the progress grid.

Every run is resampled onto ``tau = step / total_steps`` in [0, 1] at
``grid_points`` evenly spaced points. Channels, in this order:

==========  =========================================================
index       channel
==========  =========================================================
0           ``train_loss`` (log10 where every loss of the sweep is > 0)
1           ``log_lr`` (log10 of the learning rate)
2           ``val_metric`` (as logged; log10 for a positive minimised metric)
==========  =========================================================

each standardised with the sweep's statistics (:class:`Normalisation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator

from tracker_sched.data.validation import CleanRun
from tracker_sched.errors import FitError, InputError
from tracker_sched.schema import ROLES, Direction, Role
from tracker_sched.schema import EncoderDirection as EncoderDirection  # re-exported

# The grid's channels: the roles of schema.ROLES in that one order, the lr as log10 lr.
CHANNEL_ROLES: tuple[Role, ...] = ROLES
CHANNELS: tuple[str, str, str] = ("train_loss", "log_lr", "val_metric")
TRAIN_LOSS, LOG_LR, VAL_METRIC = 0, 1, 2
N_CHANNELS = 3
assert tuple("log_lr" if r == "lr" else r for r in CHANNEL_ROLES) == CHANNELS

# One encoder input row (context_batch): tau, the channels' values, the channels' masks.
TAU = 0
VALUES = slice(1, 1 + N_CHANNELS)
MASKS = slice(1 + N_CHANNELS, 1 + 2 * N_CHANNELS)
INPUT_DIM = 1 + 2 * N_CHANNELS

Transform = Literal["log10", "identity"]
MIN_STD = 1e-10  # a smaller std (a fit uses 1.0 below 1e-8) turns every value into inf


def resample(
    steps: np.ndarray, values: np.ndarray, total_steps: int, grid_points: int,
    hold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample one series onto the progress grid.

    Each grid point averages the observations in its cell (width ``1/(G-1)``,
    centred on the point), so noisy per-batch losses are smoothed rather than
    aliased; empty cells between the first and last observed cell are linearly
    interpolated. After the last observed cell, grid points up to ``hold`` steps
    past the last observation (the series' logging interval) keep the last
    observed cell's value: a run logged every 3 steps with a budget of 152 ends
    at step 150, and its grid still reaches the end. Everything else outside the
    observed range is masked, never extrapolated.

    Returns ``(values (G,), mask (G,))``; masked values are NaN.
    """
    g = grid_points
    out = np.full(g, np.nan)
    mask = np.zeros(g, dtype=bool)
    if steps.size == 0:
        return out, mask
    tau = np.clip(steps / float(total_steps), 0.0, 1.0)
    cell = np.rint(tau * (g - 1)).astype(np.int64)
    counts = np.bincount(cell, minlength=g)
    sums = np.bincount(cell, weights=values, minlength=g)
    filled = counts > 0
    centres = np.nonzero(filled)[0]
    means = sums[filled] / counts[filled]
    lo, hi = int(centres[0]), int(centres[-1])
    inside = np.arange(lo, hi + 1)
    out[lo : hi + 1] = np.interp(inside, centres, means)
    mask[lo : hi + 1] = True
    if hold > 0:
        reach = min(1.0, (float(steps[-1]) + hold) / float(total_steps))
        end = min(g - 1, int(np.floor(reach * (g - 1) + 1e-9)))
        if end > hi:
            out[hi + 1 : end + 1] = out[hi]
            mask[hi + 1 : end + 1] = True
    return out, mask


class Normalisation(BaseModel):
    """Per-channel transform and standardisation, fitted on the sweep."""

    model_config = ConfigDict(frozen=True)

    channels: tuple[str, str, str] = CHANNELS
    transforms: tuple[Transform, Transform, Transform]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @model_validator(mode="after")
    def _usable(self) -> Normalisation:
        # A bundle with these would load, then fail or mislead at the first plan.
        if not all(np.isfinite(self.mean)):
            raise ValueError(f"normalisation mean must be finite, got {self.mean}")
        if not all(np.isfinite(s) and s >= MIN_STD for s in self.std):
            raise ValueError(f"normalisation std must be finite and at least {MIN_STD:g}, got "
                             f"{self.std}")
        return self

    def transform(self, channel: int, raw: np.ndarray) -> np.ndarray:
        if self.transforms[channel] == "log10":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.asarray(np.log10(raw), dtype=np.float64)
        return np.asarray(raw, dtype=np.float64)

    def untransform(self, channel: int, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.power(10.0, x) if self.transforms[channel] == "log10" else x)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Transformed values ``(..., 3)`` -> standardised."""
        return np.asarray((x - np.asarray(self.mean)) / np.asarray(self.std))

    def denormalise(self, z: np.ndarray) -> np.ndarray:
        """Standardised ``(..., 3)`` -> transformed units (log10 loss, log10 lr, metric)."""
        return np.asarray(z * np.asarray(self.std) + np.asarray(self.mean))


def choose_transforms(runs: Sequence[CleanRun], direction: Direction) -> tuple[
    Transform, Transform, Transform
]:
    loss_positive = all(bool((r.series["train_loss"].value > 0).all()) for r in runs)
    val_positive = all(bool((r.series["val_metric"].value > 0).all()) for r in runs)
    loss_t: Transform = "log10" if loss_positive else "identity"
    val_t: Transform = "log10" if direction == "min" and val_positive else "identity"
    return loss_t, "log10", val_t


@dataclass(frozen=True)
class GridSweep:
    """A sweep on the progress grid, in transformed (not standardised) units."""

    run_ids: list[str]
    values: np.ndarray  # (runs, G, 3), NaN where masked
    mask: np.ndarray  # (runs, G, 3) bool
    diverged: np.ndarray  # (runs,) bool
    tau: np.ndarray  # (G,)
    reached_end: np.ndarray | None = None  # (runs,) bool: CleanRun.complete

    @property
    def grid_points(self) -> int:
        return int(self.tau.size)

    def complete(self) -> np.ndarray:
        """Runs that reached the end of their budget (validation's rule) and did not diverge;
        for a grid built by hand, those whose validation metric reaches the last point."""
        ends = self.mask[:, -1, VAL_METRIC] if self.reached_end is None else self.reached_end
        return np.asarray(ends & ~self.diverged)

    def subset(self, idx: Sequence[int] | np.ndarray) -> GridSweep:
        ix = np.asarray(idx, dtype=np.int64)
        return GridSweep(
            run_ids=[self.run_ids[i] for i in ix],
            values=self.values[ix],
            mask=self.mask[ix],
            diverged=self.diverged[ix],
            tau=self.tau,
            reached_end=None if self.reached_end is None else self.reached_end[ix],
        )


def to_grid(
    runs: Sequence[CleanRun],
    grid_points: int,
    transforms: tuple[Transform, Transform, Transform],
) -> GridSweep:
    if grid_points < 10:
        raise InputError(f"grid_points must be >= 10, got {grid_points}")
    r = len(runs)
    values = np.full((r, grid_points, N_CHANNELS), np.nan)
    mask = np.zeros((r, grid_points, N_CHANNELS), dtype=bool)
    for i, run in enumerate(runs):
        for c, role in enumerate(CHANNEL_ROLES):
            s = run.series[role]
            x = s.value if transforms[c] == "identity" else np.log10(s.value)
            values[i, :, c], mask[i, :, c] = resample(
                s.step, x, run.total_steps, grid_points, hold=s.interval)
    return GridSweep(
        run_ids=[run.run_id for run in runs],
        values=values,
        mask=mask,
        diverged=np.array([run.diverged for run in runs], dtype=bool),
        tau=np.linspace(0.0, 1.0, grid_points),
        reached_end=np.array([run.complete for run in runs], dtype=bool),
    )


def fit_normalisation(
    grid: GridSweep, transforms: tuple[Transform, Transform, Transform]
) -> Normalisation:
    mean, std = [], []
    for c in range(N_CHANNELS):
        obs = grid.values[..., c][grid.mask[..., c]]
        with np.errstate(over="ignore", invalid="ignore"):
            m = float(obs.mean())
            sd = float(obs.std())
        if not (np.isfinite(m) and np.isfinite(sd)):
            # Found before training: a bundle with these statistics could never load.
            worst = int(np.nanargmax(np.where(grid.mask[..., c], np.abs(grid.values[..., c]),
                                              -np.inf).max(axis=1)))
            raise FitError(f"the {CHANNELS[c]} values overflow their standardisation (run "
                           f"{grid.run_ids[worst]} reaches "
                           f"{np.nanmax(np.abs(grid.values[worst, :, c])):.3g}); fix or "
                           "exclude that run")
        mean.append(m)
        std.append(sd if sd > 1e-8 else 1.0)  # a constant channel stays constant, not NaN
    return Normalisation(
        transforms=transforms,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
    )


@dataclass(frozen=True)
class SweepTensors:
    """A standardised sweep as tensors; masked entries are 0."""

    values: torch.Tensor  # (runs, G, 3) float32
    mask: torch.Tensor  # (runs, G, 3) bool

    @staticmethod
    def from_grid(grid: GridSweep, norm: Normalisation) -> SweepTensors:
        z = norm.normalise(np.nan_to_num(grid.values, nan=0.0))
        z = np.where(grid.mask, z, 0.0)
        return SweepTensors(
            values=torch.as_tensor(z, dtype=torch.float32),
            mask=torch.as_tensor(grid.mask),
        )

    @property
    def grid_points(self) -> int:
        return int(self.values.shape[1])




def context_batch(
    data: SweepTensors,
    run_idx: torch.Tensor,
    end_idx: torch.Tensor,
    length: torch.Tensor,
    direction: EncoderDirection = "backward",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder inputs for windows ``[end - length + 1, end]`` of the given runs.

    Returns ``(x, lengths)``: ``x`` is ``(batch, max_len, INPUT_DIM)`` holding
    tau, the masked channel values and the channel masks (:data:`TAU`, :data:`VALUES`,
    :data:`MASKS`), ordered from the
    newest point back (``"backward"``) or from the oldest point on
    (``"forward"``); rows are left-aligned and padded with zeros.
    """
    g = data.grid_points
    length = torch.minimum(length, end_idx + 1)
    max_len = int(length.max())
    offs = torch.arange(max_len)
    valid = offs[None, :] < length[:, None]
    if direction == "backward":
        idx = end_idx[:, None] - offs[None, :]
    else:
        idx = (end_idx - length + 1)[:, None] + offs[None, :]
    idx = torch.where(valid, idx, torch.zeros_like(idx)).clamp(0, g - 1)
    vals = data.values[run_idx[:, None], idx]
    m = data.mask[run_idx[:, None], idx] & valid[..., None]
    tau = idx.to(torch.float32) / (g - 1)
    x = torch.cat([tau[..., None], vals * m, m.to(torch.float32)], dim=-1)
    x = x * valid[..., None]
    return x, length


def target_batch(
    data: SweepTensors, run_idx: torch.Tensor, end_idx: torch.Tensor, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets at grid points ``end, end + 1, ..., end + horizon - 1``.

    Returns ``(y, mask)``, both ``(batch, horizon, 3)``; points past the end of
    the grid or not observed are masked.
    """
    g = data.grid_points
    idx = end_idx[:, None] + torch.arange(horizon)[None, :]
    inside = idx < g
    idx = idx.clamp(max=g - 1)
    y = data.values[run_idx[:, None], idx]
    m = data.mask[run_idx[:, None], idx] & inside[..., None]
    return y, m

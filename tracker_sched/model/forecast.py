"""Batched forecasts from an ensemble of fitted latent ODEs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tracker_sched.data.grid import SweepTensors, context_batch
from tracker_sched.model.latent import LatentODE
from tracker_sched.schema import EncoderDirection


class Forecaster:
    """Averages the members' standardised forecasts. Every call is one batched solve per member.

    >>> # fc = Forecaster(models); pred = fc.forecast(data, runs, ends, lengths)
    """

    def __init__(self, models: Sequence[LatentODE]) -> None:
        if not models:
            raise ValueError("a Forecaster needs at least one model")
        self.models = list(models)
        for m in self.models:
            m.eval()

    @property
    def direction(self) -> EncoderDirection:
        return self.models[0].config.encoder_direction

    @torch.no_grad()
    def forecast(
        self,
        data: SweepTensors,
        run_idx: torch.Tensor,
        end_idx: torch.Tensor,
        length: torch.Tensor,
        *,
        members: bool = False,
    ) -> torch.Tensor:
        """Forecast every window from its end to the end of the grid.

        Returns ``(batch, K, 3)`` standardised, ``K = G - min(end_idx)``: entry
        ``k`` of row ``i`` is grid point ``end_idx[i] + k`` (rows with a later
        end run past the grid; callers mask those). With ``members=True`` the
        result is ``(members, batch, K, 3)``.
        """
        g = data.grid_points
        horizon = g - int(end_idx.min())
        offsets = torch.arange(horizon, dtype=torch.float32) / (g - 1)
        x, lengths = context_batch(data, run_idx, end_idx, length, self.direction)
        preds = torch.stack([m(x, lengths, offsets)[0] for m in self.models])
        return preds if members else preds.mean(dim=0)

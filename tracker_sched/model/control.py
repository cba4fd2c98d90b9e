"""The control ODE: the latent ODE with the learning rate as an input of the dynamics.

The generative model decodes the lr as an output, so a planner built on it
can only pick among futures that resemble the sweep. Here the lr drives the
dynamics::

    encoder (GRU over the context window: tau, train loss, log lr, val metric, masks)
        -> z -> MLP lift -> h(now)
        -> dh/dtau = s * tanh(MLP([h, u(tau)])), u the standardised log10 lr
        -> linear decoder h -> (train loss, val metric)   (not the lr: it is known)

``u`` is known on the progress grid; the solver needs it at arbitrary tau, so
it is interpolated piecewise-linearly between grid values, batched over runs.
:class:`ControlEnsemble` runs every member of a bundle as one batched model.
The fit is in :mod:`tracker_sched.fit.control`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from tracker_sched.data.grid import (
    LOG_LR,
    TRAIN_LOSS,
    VAL_METRIC,
    EncoderDirection,
    Normalisation,
)
from tracker_sched.errors import InputError
from tracker_sched.model.latent import (
    FieldMLP,
    LatentODE,
    ModelConfig,
    StackedMLP,
    last_observation,
)
from tracker_sched.model.solver import solve

KIND: Literal["control_ode"] = "control_ode"
OUTPUTS = (TRAIN_LOSS, VAL_METRIC)  # decoded channels, in dataset channel indices
_OUT_VAL = 1  # index of the val metric among the decoded outputs


def interp_input(u: torch.Tensor, t: torch.Tensor, dt: float) -> torch.Tensor:
    """``u (..., K)`` known at offsets ``0, dt, 2 dt, ...`` -> its value at offset ``t``.

    Piecewise-linear, clamped at both ends; ``t`` is the solver's scalar time,
    so one index serves the whole batch.
    """
    k = u.shape[-1]
    pos = (t / dt).clamp(0.0, float(k - 1))
    i0 = int(torch.floor(pos).clamp(max=max(k - 2, 0)))
    if k == 1:
        return u[..., 0]
    w = pos - i0
    return u[..., i0] * (1 - w) + u[..., i0 + 1] * w


class ControlField(nn.Module):
    """dh/dtau = s * tanh(MLP([h, u])): the lr enters every step of the dynamics."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = FieldMLP(dim + 1, hidden, dim)
        self.log_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_scale) * torch.tanh(self.net(torch.cat([h, u[..., None]], -1)))


class ControlODE(LatentODE):
    """The latent ODE with the lr as input; reuses the encoder and lift of :class:`LatentODE`."""

    def _build(self, config: ModelConfig) -> None:
        super()._build(config)
        self.field = ControlField(config.ode_dim, config.hidden)  # type: ignore[assignment]
        self.decoder = nn.Linear(config.ode_dim, len(OUTPUTS))
        self.log_anchor_tau = nn.Parameter(torch.full((len(OUTPUTS),), math.log(0.3)))

    def solve_input(
        self, h0: torch.Tensor, u: torch.Tensor, offsets: torch.Tensor, dt: float
    ) -> torch.Tensor:
        """Integrate ``h0 (B, D)`` driven by ``u (B, K)`` -> ``(B, K, D)`` at ``offsets (K,)``."""
        field = self.field
        assert isinstance(field, ControlField)

        def f(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = field(h, interp_input(u, t, dt))
            return out

        hs = solve(f, h0, offsets, self.config, dt)
        return hs.transpose(0, 1)

    def forward_input(
        self, x: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor, u: torch.Tensor,
        dt: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast ``(B, K, 2)`` (train loss, val metric), anchored at the context's end."""
        h = self.solve_input(self.initial_state(self.encode(x, lengths)), u, offsets, dt)
        pred = self.decode(h)
        if self.config.anchor:
            value, observed = last_observation(x, lengths, self.config.encoder_direction)
            idx = list(OUTPUTS)
            shift = torch.where(observed[:, idx], value[:, idx] - pred[:, 0],
                                torch.zeros_like(pred[:, 0]))
            decay = torch.exp(-offsets[:, None] / torch.exp(self.log_anchor_tau))
            pred = pred + shift[:, None, :] * decay[None]
        return pred, h


class ControlEnsemble:
    """Every member of a control bundle as one batched model: encode, solve, read the end.

    The members' fields are stacked into batched matrix products, so that one
    solve serves every member and every candidate schedule.
    """

    def __init__(self, models: Sequence[LatentODE], norm: Normalisation, grid_points: int) -> None:
        ms = [m for m in models if isinstance(m, ControlODE)]
        if not ms or len(ms) != len(models):
            raise InputError("the control planner needs a control-mode bundle "
                             f"(kind {KIND!r}); this bundle holds generative models")
        self.models = ms
        self.norm = norm
        self.grid_points = grid_points
        self.dt = 1.0 / (grid_points - 1)
        fields = [m.field for m in ms if isinstance(m.field, ControlField)]
        self.mlp = StackedMLP([f.net for f in fields])
        self.scale = torch.stack(
            [torch.exp(f.log_scale.detach()) for f in fields]
        )[:, None, None]
        self.dec_w = torch.stack([m.decoder.weight.detach().T for m in ms])
        self.dec_b = torch.stack([m.decoder.bias.detach() for m in ms])[:, None, :]
        self.anchor_tau = torch.stack([torch.exp(m.log_anchor_tau.detach()) for m in ms])

    @property
    def direction(self) -> EncoderDirection:
        return self.models[0].config.encoder_direction

    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Context windows ``(B, T, 7)`` -> initial states ``(M, B, D)``."""
        return torch.stack([m.initial_state(m.encode(x, lengths)) for m in self.models])

    @torch.no_grad()
    def final(
        self, h0: torch.Tensor, u: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Predicted val metric at the end of ``u``'s grid, transformed units: ``(M, B)``.

        ``h0 (M, B, D)``; ``u (B, K)`` standardised log lr from now to the end of
        the budget; ``x, lengths`` the contexts (for the anchor shift), batch 1
        or B.
        """
        k = int(u.shape[-1])

        def f(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            ut = interp_input(u, t, self.dt)[None, :, None].expand(h.shape[0], -1, 1)
            return self.scale * torch.tanh(self.mlp(torch.cat([h, ut], -1)))

        cfg = self.models[0].config
        t_end = (k - 1) * self.dt
        offsets = torch.tensor([0.0, t_end]) if k > 1 else torch.tensor([0.0])
        if k > 1:
            hs = solve(f, h0, offsets, cfg, self.dt)
            h_end = hs[-1]
        else:
            h_end = h0
        dec0 = torch.baddbmm(self.dec_b, h0, self.dec_w)  # (M, B, 2)
        dec1 = torch.baddbmm(self.dec_b, h_end, self.dec_w)
        out = dec1[..., _OUT_VAL]
        if cfg.anchor:
            value, observed = last_observation(x, lengths, cfg.encoder_direction)
            obs_val = value[:, VAL_METRIC]
            shift = torch.where(observed[:, VAL_METRIC], obs_val[None] - dec0[..., _OUT_VAL],
                                torch.zeros_like(out))
            decay = torch.exp(-t_end / self.anchor_tau[:, _OUT_VAL])[:, None]
            out = out + shift * decay
        std, mean = self.norm.std[VAL_METRIC], self.norm.mean[VAL_METRIC]
        return out * std + mean

    def to_u(self, log_lr: torch.Tensor) -> torch.Tensor:
        """log10 lr -> the standardised input."""
        return (log_lr - self.norm.mean[LOG_LR]) / self.norm.std[LOG_LR]

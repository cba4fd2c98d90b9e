"""The generative planner's fused inference kernels: every member and candidate at once.

:class:`PlanField` is :class:`~tracker_sched.model.latent.StackedField` with cheaper
kernels, :class:`PlanEncoder` every member's GRU as one batched recurrence, and
:func:`rk4_nodes` torchdiffeq's rk4 as a plain loop of fused updates. Each agrees
with the model's own code within float32 rounding (``tests/planning/test_planner.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tracker_sched.model.latent import LatentODE, StackedMLP, VectorField


@dataclass(frozen=True)
class Stacked:
    field: PlanField
    encoder: PlanEncoder
    dec_w: torch.Tensor  # (M, D, 3)
    dec_b: torch.Tensor  # (M, 1, 3)
    anchor_tau: torch.Tensor  # (M, 3)


class PlanField:
    """:class:`StackedField` for planning: the same function, fewer and cheaper kernels.

    ``s * tanh(u)`` is computed as ``2s * sigmoid(2u) - s`` (a single-thread tanh
    kernel costs 6x a sigmoid here), with the factor 2 folded into the last
    layer's weights, an exact scaling; the two forms agree to float32 rounding.
    """

    def __init__(self, fields: Sequence[VectorField]) -> None:
        self.mlp = StackedMLP([f.net for f in fields], last_factor=2.0)
        self.scale = torch.stack([torch.exp(f.log_scale.detach()) for f in fields])[:, None, None]
        self.scale2 = 2 * self.scale

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        u = torch.sigmoid(self.mlp(h))
        return u.mul_(self.scale2).sub_(self.scale)


class PlanEncoder:
    """Every member's GRU encoder and latent head as one batched recurrence.

    ``LatentODE.encode`` runs one GRU per member over packed sequences; the
    planner's windows all have the same length, so the members' GRUs (same
    sizes, gates r, z, n as in :class:`torch.nn.GRU`) step together through
    batched products: one loop over the window instead of one per member.
    """

    def __init__(self, models: list[LatentODE]) -> None:
        grus = [mod.encoder for mod in models]
        assert all(g.num_layers == 1 and not g.bidirectional and g.batch_first for g in grus)

        def stacked(name: str) -> torch.Tensor:
            return torch.stack([g.get_parameter(name).detach() for g in grus])

        self.w_ih = stacked("weight_ih_l0").transpose(1, 2).contiguous()  # (M, in, 3H)
        self.b_ih = stacked("bias_ih_l0")[:, None, :]
        self.w_hh = stacked("weight_hh_l0").transpose(1, 2).contiguous()  # (M, H, 3H)
        self.b_hh = stacked("bias_hh_l0")[:, None, :]
        self.w_out = torch.stack([mod.to_latent.weight.T for mod in models]).detach()
        self.b_out = torch.stack([mod.to_latent.bias for mod in models]).detach()[:, None, :]
        self.hidden = grus[0].hidden_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, time, 7)``, every row of full length -> ``z (M, batch, latent)``."""
        m, (b, t, c), hid = self.w_ih.shape[0], x.shape, self.hidden
        gi = torch.baddbmm(self.b_ih, x.reshape(1, b * t, c).expand(m, -1, -1), self.w_ih)
        gi = gi.reshape(m, b, t, 3 * hid)
        h = x.new_zeros(m, b, hid)
        for i in range(t):
            gh = torch.baddbmm(self.b_hh, h, self.w_hh)
            g = gi[:, :, i]
            rz = torch.sigmoid(g[..., : 2 * hid] + gh[..., : 2 * hid])
            r, z = rz[..., :hid], rz[..., hid:]
            n = torch.tanh(torch.addcmul(g[..., 2 * hid :], r, gh[..., 2 * hid :]))
            h = torch.lerp(n, h, z)  # (1 - z) n + z h
        return torch.baddbmm(self.b_out, h, self.w_out)


def step_grid(offsets: torch.Tensor, step_points: int) -> torch.Tensor:
    """torchdiffeq's fixed-step grid: ``start + i * step``, the last point moved onto the end."""
    step = (offsets[1] - offsets[0]) * step_points
    n = int(torch.ceil((offsets[-1] - offsets[0]) / step + 1).item())
    grid = torch.arange(0, n, dtype=offsets.dtype) * step + offsets[0]
    grid[-1] = offsets[-1]
    return grid


def rk4_nodes(
    field: Callable[[torch.Tensor], torch.Tensor], h0: torch.Tensor, grid: torch.Tensor
) -> torch.Tensor:
    """torchdiffeq's rk4 (the 3/8 rule) from ``h0 (M, N, D)`` over ``grid (S + 1,)``:
    the state at every grid point, ``(M, N, S + 1, D)``. A plain loop of fused updates
    instead of torchdiffeq's per-step machinery; equal to it within float32 rounding."""
    ys = [h0]
    y = h0
    for dt in (grid[1:] - grid[:-1]).tolist():
        k1 = field(y)
        k2 = field(torch.add(y, k1, alpha=dt / 3))
        k3 = field(torch.add(y, torch.add(k2, k1, alpha=-1 / 3), alpha=dt))
        k4 = field(torch.add(y, (k1 - k2).add_(k3), alpha=dt))
        y = torch.add(y, torch.add(k2, k3).mul_(3).add_(k1).add_(k4), alpha=dt * 0.125)
        ys.append(y)
    return torch.stack(ys, dim=2)

"""The path-minimised latent ODE (Sampson & Melchior, arXiv 2509.23052).

encoder (GRU over a context window of (tau, channels, masks))
    -> deterministic latent z -> MLP lift -> ODE state h(now)
    -> dh/dtau = s * f(h), f an MLP with a tanh-bounded output, s a learned scalar
    -> linear decoder h(tau) -> channels.

The field is autonomous, so a forecast from any "now" is a solve over the
offset ``tau - tau_now``: windows that end at different points of training are
decoded in one batched solve on a shared offset grid.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torchdiffeq import odeint

from tracker_sched.data.grid import N_CHANNELS, EncoderDirection
from tracker_sched.errors import InputError
from tracker_sched.limits import MAX_WIDTH

Solver = Literal["rk4", "dopri5", "euler", "midpoint"]
_SOLVERS: tuple[str, ...] = ("rk4", "dopri5", "euler", "midpoint")


class ModelConfig(BaseModel):
    """Sizes and solver of the latent ODE. Defaults suit a ~50-run sweep on a CPU."""

    # Sizes are bounded (tracker_sched.limits): a bundle edited to hidden=1e6 would otherwise
    # allocate terabytes before its weights are even read.
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    latent_dim: int = Field(default=16, ge=1, le=MAX_WIDTH)
    ode_dim: int = Field(default=32, ge=1, le=MAX_WIDTH)
    hidden: int = Field(default=64, ge=4, le=MAX_WIDTH)
    encoder_hidden: int = Field(default=64, ge=4, le=MAX_WIDTH)
    encoder_direction: EncoderDirection = "forward"
    solver: Solver = "rk4"
    step_points: int = Field(
        default=2, ge=1, le=1000, description="fixed-step solvers: grid intervals per solver step"
    )
    anchor: bool = Field(
        default=True,
        description="forecast the change from the context's last observation, not the level",
    )
    rtol: float = Field(default=1e-4, gt=0)
    atol: float = Field(default=1e-5, gt=0)


def solver_options(
    cfg: ModelConfig, offsets: torch.Tensor, interp: Literal["cubic", "linear"]
) -> dict[str, object] | None:
    """torchdiffeq options: fixed solvers step ``step_points`` grid intervals at a time and
    interpolate the grid points in between."""
    if cfg.solver in ("rk4", "euler", "midpoint") and cfg.step_points > 1 and offsets.numel() > 1:
        return {"step_size": float(offsets[1] - offsets[0]) * cfg.step_points, "interp": interp}
    return None


class VectorField(nn.Module):
    """dh/dtau = s * tanh(MLP(h)): bounded speed, learned overall time scale."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, dim),
        )
        self.log_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_scale) * torch.tanh(self.net(h))


class LatentODE(nn.Module):
    def __init__(self, config: ModelConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if config.solver not in _SOLVERS:
            raise InputError(f"unknown solver {config.solver!r}; choose one of {_SOLVERS}")
        self.config = config
        # torch's default initialisers draw from the global RNG: keep the caller's stream intact.
        with torch.random.fork_rng(devices=[]):
            self._build(config)
        if generator is not None:
            self._init_from(generator)

    def _build(self, config: ModelConfig) -> None:
        in_dim = 1 + 2 * N_CHANNELS
        self.encoder = nn.GRU(in_dim, config.encoder_hidden, batch_first=True)
        self.to_latent = nn.Linear(config.encoder_hidden, config.latent_dim)
        self.lift = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, config.ode_dim),
        )
        self.field = VectorField(config.ode_dim, config.hidden)
        self.decoder = nn.Linear(config.ode_dim, N_CHANNELS)
        # How long (in tau) the anchor shift lasts, per channel; learned.
        self.log_anchor_tau = nn.Parameter(torch.full((N_CHANNELS,), math.log(0.3)))

    def _init_from(self, generator: torch.Generator) -> None:
        """Re-draw every weight from ``generator`` (no global RNG touched)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(("log_scale", "log_anchor_tau")):
                    continue
                if p.dim() >= 2:
                    bound = (6.0 / (p.shape[0] + p.shape[1])) ** 0.5
                    p.uniform_(-bound, bound, generator=generator)
                else:
                    p.zero_()

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x (batch, time, 7)``, ``lengths (batch,)`` -> latent ``z (batch, latent_dim)``."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h_n = self.encoder(packed)
        out: torch.Tensor = self.to_latent(h_n[-1])
        return out

    def initial_state(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lift(z)
        return out

    def solve(self, h0: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Integrate ``h0 (batch, ode_dim)`` over ``offsets (K,)`` -> ``(batch, K, ode_dim)``."""
        cfg = self.config
        hs: torch.Tensor = odeint(
            self.field, h0, offsets, method=cfg.solver, rtol=cfg.rtol, atol=cfg.atol,
            options=solver_options(cfg, offsets, "cubic"),
        )
        return hs.transpose(0, 1)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(h)
        return out

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast from context windows.

        Returns ``(pred (batch, K, 3), h (batch, K, ode_dim))`` where ``pred[:, k]``
        is the standardised state at ``tau_now + offsets[k]``.
        """
        h0 = self.initial_state(self.encode(x, lengths))
        h = self.solve(h0, offsets)
        pred = self.decode(h)
        if self.config.anchor:
            decay = torch.exp(-offsets[:, None] / torch.exp(self.log_anchor_tau))  # (K, 3)
            pred = anchor_at_context(pred, x, lengths, self.config.encoder_direction, decay)
        return pred, h


class StackedField(nn.Module):
    """The vector fields of several members as one module over ``h (members, batch, dim)``.

    Solving all members in one call replaces a Python loop of solves by batched
    matrix products: what makes a replan take milliseconds.
    """

    def __init__(self, fields: list[VectorField]) -> None:
        super().__init__()
        layers: list[list[nn.Linear]] = []
        for i in (0, 2, 4):
            layer = [f.net[i] for f in fields]
            assert all(isinstance(lin, nn.Linear) for lin in layer)
            layers.append(layer)  # type: ignore[arg-type]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([lin.weight.detach().T for lin in layer]))
             for layer in layers]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([lin.bias.detach() for lin in layer])[:, None, :])
             for layer in layers]
        )
        self.scale = nn.Parameter(
            torch.stack([torch.exp(f.log_scale.detach()) for f in fields])[:, None, None]
        )

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        w, b = self.weights, self.biases
        x = nn.functional.silu(torch.baddbmm(b[0], h, w[0]))
        x = nn.functional.silu(torch.baddbmm(b[1], x, w[1]))
        return self.scale * torch.tanh(torch.baddbmm(b[2], x, w[2]))


def solve_stacked(
    models: list[LatentODE],
    h0: torch.Tensor,
    offsets: torch.Tensor,
    *,
    interp: Literal["cubic", "linear"] = "cubic",
) -> torch.Tensor:
    """Solve ``h0 (members, batch, dim)`` with each member's field in one call.

    Returns ``(members, batch, K, dim)``. Uses the first member's solver settings.
    ``interp="linear"`` joins fixed solver steps by straight lines, which saves the
    two extra field evaluations a cubic interpolation needs per in-between point;
    solver step points (and so the end of the budget) are exact either way.
    """
    cfg = models[0].config
    hs: torch.Tensor = odeint(
        StackedField([m.field for m in models]), h0, offsets, method=cfg.solver,
        rtol=cfg.rtol, atol=cfg.atol, options=solver_options(cfg, offsets, interp),
    )
    return hs.permute(1, 2, 0, 3)


def last_observation(
    x: torch.Tensor, lengths: torch.Tensor, direction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The newest point of each context window: ``(values (batch, 3), observed (batch, 3))``."""
    row = (lengths - 1) if direction == "forward" else torch.zeros_like(lengths)
    last = x[torch.arange(x.shape[0]), row]
    return last[:, 1 : 1 + N_CHANNELS], last[:, 1 + N_CHANNELS :] > 0.5


def anchor_at_context(
    pred: torch.Tensor,
    x: torch.Tensor,
    lengths: torch.Tensor,
    direction: str,
    decay: torch.Tensor | None = None,
) -> torch.Tensor:
    """Shift each forecast so that it starts at the context's last observation.

    The shift fades with ``decay (K, 3)`` (1 = keep it all): near the present
    the forecast follows the observed level, far ahead the model's own level.
    Channels not observed at the newest context point keep the decoded level.
    """
    value, observed = last_observation(x, lengths, direction)
    shift = torch.where(observed, value - pred[:, 0], torch.zeros_like(value))
    weight = decay[None] if decay is not None else 1.0
    return pred + shift[:, None, :] * weight


def path_length_penalty(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean latent path length over the batch, in units of the batch's latent spread.

    ``h (batch, K, dim)``; ``valid (batch, K)`` marks offsets inside each run's
    budget. Dividing by the spread of the initial states keeps the penalty from
    being dodged by shrinking the latent space.
    """
    step = (h[:, 1:] - h[:, :-1]).norm(dim=-1) * (valid[:, 1:] & valid[:, :-1])
    length = step.sum(dim=1)
    spread = h[:, 0].std(dim=0).mean().clamp_min(1e-6) if h.shape[0] > 1 else h.new_tensor(1.0)
    out: torch.Tensor = (length / spread).mean()
    return out

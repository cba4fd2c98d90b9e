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
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from tracker_sched.data.grid import INPUT_DIM, MASKS, N_CHANNELS, VALUES
from tracker_sched.errors import InputError
from tracker_sched.model.config import (  # re-exported: their 0.1 home
    _SOLVERS as _SOLVERS,
)
from tracker_sched.model.config import (
    FIXED_STEP_SOLVERS as FIXED_STEP_SOLVERS,
)
from tracker_sched.model.config import (
    ModelConfig as ModelConfig,
)
from tracker_sched.model.config import (
    Solver as Solver,
)
from tracker_sched.model.config import (
    solver_kwargs as solver_kwargs,
)
from tracker_sched.model.solver import solve


def grid_interval(cfg: ModelConfig, offsets: torch.Tensor) -> float | None:
    """The grid interval of ``offsets`` when solver steps span several of them, else None."""
    if cfg.step_points > 1 and offsets.numel() > 1:
        return float(offsets[1] - offsets[0])
    return None


class FieldMLP(nn.Sequential):
    """The MLP inside every vector field: ``first -> SiLU -> middle -> SiLU -> last``.

    An ``nn.Sequential``, so that its weights keep their stored names (``net.0``,
    ``net.2``, ``net.4``) and bundles load across versions; code reads the layers by
    name (:attr:`linears`), never by position.
    """

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                         nn.SiLU(), nn.Linear(hidden, n_out))

    @property
    def linears(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """The ``(first, middle, last)`` linear layers."""
        first, _, middle, _, last = self
        assert isinstance(first, nn.Linear) and isinstance(middle, nn.Linear)
        assert isinstance(last, nn.Linear)
        return first, middle, last


class StackedMLP:
    """Several members' :class:`FieldMLP` as one batched function (the one stacked kernel).

    ``x (members, batch, n_in) -> (members, batch, n_out)`` by batched matrix products,
    what makes a replan take milliseconds. Weights are detached copies; ``last_factor``
    scales the last layer (an exact scaling the planner folds into it).
    """

    def __init__(self, mlps: Sequence[FieldMLP], last_factor: float = 1.0) -> None:
        layers = list(zip(*(mlp.linears for mlp in mlps), strict=True))
        self.w = [torch.stack([lin.weight.detach().T for lin in layer]) for layer in layers]
        self.b = [torch.stack([lin.bias.detach() for lin in layer])[:, None, :]
                  for layer in layers]
        if last_factor != 1.0:
            self.w[2], self.b[2] = last_factor * self.w[2], last_factor * self.b[2]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.w, self.b
        x = nn.functional.silu(torch.baddbmm(b[0], x, w[0]))
        x = nn.functional.silu(torch.baddbmm(b[1], x, w[1]))
        return torch.baddbmm(b[2], x, w[2])


class VectorField(nn.Module):
    """dh/dtau = s * tanh(MLP(h)): bounded speed, learned overall time scale."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = FieldMLP(dim, hidden, dim)
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
        in_dim = INPUT_DIM
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
        """``x (batch, time, 7)``, ``lengths (batch,)`` -> latent ``z (batch, latent_dim)``.

        Rows are left-aligned (:func:`~tracker_sched.data.grid.context_batch`); each
        row's state is the GRU's after its last valid step. Under autograd the GRU runs
        over the padded batch and that step's output is picked: a packed sequence's
        backward zero-fills a gradient of the whole input for every time step, which
        made the encoder a quarter of a training step. Without autograd the packed
        run is cheaper. Both give the same state (to float32 rounding).
        """
        if torch.is_grad_enabled():
            steps, _ = self.encoder(x)
            last = steps[torch.arange(x.shape[0]), lengths.to(steps.device) - 1]
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            _, h_n = self.encoder(packed)
            last = h_n[-1]
        out: torch.Tensor = self.to_latent(last)
        return out

    def initial_state(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lift(z)
        return out

    def solve(self, h0: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Integrate ``h0 (batch, ode_dim)`` over ``offsets (K,)`` -> ``(batch, K, ode_dim)``."""
        cfg = self.config
        hs = solve(self.field, h0, offsets, cfg, grid_interval(cfg, offsets), "cubic")
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

    def __init__(self, fields: Sequence[VectorField]) -> None:
        super().__init__()
        self.mlp = StackedMLP([f.net for f in fields])
        self.scale = torch.stack([torch.exp(f.log_scale.detach()) for f in fields])[:, None, None]

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(self.mlp(h))


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
    hs = solve(StackedField([m.field for m in models]), h0, offsets, cfg,
               grid_interval(cfg, offsets), interp)
    return hs.permute(1, 2, 0, 3)


def last_observation(
    x: torch.Tensor, lengths: torch.Tensor, direction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The newest point of each context window: ``(values (batch, 3), observed (batch, 3))``."""
    row = (lengths - 1) if direction == "forward" else torch.zeros_like(lengths)
    last = x[torch.arange(x.shape[0]), row]
    return last[:, VALUES], last[:, MASKS] > 0.5


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

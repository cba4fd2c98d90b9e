"""What the two fits' training loops share: the optimiser and its schedule, the sampler of
training windows, the masked loss and the update step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tracker_sched.data.grid import SweepTensors


def masked_mse(
    pred: torch.Tensor, y: torch.Tensor, m: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Mean squared error over the observed points (``m``), channels weighted by ``weights``.

    Args:
        pred: predictions, ``(batch, K, channels)``.
        y: targets, the same shape.
        m: which targets were observed, the same shape (bool).
        weights: per-channel weights, ``(channels,)``.

    Returns:
        The scalar loss (0 when nothing is observed).
    """
    w = m.to(pred.dtype) * weights
    return ((pred - y) ** 2 * w).sum() / w.sum().clamp_min(1.0)


def optimizer(model: nn.Module, learning_rate: float, weight_decay: float, iterations: int
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a linear warm-up over the first 5% of ``iterations``, then a cosine decay."""
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    total = iterations
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total)),
    )
    return opt, sched


def update(model: nn.Module, opt: torch.optim.Optimizer,
           sched: torch.optim.lr_scheduler.LRScheduler, loss: torch.Tensor) -> None:
    """One step: gradients of ``loss``, clipped to norm 1, then the optimiser and schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


@dataclass(frozen=True)
class Windows:
    """A batch of training windows: run ``run_idx`` seen up to grid point ``end_idx`` over
    ``length`` points (each ``(batch,)``); ``horizon`` grid points from the earliest end."""

    run_idx: torch.Tensor
    end_idx: torch.Tensor
    length: torch.Tensor
    horizon: int


class WindowSampler:
    """Random training windows: a run, a context end from ``min_end_tau`` up to the run's
    last observed point, a context length in ``window_range`` times ``window``.

    Draws from ``generator`` in a fixed order (run, end, length), so a seed fixes the fit.
    """

    def __init__(self, data: SweepTensors, *, window: int, window_range: tuple[float, float],
                 min_end_tau: float, batch_size: int, generator: torch.Generator) -> None:
        g = data.grid_points
        self.grid_points = g
        self.runs = int(data.values.shape[0])
        observed = data.mask.any(dim=2)  # (runs, G)
        self.last_obs = torch.where(
            observed, torch.arange(g)[None, :], torch.zeros_like(observed, dtype=torch.long)
        ).max(dim=1).values
        self.min_end = max(1, round(min_end_tau * (g - 1)))
        self.lo = max(2, round(window * window_range[0]))
        self.hi = max(self.lo, round(window * window_range[1]))
        self.batch_size = batch_size
        self.gen = generator

    def sample(self) -> Windows:
        b, gen = self.batch_size, self.gen
        run_idx = torch.randint(self.runs, (b,), generator=gen)
        top = torch.maximum(self.last_obs[run_idx], torch.full_like(run_idx, self.min_end))
        u = torch.rand(b, generator=gen)
        end_idx = torch.minimum(self.min_end + (u * (top - self.min_end + 1)).long(), top)
        length = torch.randint(self.lo, self.hi + 1, (b,), generator=gen)
        return Windows(run_idx, end_idx, length, self.grid_points - int(end_idx.min()))

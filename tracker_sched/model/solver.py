"""The ODE solve every model uses: torchdiffeq's fixed-step arithmetic, without its overheads.

For the fixed-step solvers (``rk4``, ``euler``, ``midpoint``) :func:`odeint` takes the
same steps as ``torchdiffeq.odeint`` with the same floating-point operations in the
same order, so its values are bitwise the same; it differs in how the output points
are put together, which is what dominated a training step:

- torchdiffeq writes each output point into a preallocated tensor
  (``solution[j] = ...``); autograd then copies the whole solution's gradient once
  per point (``CopySlices``), quadratic in the number of points. Here the points are
  computed in one batched interpolation over all of them.
- with cubic interpolation torchdiffeq evaluates the field at a step's end once per
  output point in the step, and again as the next step's first stage; here once.

The adaptive solver (``dopri5``) goes to torchdiffeq unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torchdiffeq

from tracker_sched.model.config import FIXED_STEP_SOLVERS, ModelConfig, solver_kwargs

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_ONE_THIRD = 1 / 3
_TWO_THIRDS = 2 / 3


def solve(
    func: Field, h0: torch.Tensor, offsets: torch.Tensor, cfg: ModelConfig, dt: float | None,
    interp: Literal["cubic", "linear"] = "linear",
) -> torch.Tensor:
    """Integrate ``dh/dtau = func(tau, h)`` from ``h0`` over ``offsets``, the solver of ``cfg``.

    Args:
        func: the vector field, ``(t (), h (...)) -> (...)``.
        h0: the initial state, any shape.
        offsets: increasing times ``(K,)``; ``offsets[0]`` is the time of ``h0``.
        cfg: the model's solver settings (:func:`~tracker_sched.model.config.solver_kwargs`).
        dt: the progress-grid interval (a fixed-step solver steps ``step_points`` of them),
            or None to step at ``offsets`` themselves.
        interp: how a fixed-step solver fills in the points between its steps.

    Returns:
        The states at ``offsets``, ``(K, *h0.shape)``.
    """
    kwargs = solver_kwargs(cfg, dt, interp)
    increasing = offsets.numel() < 2 or bool((offsets[1:] > offsets[:-1]).all())
    if cfg.solver not in FIXED_STEP_SOLVERS or not increasing or offsets.dtype != h0.dtype:
        out: torch.Tensor = torchdiffeq.odeint(func, h0, offsets, **kwargs)
        return out
    options = kwargs.get("options", {})
    return odeint_fixed(func, h0, offsets, cfg.solver, options.get("step_size"), interp)


def _grid(t: torch.Tensor, step_size: float | None) -> torch.Tensor:
    """The solver's step times, as torchdiffeq builds them."""
    if step_size is None:
        return t
    start, end = t[0], t[-1]
    niters = torch.ceil((end - start) / step_size + 1).item()
    grid = torch.arange(0, niters, dtype=t.dtype, device=t.device) * step_size + start
    grid[-1] = end
    return grid


def _step(method: str, func: Field, t0: torch.Tensor, dt: torch.Tensor, t1: torch.Tensor,
          y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    """One step's increment (torchdiffeq's ``Euler``, ``Midpoint``, ``RK4`` with rk4_alt)."""
    if method == "euler":
        return dt * f0
    if method == "midpoint":
        half_dt = 0.5 * dt
        return dt * func(t0 + half_dt, y0 + f0 * half_dt)
    k1 = f0
    k2 = func(t0 + dt * _ONE_THIRD, y0 + dt * k1 * _ONE_THIRD)
    k3 = func(t0 + dt * _TWO_THIRDS, y0 + dt * (k2 - k1 * _ONE_THIRD))
    k4 = func(t1, y0 + dt * (k1 - k2 + k3))
    return (k1 + 3 * (k2 + k3) + k4) * dt * 0.125


def odeint_fixed(
    func: Field, y0: torch.Tensor, t: torch.Tensor, method: str, step_size: float | None,
    interp: Literal["cubic", "linear"],
) -> torch.Tensor:
    """A fixed-step solve with torchdiffeq's arithmetic: ``(len(t), *y0.shape)``.

    ``t`` must be increasing; ``method`` one of ``rk4``, ``euler``, ``midpoint``.
    """
    grid = _grid(t, step_size)
    n_out = int(t.numel())
    if n_out == 1:
        return y0[None]
    grid_v, t_v = grid.tolist(), t.tolist()
    # Output point j lies in the first step whose end reaches it (torchdiffeq's rule).
    step_of: list[int] = []
    j = 1
    for i, t1 in enumerate(grid_v[1:]):
        while j < n_out and t1 >= t_v[j]:
            step_of.append(i)
            j += 1
    last_step = step_of[-1]
    ys, fs = [y0], []
    f0 = func(grid[0], y0)
    for i in range(last_step + 1):
        t0, t1 = grid[i], grid[i + 1]
        dt = t1 - t0
        y1 = ys[-1] + _step(method, func, t0, dt, t1, ys[-1], f0)
        fs.append(f0)
        ys.append(y1)
        if i < last_step or interp == "cubic":
            f0 = func(t1, y1)  # the next step's first stage, or the cubic's end slope
    if interp == "cubic":
        fs.append(f0)
    s = torch.tensor(step_of, device=t.device)
    t0s, t1s, ts = grid[s], grid[s + 1], t[1:]
    y_lo, y_hi = torch.stack(ys[:-1])[s], torch.stack(ys[1:])[s]
    shape = (-1,) + (1,) * y0.dim()
    if interp == "cubic":
        h = (ts - t0s) / (t1s - t0s)
        h00 = (1 + 2 * h) * (1 - h) * (1 - h)
        h10 = h * (1 - h) * (1 - h)
        h01 = h * h * (3 - 2 * h)
        h11 = h * h * (h - 1)
        step = t1s - t0s
        f_lo, f_hi = torch.stack(fs[:-1])[s], torch.stack(fs[1:])[s]
        inner = (h00.view(shape) * y_lo + (h10 * step).view(shape) * f_lo
                 + h01.view(shape) * y_hi + (h11 * step).view(shape) * f_hi)
    else:
        slope = ((ts - t0s) / (t1s - t0s)).view(shape)
        inner = torch.where((ts == t1s).view(shape), y_hi, y_lo + slope * (y_hi - y_lo))
    return torch.cat([y0[None], inner])

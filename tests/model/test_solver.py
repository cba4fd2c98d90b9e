"""The fixed-step solve against torchdiffeq's (bitwise), and the encoder's two paths."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

from tracker_sched.model.latent import LatentODE, ModelConfig
from tracker_sched.model.solver import odeint_fixed


@pytest.mark.parametrize("method", ["rk4", "euler", "midpoint"])
@pytest.mark.parametrize("interp", ["cubic", "linear"])
@pytest.mark.parametrize(("points", "step_points"), [(40, 2), (23, 4), (2, 3), (9, 1)])
def test_fixed_step_solve_is_torchdiffeqs_bit_for_bit(
    method: str, interp: str, points: int, step_points: int
) -> None:
    gen = torch.Generator().manual_seed(points * 10 + step_points)
    w = torch.randn(6, 6, generator=gen, requires_grad=True)

    def field(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ w) * (1 + t)  # time-dependent: stage times must match too

    y0 = torch.randn(3, 6, generator=gen)
    t = torch.arange(points, dtype=torch.float32) / 39
    step = step_points / 39
    ref = torchdiffeq.odeint(field, y0, t, method=method,
                             options={"step_size": step, "interp": interp})
    out = odeint_fixed(field, y0, t, method, step, interp)  # type: ignore[arg-type]
    assert torch.equal(out, ref)
    # Gradients take another path through autograd: equal to float32 rounding.
    (g_ref,) = torch.autograd.grad(ref.square().sum(), [w])
    (g_out,) = torch.autograd.grad(out.square().sum(), [w])
    assert float((g_out - g_ref).abs().max()) <= 1e-5 * float(g_ref.abs().max())


def test_fixed_step_solve_without_step_size_steps_at_the_outputs() -> None:
    y0 = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.0, 0.1, 0.35, 0.4])

    def field(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.sin(h) - t

    ref = torchdiffeq.odeint(field, y0, t, method="rk4")
    assert torch.equal(odeint_fixed(field, y0, t, "rk4", None, "linear"), ref)


def test_encoder_gives_the_same_state_with_and_without_autograd() -> None:
    cfg = ModelConfig(latent_dim=4, ode_dim=8, hidden=16, encoder_hidden=16)
    model = LatentODE(cfg, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 1, 3, 5, 2])
    x = torch.randn(5, 5, 7, generator=gen) * (torch.arange(5)[None, :, None]
                                              < lengths[:, None, None])
    padded = model.encode(x, lengths)  # autograd on: the padded run
    with torch.no_grad():
        packed = model.encode(x, lengths)
    torch.testing.assert_close(padded.detach(), packed, rtol=1e-5, atol=1e-6)
    # A row's state ignores what lies past its length.
    x2 = x.clone()
    x2[1, 1:] = 9.0
    torch.testing.assert_close(model.encode(x2, lengths).detach(), padded.detach(),
                               rtol=1e-5, atol=1e-6)

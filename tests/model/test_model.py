"""The latent ODE: solver known answers, the path-length penalty, seeding, config errors, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from tracker_sched.data.grid import N_CHANNELS
from tracker_sched.errors import InputError
from tracker_sched.model.latent import LatentODE, ModelConfig, path_length_penalty


def _model(seed: int = 0, **cfg: object) -> LatentODE:
    base: dict[str, object] = {"latent_dim": 4, "ode_dim": 8, "hidden": 16, "encoder_hidden": 16}
    base.update(cfg)
    return LatentODE(ModelConfig(**base), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- solver


@pytest.mark.parametrize(
    ("solver", "step_points"), [("rk4", 1), ("rk4", 2), ("dopri5", 1), ("euler", 1)]
)
def test_constant_field_gives_a_straight_line(solver: str, step_points: int) -> None:
    model = _model(solver=solver, step_points=step_points)
    b = torch.linspace(-1.5, 2.0, 8)
    with torch.no_grad():
        last = model.field.net[-1]
        last.weight.zero_()
        last.bias.copy_(b)
        model.field.log_scale.fill_(0.3)
    velocity = math.exp(0.3) * torch.tanh(b)  # dh/dtau, exactly
    h0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    offsets = torch.linspace(0.0, 1.0, 11)
    with torch.no_grad():
        h = model.solve(h0, offsets)
    expected = h0[:, None, :] + offsets[None, :, None] * velocity[None, None, :]
    assert h.shape == (3, 11, 8)
    torch.testing.assert_close(h, expected, atol=1e-5, rtol=0)


def test_rk4_agrees_with_dopri5_on_a_random_field() -> None:
    h0 = torch.randn(5, 8, generator=torch.Generator().manual_seed(2)) * 2
    offsets = torch.linspace(0.0, 1.0, 21)
    rk4 = _model(seed=3, solver="rk4", step_points=1)
    ref = _model(seed=3, solver="dopri5", rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        a, b = rk4.solve(h0, offsets), ref.solve(h0, offsets)
    assert float((b[:, -1] - h0).abs().max()) > 0.5  # the field really moves the state
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)


def test_rk4_with_two_grid_intervals_per_step_agrees_at_its_steps() -> None:
    # step_points=2 takes a solver step every second grid point; the points in
    # between are interpolated, so only the step nodes are held to the tolerance.
    h0 = torch.randn(5, 8, generator=torch.Generator().manual_seed(2)) * 2
    offsets = torch.linspace(0.0, 1.0, 21)
    rk4 = _model(seed=3, solver="rk4", step_points=2)
    ref = _model(seed=3, solver="dopri5", rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        a, b = rk4.solve(h0, offsets), ref.solve(h0, offsets)
    torch.testing.assert_close(a[:, ::2], b[:, ::2], atol=1e-3, rtol=0)
    torch.testing.assert_close(a[:, 1::2], b[:, 1::2], atol=5e-2, rtol=0)


def test_solve_starts_at_the_initial_state() -> None:
    model = _model(seed=4)
    h0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = model.solve(h0, torch.linspace(0.0, 0.5, 6))
    torch.testing.assert_close(h[:, 0], h0)


# --------------------------------------------------------------------------- path penalty


def _straight_paths(
    starts: torch.Tensor, direction: torch.Tensor, step: float, k: int
) -> torch.Tensor:
    unit = direction / direction.norm()
    t = torch.arange(k, dtype=torch.float32) * step
    return starts[:, None, :] + t[None, :, None] * unit[None, None, :]


def test_path_length_penalty_known_value() -> None:
    # Two straight paths of 4 steps of 0.5 (length 2) starting at (0, 0) and (2, 2).
    starts = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    h = _straight_paths(starts, torch.tensor([3.0, 4.0]), 0.5, 5)
    valid = torch.ones(2, 5, dtype=torch.bool)
    # spread: per-dimension sample std (n-1) of the starts is sqrt(2), mean over dims sqrt(2)
    expected = 2.0 / math.sqrt(2.0)
    assert float(path_length_penalty(h, valid)) == pytest.approx(expected, rel=1e-6)


def test_path_length_penalty_ignores_invalid_steps() -> None:
    starts = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    h = _straight_paths(starts, torch.tensor([3.0, 4.0]), 0.5, 5)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 3:] = False  # run 0: points 0..2 valid, so steps 0->1 and 1->2 count
    valid[1, 1:] = False  # run 1: only point 0 valid, no step counts
    # run 0 keeps steps 0->1 and 1->2 (1.0); run 1 keeps none: mean 0.5, spread sqrt(2)
    expected = 0.5 / math.sqrt(2.0)
    assert float(path_length_penalty(h, valid)) == pytest.approx(expected, rel=1e-6)
    # garbage at invalid points changes nothing
    h2 = h.clone()
    h2[0, 4] += 100.0
    h2[1, 2:] -= 50.0
    assert float(path_length_penalty(h2, valid)) == pytest.approx(expected, rel=1e-6)


def test_path_length_penalty_is_scale_invariant() -> None:
    h = torch.randn(6, 12, 5, generator=torch.Generator().manual_seed(0))
    valid = torch.rand(6, 12, generator=torch.Generator().manual_seed(1)) > 0.2
    p1 = float(path_length_penalty(h, valid))
    p10 = float(path_length_penalty(h * 10, valid))
    assert p1 > 0
    assert p10 == pytest.approx(p1, rel=1e-5)


# --------------------------------------------------------------------------- seeding


def test_same_seed_same_parameters_different_seed_different() -> None:
    a, b, c = _model(seed=7), _model(seed=7), _model(seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    matrices = [n for n, p in sa.items() if p.dim() >= 2]
    assert matrices
    for name in matrices:
        assert not torch.equal(sa[name], sc[name]), name


def test_generator_seeded_weights_ignore_the_global_rng() -> None:
    torch.manual_seed(1)
    a = _model(seed=5)
    torch.manual_seed(2)
    b = _model(seed=5)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_constructing_a_model_leaves_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    _model(seed=0)
    assert torch.equal(before, torch.get_rng_state())


# --------------------------------------------------------------------------- config errors


def test_unknown_solver_rejected_by_the_config() -> None:
    with pytest.raises(ValidationError) as info:
        ModelConfig(solver="rk45")  # type: ignore[arg-type]
    msg = str(info.value)
    for name in ("rk4", "dopri5", "euler", "midpoint"):
        assert f"'{name}'" in msg


def test_unknown_solver_rejected_by_the_model() -> None:
    cfg = ModelConfig.model_construct(solver="rk45")  # bypasses pydantic validation
    with pytest.raises(InputError) as info:
        LatentODE(cfg)
    msg = str(info.value)
    assert "'rk45'" in msg
    for name in ("rk4", "dopri5", "euler", "midpoint"):
        assert name in msg


# --------------------------------------------------------------------------- shapes


def test_forward_shapes() -> None:
    model = _model(seed=0, solver="rk4", step_points=2)
    b, t, k = 5, 9, 13
    x = torch.randn(b, t, 1 + 2 * N_CHANNELS, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([9, 3, 1, 7, 9])
    offsets = torch.arange(k, dtype=torch.float32) / 39
    with torch.no_grad():
        pred, h = model(x, lengths, offsets)
    assert pred.shape == (b, k, N_CHANNELS)
    assert h.shape == (b, k, 8)
    assert torch.isfinite(pred).all()
    assert torch.isfinite(h).all()


def test_forward_ignores_padding_beyond_each_length() -> None:
    model = _model(seed=0)
    x = torch.randn(2, 6, 1 + 2 * N_CHANNELS, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([3, 6])
    offsets = torch.linspace(0.0, 0.3, 4)
    x2 = x.clone()
    x2[0, 3:] = 99.0  # padding of row 0
    with torch.no_grad():
        p1, _ = model(x, lengths, offsets)
        p2, _ = model(x2, lengths, offsets)
    torch.testing.assert_close(p1, p2)

"""The latent ODE's settings: sizes and solver (torch-free, so options are checked before
torch is imported: an unfittable sweep or a bad option fails in about a second)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tracker_sched.limits import MAX_WIDTH
from tracker_sched.schema import EncoderDirection

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


FIXED_STEP_SOLVERS = ("rk4", "euler", "midpoint")


def solver_kwargs(
    cfg: ModelConfig, dt: float | None, interp: Literal["cubic", "linear"] = "linear"
) -> dict[str, Any]:
    """The keyword arguments of ``torchdiffeq.odeint`` for ``cfg``: the one solver rule.

    Args:
        cfg: the model's solver, tolerances and ``step_points``.
        dt: the progress-grid interval. A fixed-step solver steps ``step_points`` of them
            at a time and interpolates (``interp``) the grid points in between; ``None``
            lets it step at the output times themselves.
        interp: how a fixed-step solver fills in the points between its steps.

    Returns:
        ``method``, ``rtol``, ``atol`` and, for a fixed-step solver given ``dt``, ``options``.
    """
    kwargs: dict[str, Any] = {"method": cfg.solver, "rtol": cfg.rtol, "atol": cfg.atol}
    if cfg.solver in FIXED_STEP_SOLVERS and dt is not None:
        kwargs["options"] = {"step_size": dt * cfg.step_points, "interp": interp}
    return kwargs

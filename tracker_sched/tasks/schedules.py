"""The parametric learning-rate schedules the tasks' sweeps use, by name.

Each is a pure function ``(step, total_steps, peak_lr) -> lr``: the rate of the optimizer
step taken when ``step`` steps have been done (the step convention of
:mod:`tracker_sched.tasks.mnist1d`). No torch: the benchmarks' loops and the demo read the
same table.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES: tuple[str, ...] = ("constant", "cosine", "onecycle", "step")


def constant_lr(step: int, total_steps: int, peak_lr: float) -> float:
    """peak at every step."""
    return float(peak_lr)


def cosine_lr(step: int, total_steps: int, peak_lr: float) -> float:
    """peak * (1 + cos(pi * step / total)) / 2, floored at peak * 1e-3 (never 0)."""
    value = 0.5 * peak_lr * (1.0 + math.cos(math.pi * step / total_steps))
    return max(value, peak_lr * 1e-3)


def onecycle_lr(
    step: int,
    total_steps: int,
    peak_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """torch.optim.lr_scheduler.OneCycleLR (two phases, cosine annealing) at ``step``.

    Same phase boundaries as torch: warm-up from peak/25 to peak ends at step
    ``pct_start * total - 1``, then cosine down to peak/25/1e4 at ``total - 1``.
    """
    initial = peak_lr / div_factor
    final = initial / final_div_factor
    warm_end = float(pct_start * total_steps) - 1
    last = float(total_steps - 1)

    def cos_anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)

    if step <= warm_end:
        return cos_anneal(initial, peak_lr, step / warm_end)
    return cos_anneal(peak_lr, final, (step - warm_end) / (last - warm_end))


def step_lr(step: int, total_steps: int, peak_lr: float) -> float:
    """peak, x0.1 from 50% of the steps, x0.01 from 75%."""
    factor = 1.0
    if step >= 0.5 * total_steps:
        factor *= 0.1
    if step >= 0.75 * total_steps:
        factor *= 0.1
    return peak_lr * factor


SCHEDULE_FNS: dict[str, Callable[[int, int, float], float]] = {
    "constant": constant_lr,
    "cosine": cosine_lr,
    "onecycle": onecycle_lr,
    "step": step_lr,
}


def schedule_lr(schedule: str, step: int, total_steps: int, peak_lr: float) -> float:
    """The named schedule's lr for the step taken after ``step`` steps."""
    try:
        fn = SCHEDULE_FNS[schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}") from None
    return fn(step, total_steps, peak_lr)

"""Paired differences against arm (a), per task and pooled over tasks.

The t quantile is the one the other benchmarks use
(``benchmarks.advisor_mnist1d.t975``). A gain is signed so that positive is
better: accuracy points for a maximised metric, and for a minimised one the
reduction in percent of arm (a)'s mean over the block (so a loss 2% lower than
the sweep's best is +2).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from benchmarks.advisor_mnist1d import t975


def paired(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% t interval, wins / ties / losses and the worst of paired differences.

    With one difference the interval is undefined (``lo``/``hi`` NaN).

    Raises:
        ValueError: no differences.
    """
    n = len(diffs)
    if n == 0:
        raise ValueError("no paired differences")
    mean = statistics.fmean(diffs)
    if n > 1:
        sd = statistics.stdev(diffs)
        half = t975(n - 1) * sd / math.sqrt(n)
    else:
        sd, half = math.nan, math.nan
    return {
        "n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half,
        "median": statistics.median(diffs),
        "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs), "worst": min(diffs),
    }


def gains(arm: Sequence[float], ref: Sequence[float],
          direction: Literal["max", "min"]) -> list[float]:
    """Per-seed gain of ``arm`` over ``ref`` (same seeds, same order) in the task's unit.

    Values are the metric as measured (accuracy as a fraction, a loss as is).
    """
    if len(arm) != len(ref):
        raise ValueError(f"unpaired: {len(arm)} against {len(ref)} values")
    if direction == "max":
        return [100.0 * (a - r) for a, r in zip(arm, ref, strict=True)]
    scale = statistics.fmean(ref)
    if not scale > 0:
        raise ValueError(f"a minimised metric needs a positive reference mean, got {scale}")
    return [100.0 * (r - a) / scale for a, r in zip(arm, ref, strict=True)]


def pooled(per_task: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Every task's per-seed gains in one paired summary, plus the mean of task means
    (each task weighted alike, whatever its seed count)."""
    allg = [g for gs in per_task.values() for g in gs]
    out = paired(allg)
    out["tasks"] = len(per_task)
    out["mean_of_task_means"] = statistics.fmean(statistics.fmean(g) for g in per_task.values())
    return out


def headroom_share(arm_gain: float, oracle_gain: float, floor: float = 0.5) -> float | None:
    """Share of the oracle's headroom an arm captured; None where the headroom is below
    ``floor`` (a share of almost nothing says nothing)."""
    if oracle_gain < floor:
        return None
    return arm_gain / oracle_gain

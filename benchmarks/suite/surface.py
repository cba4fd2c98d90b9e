"""Arm (q), the response surface: no ODE, zero extra runs.

Per schedule family, a quadratic in log10 peak lr is least-squares fitted to the
sweep's final validation metrics (every seed's run, not the means). A
maximised metric (accuracy) is fitted as logged; a minimised one (a loss, an
MSE) as its log, where a few bad runs would otherwise dominate the fit. The
quadratic is searched over the sweep's own peak range only (no extrapolation):
its vertex where that lies inside and the curve opens the right way, else the
better end. The arm is the family whose best point is predicted best. A family
with fewer than 3 distinct peaks keeps its best observed peak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class SurfacePoint:
    """One family's best point on its fitted quadratic.

    ``coef`` is ``(c2, c1, c0)`` of ``c2 x^2 + c1 x + c0`` in ``x = log10 peak``,
    in the fitted scale (the log of a minimised metric); ``predicted`` is back in
    the metric's own scale.
    """

    family: str
    peak: float
    predicted: float
    coef: tuple[float, float, float] | None
    where: Literal["vertex", "edge", "observed"]


def fit_family(
    family: str,
    points: Sequence[tuple[float, float]],
    direction: Literal["max", "min"],
) -> SurfacePoint:
    """Fit one family's ``(peak, final)`` points; return its best point inside the range.

    Raises:
        ValueError: no finite point at all.
    """
    pts = [(p, v) for p, v in points if p > 0 and math.isfinite(v)
           and (direction == "max" or v > 0)]
    if not pts:
        raise ValueError(f"family {family!r} has no finite final metric to fit")
    x = np.log10(np.array([p for p, _ in pts]))
    v = np.array([v for _, v in pts], dtype=np.float64)
    y = v if direction == "max" else np.log(v)
    sign = 1.0 if direction == "max" else -1.0  # maximise sign * y
    if np.unique(x).size < 3:
        by_peak: dict[float, list[float]] = {}
        for xi, yi in zip(x, y, strict=True):
            by_peak.setdefault(float(xi), []).append(float(yi))
        best = max(by_peak, key=lambda k: sign * float(np.mean(by_peak[k])))
        mean = float(np.mean(by_peak[best]))
        return SurfacePoint(family, 10 ** best, _back(mean, direction), None, "observed")
    c2, c1, c0 = (float(c) for c in np.polyfit(x, y, 2))
    lo, hi = float(x.min()), float(x.max())
    cands = [lo, hi]
    if sign * c2 < 0:  # opens towards the better side: a vertex is a best point
        xv = -c1 / (2 * c2)
        if lo < xv < hi:
            cands.append(xv)
    vals = [c2 * xc * xc + c1 * xc + c0 for xc in cands]
    i = max(range(len(cands)), key=lambda k: sign * vals[k])
    where: Literal["vertex", "edge"] = "vertex" if i == 2 else "edge"
    return SurfacePoint(family, 10 ** cands[i], _back(vals[i], direction), (c2, c1, c0), where)


def _back(y: float, direction: str) -> float:
    return y if direction == "max" else math.exp(y)


def best_point(
    finals: Mapping[tuple[str, float], Sequence[float]],
    direction: Literal["max", "min"],
) -> tuple[SurfacePoint, list[SurfacePoint]]:
    """The (q) arm from ``{(family, peak): [final per seed]}``: the best family's point,
    and every family's point for the report."""
    fams: dict[str, list[tuple[float, float]]] = {}
    for (fam, peak), vals in finals.items():
        fams.setdefault(fam, []).extend((peak, v) for v in vals)
    points = [fit_family(f, pts, direction) for f, pts in sorted(fams.items())]
    sign = 1.0 if direction == "max" else -1.0
    return max(points, key=lambda s: sign * s.predicted), points

"""Calibrating the ensemble's forecast of the final metric at fit time, for stop decisions.

For every run that reached the end of its budget and every context end from the first full
window to just before the end, the run's final validation metric is forecast out of fold
(cross-fit: by the one member that never trained on it; a holdout fit: by the ensemble, on
the held-out runs). Per context end (a progress bucket) the residuals ``actual - forecast``
give a bias and, by maximum likelihood under a normal model, a predictive standard
deviation ``sqrt(floor**2 + (scale * spread)**2)`` where ``spread`` is the members'
disagreement. The result is a :class:`~tracker_sched.model.stop_odds.StopCalibration`, stored in
the bundle manifest (``stopping``), with a reliability table over pairs of runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch

from tracker_sched.data.grid import VAL_METRIC, Normalisation, SweepTensors
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.prepare import PreparedSweep
from tracker_sched.model.forecast import Forecaster
from tracker_sched.model.latent import LatentODE
from tracker_sched.model.stop_odds import (
    ReliabilityRow,
    StopBucket,
    StopCalibration,
    student_t_cdf,
)

if TYPE_CHECKING:
    from tracker_sched.bundle.folder import Bundle


class _Fitted(Protocol):
    """What :func:`calibrate` reads of a fit result (``tracker_sched.fit.generative``)."""

    bundle: Bundle
    prepared: PreparedSweep

BINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
CALIBRATION_ENDS = 12  # context ends between the first full window and the end
MIN_RUNS_PER_BUCKET = 8  # fewer complete runs: one bucket pools every context end
SCALES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
DFS: tuple[int | None, ...] = (None, 30, 10, 5, 3, 2)  # candidate tails; the likeliest wins


def calibration_ends(grid_points: int, window: int, count: int = CALIBRATION_ENDS) -> np.ndarray:
    """Grid indices of the context ends the calibration uses (first full window .. G - 2)."""
    lo, hi = window - 1, grid_points - 2
    return np.unique(np.rint(np.linspace(lo, max(lo, hi), count)).astype(np.int64))


@torch.no_grad()
def member_finals(
    models: Sequence[LatentODE], norm: Normalisation, data: SweepTensors,
    run_idx: np.ndarray, end_idx: np.ndarray, window: int,
) -> np.ndarray:
    """Every member's forecast of the final metric (transformed units), ``(members, batch)``.

    Row ``i`` is run ``run_idx[i]`` forecast from the ``window`` grid points ending at
    ``end_idx[i]``.
    """
    g = data.grid_points
    runs = torch.as_tensor(np.asarray(run_idx, dtype=np.int64))
    ends = torch.as_tensor(np.asarray(end_idx, dtype=np.int64))
    pred = Forecaster(models).forecast(data, runs, ends, torch.full_like(ends, window),
                                       members=True)  # (M, B, K, 3), k = grid end + k
    last = (g - 1 - ends)[None, :, None].expand(pred.shape[0], -1, 1)
    z = torch.gather(pred[..., VAL_METRIC], 2, last)[..., 0]
    return np.asarray(z.numpy() * norm.std[VAL_METRIC] + norm.mean[VAL_METRIC], dtype=np.float64)


def _fit_bucket(resid: np.ndarray, spread: np.ndarray,
                df: int | None = None) -> tuple[float, float, float, float]:
    """(bias, floor, scale, log likelihood): the maximum likelihood of ``resid`` under a
    location-scale t with ``df`` degrees of freedom (None: normal), scale
    ``sqrt(floor**2 + (scale * spread)**2)``, the bias the residuals' shrunk mean."""
    n = resid.size
    bias = float(resid.mean()) * n / (n + 5)  # shrunk towards 0: few runs, noisy mean
    c = resid - bias
    rms = float(np.sqrt(np.mean(c**2))) or 1e-6
    floors = rms * 10 ** np.linspace(-2, 0.5, 51)
    best = (math.inf, rms, 0.0)
    for scale in SCALES:
        sd = np.sqrt(floors[:, None] ** 2 + (scale * spread[None, :]) ** 2)
        z = c[None, :] / sd
        if df is None:
            nll = (np.log(sd) + 0.5 * z**2).sum(axis=1)
        else:
            nll = (np.log(sd) + (df + 1) / 2 * np.log1p(z**2 / df)).sum(axis=1)
        i = int(np.argmin(nll))
        if nll[i] < best[0]:
            best = (float(nll[i]), float(floors[i]), scale)
    const = (-0.5 * math.log(2 * math.pi) if df is None else
             math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi))
    loglik = n * const - best[0]
    # Maximum likelihood with few runs understates the spread; the usual n/(n-1) correction.
    floor = best[1] * math.sqrt(n / max(n - 1, 1))
    return bias, max(floor, 1e-9), best[2], loglik


def reliability(
    cal: StopCalibration, taus: np.ndarray, pred: np.ndarray, spread: np.ndarray,
    actual: np.ndarray,
) -> tuple[list[ReliabilityRow], float | None]:
    """Predicted ``p_beat`` against the observed outcome, over ordered pairs of runs per tau.

    ``pred``, ``spread``: ``(taus, runs)``; ``actual``: ``(runs,)`` finals (transformed).
    """
    sign = 1.0 if cal.direction == "max" else -1.0
    ps, hits = [], []
    off = ~np.eye(actual.size, dtype=bool)
    for t, tau in enumerate(taus):
        b = cal.bucket(float(tau))
        sigma = np.sqrt(b.floor**2 + (b.scale * np.maximum(spread[t], 0.0)) ** 2)
        z = sign * (pred[t][:, None] + b.bias - actual[None, :]) / sigma[:, None]  # (i, j)
        keep = off & (actual[:, None] != actual[None, :])
        ps.append(np.vectorize(lambda x: student_t_cdf(x, cal.df))(z[keep]))
        hits.append((sign * (actual[:, None] - actual[None, :]) > 0)[keep])
    if not ps or not sum(x.size for x in ps):
        return [], None
    p, h = np.concatenate(ps), np.concatenate(hits).astype(np.float64)
    rows = []
    for lo, hi in itertools.pairwise(BINS):
        sel = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if sel.any():
            rows.append(ReliabilityRow(lo=lo, hi=hi, predicted=float(p[sel].mean()),
                                       observed=float(h[sel].mean()), pairs=int(sel.sum())))
    eps = 1e-6
    pc = np.clip(p, eps, 1 - eps)
    log_loss = float(-(h * np.log(pc) + (1 - h) * np.log(1 - pc)).mean())
    return rows, log_loss


def calibrate_prepared(
    models: Sequence[LatentODE], prep: PreparedSweep, config: FitConfig,
) -> StopCalibration | None:
    """The stop calibration of a fitted ensemble on its prepared sweep; None when no run
    reached the end of its budget out of fold (there is nothing to calibrate on)."""
    g, w = config.grid_points, config.window
    n = len(prep.runs)
    data = prep.tensors(np.arange(n))
    complete = np.asarray(prep.grid.complete(), dtype=bool) & data.mask[:, -1, VAL_METRIC].numpy()
    if prep.cross_fit:
        fold_of = np.zeros(n, dtype=np.int64)
        for k, (_, hold) in enumerate(prep.folds):
            fold_of[hold] = k
        runs = np.nonzero(complete)[0]
        scheme: Literal["cross-fit", "holdout"] = "cross-fit"
    else:
        runs = np.asarray([r for r in prep.holdout_idx if complete[r]], dtype=np.int64)
        fold_of = None
        scheme = "holdout"
    if runs.size < 2:
        return None
    ends = calibration_ends(g, w)
    run_idx = np.tile(runs, ends.size)
    end_idx = np.repeat(ends, runs.size)
    finals = member_finals(models, prep.norm, data, run_idx, end_idx, w)  # (M, B)
    finals = finals.reshape(finals.shape[0], ends.size, runs.size)
    spread = finals.std(axis=0) if finals.shape[0] > 1 else np.zeros(finals.shape[1:])
    if fold_of is not None:
        pred = np.take_along_axis(finals, fold_of[runs][None, None, :].repeat(ends.size, 1),
                                  axis=0)[0]
    else:
        pred = finals.mean(axis=0)
    std, mean = prep.norm.std[VAL_METRIC], prep.norm.mean[VAL_METRIC]
    actual = data.values[runs, -1, VAL_METRIC].numpy().astype(np.float64) * std + mean
    resid = actual[None, :] - pred  # (ends, runs)
    taus = ends / (g - 1)
    best: tuple[float, StopCalibration] | None = None
    for df in DFS:  # the tail by maximum likelihood over every bucket
        if runs.size < MIN_RUNS_PER_BUCKET:
            bias, floor, scale, ll = _fit_bucket(resid.ravel(), spread.ravel(), df)
            buckets = [StopBucket(tau=float(taus.mean()), bias=bias, floor=floor, scale=scale,
                                  runs=int(runs.size))]
        else:
            buckets, ll = [], 0.0
            for t, tau in enumerate(taus):
                bias, floor, scale, ll_t = _fit_bucket(resid[t], spread[t], df)
                ll += ll_t
                buckets.append(StopBucket(tau=float(tau), bias=bias, floor=floor, scale=scale,
                                          runs=int(runs.size)))
        cal = StopCalibration(scheme=scheme, direction=prep.direction,
                              transform=prep.norm.transforms[VAL_METRIC], buckets=buckets,
                              runs=int(runs.size), df=df)
        if best is None or ll > best[0]:
            best = (ll, cal)
    assert best is not None
    cal = best[1]
    rows, log_loss = reliability(cal, taus, pred, spread, actual)
    return cal.model_copy(update={"reliability": rows, "log_loss": log_loss})


def calibrate(result: _Fitted) -> StopCalibration | None:
    """The stop calibration of a fit result (what ``fit_sweep`` stores in the bundle)."""
    config = FitConfig.model_validate({**result.bundle.manifest.fit,
                                       "model": result.bundle.manifest.model})
    return calibrate_prepared(result.bundle.models, result.prepared, config)


def format_reliability(cal: StopCalibration) -> str:
    """The reliability table as text (what the CLI prints after a fit)."""
    tails = "normal" if cal.df is None else f"Student-t, {cal.df} degrees of freedom"
    lines = [f"Stop-decision calibration ({cal.scheme}, {cal.runs} complete runs, "
             f"{len(cal.buckets)} progress buckets, {tails}): P(run's final beats another "
             "run's final)",
             f"{'predicted':>13} {'mean':>6} {'observed':>9} {'pairs':>7}"]
    for r in cal.reliability:
        lines.append(f"{r.lo:>5.2f}-{r.hi:<5.2f}   {r.predicted:>6.3f} {r.observed:>9.3f} "
                     f"{r.pairs:>7}")
    if cal.log_loss is not None:
        lines.append(f"log loss {cal.log_loss:.3f} (a coin: 0.693); in-sample: the "
                     "calibration was fitted on these forecasts")
    return "\n".join(lines)


__all__ = ["calibrate", "calibrate_prepared", "calibration_ends", "format_reliability",
           "member_finals", "reliability"]

"""The fit report: how well the fitted model forecasts held-out runs, against baselines.

For each context end ``tau_c`` (default 0.25, 0.5, 0.75) and each held-out run,
the model forecasts the rest of the run from the ``window`` grid points ending
at ``tau_c``. Errors are in channel units: dex (log10) for train loss and lr,
metric units for the validation metric. Three baselines:

- ``last``: the context's last observed value carried forward;
- ``nearest``: the future of the fitting run whose context window is closest
  (standardised channels, same grid points) to the held-out run's;
- ``curve``: a parametric learning curve (pow3) fitted to the run's own values in
  the same context window and extrapolated to the end
  (:mod:`tracker_sched.fit.curves`); for the validation metric (improving in its
  direction) and the train loss (decreasing), not for the lr, which has no row.

The ranking rows give the Spearman rank correlation between the predicted and
the actual final validation metric across held-out runs that reached the end of
their budget: the planner ranks candidate futures by exactly that prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tracker_sched.bundle.manifest import (
    METHODS,
    ForecastReport,
    ForecastRow,
    RankRow,
)
from tracker_sched.data.grid import (
    CHANNELS,
    N_CHANNELS,
    TRAIN_LOSS,
    VAL_METRIC,
    Normalisation,
    SweepTensors,
)
from tracker_sched.fit.curves import fit_curves
from tracker_sched.model.forecast import Forecaster


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation with average ranks for ties; None if undefined."""
    if a.size < 3:
        return None

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(x.size)
        r[order] = np.arange(x.size, dtype=np.float64)
        for v in np.unique(x):
            tie = x == v
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return None
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def _baselines(
    fit: SweepTensors, test: SweepTensors, end: int, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(last, nearest) forecasts, standardised, ``(runs, G - end, 3)``."""
    g = test.grid_points
    lo = max(0, end - window + 1)
    ctx, ctx_m = test.values[:, lo : end + 1], test.mask[:, lo : end + 1]
    # last observed value of each channel within the context
    idx = torch.arange(ctx.shape[1])[None, :, None].expand_as(ctx_m)
    last_i = torch.where(ctx_m, idx, torch.full_like(idx, -1)).max(dim=1).values
    last_v = torch.gather(ctx, 1, last_i.clamp(min=0)[:, None, :]).squeeze(1)
    last = last_v[:, None, :].expand(-1, g - end, -1)
    # nearest fitting run: only runs that cover the whole future are candidates
    cover = fit.mask[:, end:].all(dim=2).all(dim=1)
    cand = torch.nonzero(cover).squeeze(1)
    if cand.numel() == 0:
        cand = torch.arange(fit.values.shape[0])
    fv, fm = fit.values[cand, lo : end + 1], fit.mask[cand, lo : end + 1]
    both = ctx_m[:, None] & fm[None]
    sq = ((ctx[:, None] - fv[None]) ** 2) * both
    d = sq.sum(dim=(2, 3)) / both.sum(dim=(2, 3)).clamp_min(1)
    nearest = fit.values[cand[d.argmin(dim=1)], end:]
    return last, nearest


def curve_baseline(
    fit: SweepTensors, test: SweepTensors, end: int, window: int, direction: str,
    last: torch.Tensor,
) -> torch.Tensor:
    """Learning-curve forecasts, standardised, ``(runs, G - end, 3)``; the lr channel is NaN.

    Each run's curve is fitted to its values in the context window (the grid points the
    model sees, ending at ``end``); the plausible range is every value the ``fit`` runs
    observed. A run that falls back (:func:`~tracker_sched.fit.curves.fit_curves`) gets
    ``last``.
    """
    g = test.grid_points
    tau = np.linspace(0.0, 1.0, g)
    lo = max(0, end - window + 1)
    out = torch.full((int(test.values.shape[0]), g - end, N_CHANNELS), float("nan"))
    for c, way in ((VAL_METRIC, direction), (TRAIN_LOSS, "min")):
        seen = test.mask[:, lo : end + 1, c]
        vals = torch.where(seen, test.values[:, lo : end + 1, c], torch.nan).double().numpy()
        fv = fit.values[..., c][fit.mask[..., c]]
        bounds = (float(fv.min()), float(fv.max())) if fv.numel() else None
        res = fit_curves(vals, tau[lo : end + 1], tau[end:],
                         "max" if way == "max" else "min", bounds, dt=float(tau[1]))
        pred = torch.as_tensor(res.forecast, dtype=torch.float32)
        out[..., c] = torch.where(torch.isfinite(pred), pred, last[..., c])
    return out


Forecasts = dict[str, torch.Tensor]  # method -> (runs, G - end, 3), standardised


def window_forecasts(
    forecaster: Forecaster, fit: SweepTensors, test: SweepTensors, end: int, window: int,
    direction: str = "max",
) -> Forecasts:
    """Model and baseline forecasts of every ``test`` run from the window ending at ``end``;
    ``direction`` is the validation metric's (``"max"`` or ``"min"``)."""
    n = int(test.values.shape[0])
    pred = forecaster.forecast(
        test, torch.arange(n), torch.full((n,), end), torch.full((n,), window)
    )
    last, nearest = _baselines(fit, test, end, window)
    curve = curve_baseline(fit, test, end, window, direction, last)
    return {"model": pred, "nearest": nearest, "last": last, "curve": curve}


def score_forecasts(
    by_tau: dict[float, Forecasts],
    test: SweepTensors,
    norm: Normalisation,
    window: int,
    complete: np.ndarray,
) -> ForecastReport:
    """RMSE per channel (pooled and median run) and final-metric rank correlation."""
    g = test.grid_points
    rows: list[ForecastRow] = []
    ranking: list[RankRow] = []
    std = torch.tensor(norm.std, dtype=torch.float32)
    keep = np.asarray(complete, dtype=bool)
    for tau, forecasts in by_tau.items():
        end = round(tau * (g - 1))
        y, m = test.values[:, end:], test.mask[:, end:]
        actual = (y[:, -1, VAL_METRIC] * std[VAL_METRIC]).numpy()
        for method in METHODS:
            f = forecasts[method]
            err2 = ((f - y) * std) ** 2 * m  # channel units
            for c in range(N_CHANNELS):
                mc = m[..., c]
                has = mc.any(dim=1)
                if not bool(has.any()) or not bool(torch.isfinite(f[..., c]).all()):
                    continue  # no data, or a channel the method does not forecast
                pooled = float((err2[..., c].sum() / mc.sum()).sqrt())
                per_run = (err2[..., c].sum(dim=1) / mc.sum(dim=1).clamp_min(1)).sqrt()[has]
                rows.append(ForecastRow(
                    tau=tau, channel=CHANNELS[c], method=method, rmse_pooled=pooled,
                    rmse_median_run=float(per_run.median()), runs=int(has.sum()),
                ))
            final = (f[:, -1, VAL_METRIC] * std[VAL_METRIC]).numpy()
            rho = spearman(final[keep], actual[keep])
            ranking.append(RankRow(tau=tau, method=method, spearman=rho, runs=int(keep.sum())))
    return ForecastReport(window=window, forecast=rows, ranking=ranking)


def forecast_report(
    forecaster: Forecaster,
    fit: SweepTensors,
    test: SweepTensors,
    norm: Normalisation,
    taus: tuple[float, ...],
    window: int,
    complete: np.ndarray,
    direction: str = "max",
) -> ForecastReport:
    """Compare model and baselines on ``test`` runs (see the module docstring); ``direction``
    is the validation metric's (``"max"`` or ``"min"``), which the curve baseline needs."""
    g = test.grid_points
    by_tau = {
        tau: window_forecasts(forecaster, fit, test, round(tau * (g - 1)), window, direction)
        for tau in taus
    }
    return score_forecasts(by_tau, test, norm, window, complete)


def cross_fit_report(
    folds: Sequence[tuple[Forecaster, np.ndarray, np.ndarray]],
    data: SweepTensors,
    norm: Normalisation,
    taus: tuple[float, ...],
    window: int,
    complete: np.ndarray,
    direction: str = "max",
) -> ForecastReport:
    """Out-of-fold report: each run forecast by the fold that held it out.

    ``folds`` holds ``(forecaster, train_idx, holdout_idx)``; the nearest-run
    baseline searches the same fold's training runs, the curve baseline takes its
    plausible range from them. ``direction``: the validation metric's.
    """
    g = data.grid_points
    n = int(data.values.shape[0])
    by_tau: dict[float, Forecasts] = {}
    for tau in taus:
        end = round(tau * (g - 1))
        merged = {m: torch.zeros(n, g - end, N_CHANNELS) for m in METHODS}
        for forecaster, train_idx, hold_idx in folds:
            fit = _subset(data, train_idx)
            part = window_forecasts(forecaster, fit, _subset(data, hold_idx), end, window,
                                    direction)
            for m in METHODS:
                merged[m][torch.as_tensor(hold_idx)] = part[m]
        by_tau[tau] = merged
    return score_forecasts(by_tau, data, norm, window, complete)


def _subset(data: SweepTensors, idx: np.ndarray) -> SweepTensors:
    ix = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return SweepTensors(values=data.values[ix], mask=data.mask[ix])


def format_forecast(report: ForecastReport, *, val_scale: float = 1.0, val_unit: str = "") -> str:
    """A plain-text table: one line per (tau, channel), methods side by side."""
    taus = sorted({r.tau for r in report.forecast})
    head = (f"{'tau':>5} {'channel':<11} "
            + " ".join(f"{m + ' pooled':>14} {m + ' median':>14}" for m in METHODS))
    lines = [f"Forecast RMSE on held-out runs (context window {report.window} grid points; "
             "train_loss and log_lr in dex" + (f", val_metric in {val_unit}" if val_unit else "")
             + ")", head]
    for tau in taus:
        for ch in CHANNELS:
            cells = []
            for m in METHODS:
                try:
                    r = report.row(tau, ch, m)
                except KeyError:
                    cells.append(f"{'-':>14} {'-':>14}")
                    continue
                s = val_scale if ch == "val_metric" else 1.0
                cells.append(f"{r.rmse_pooled * s:>14.3f} {r.rmse_median_run * s:>14.3f}")
            lines.append(f"{tau:>5.2f} {ch:<11} " + " ".join(cells))
    lines.append("")
    lines.append("Rank correlation (Spearman) of predicted vs actual final validation metric")
    lines.append(f"{'tau':>5} " + " ".join(f"{m:>10}" for m in METHODS) + "   runs")
    for tau in taus:
        cells = []
        runs = 0
        for m in METHODS:
            try:
                rr = report.rank(tau, m)
            except KeyError:  # a bundle written before the method existed
                cells.append(f"{'-':>10}")
                continue
            runs = rr.runs
            cells.append(f"{rr.spearman:>10.3f}" if rr.spearman is not None else f"{'-':>10}")
        lines.append(f"{tau:>5.2f} " + " ".join(cells) + f"   {runs:>4}")
    return "\n".join(lines)

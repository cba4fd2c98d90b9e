"""``forecast.png``: each shown run forecast by a model that never trained on it, labelled
by its name, with a title that says which model that is.

With a cross-fitted ensemble every run is held out by exactly one member; the figure
forecasts each run with that member alone (what the fit report scores), never with the
full ensemble, whose other members trained on it. With a plain holdout split the
held-out runs are forecast by the whole ensemble, none of which saw them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tracker_sched.data.grid import CHANNELS
from tracker_sched.fit.plots import _pyplot
from tracker_sched.model.forecast import Forecaster

if TYPE_CHECKING:
    from tracker_sched.fit.generative import FitResult

CHANNEL_LABELS = {"train_loss": "train loss", "log_lr": "log10 lr", "val_metric": "validation"}


def shown_runs(fitted: FitResult, max_runs: int = 6) -> list[tuple[int, int | None]]:
    """(run index, fold that held it out or None) for up to ``max_runs`` runs.

    The runs are spread evenly over the held-out runs sorted by name, so that every
    family of a sweep named ``<family>-<lr>-s<seed>`` tends to appear.
    """
    prep = fitted.prepared
    if prep.cross_fit:
        fold_of = {int(i): k for k, (_, held) in enumerate(prep.folds) for i in held}
        candidates = sorted(fold_of)
    else:
        fold_of = {}
        candidates = [int(i) for i in prep.holdout_idx]
    if not candidates:
        return []
    candidates.sort(key=lambda i: _name(fitted, i))
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(max_runs, len(candidates)))
                      .round().astype(int))
    return [(candidates[p], fold_of.get(candidates[p])) for p in picks]


def _name(fitted: FitResult, i: int) -> str:
    run = fitted.prepared.runs[i].record
    return run.name or run.run_id


def figure_title(fitted: FitResult) -> str:
    """What the figure shows, said plainly: which model forecasts each run."""
    members = len(fitted.bundle.models)
    if fitted.prepared.cross_fit:
        return (f"Out-of-fold forecasts: each run is forecast by the one member of {members} "
                "that never trained on it (its fold)")
    return (f"Held-out runs forecast by the ensemble ({members} member(s), none trained on "
            "these runs)")


def plot_fit_forecasts(path: str | Path, fitted: FitResult, taus: tuple[float, ...],
                       window: int, *, max_runs: int = 6) -> Path | None:
    """Write the figure; returns its path, or None when the fit held no run out.

    Args:
        path: the PNG to write.
        fitted: the fit (its bundle's members and the prepared sweep's folds).
        taus: the context ends to forecast from (the report's ``report_taus``).
        window: the context window, in grid points.
        max_runs: rows of the figure.

    Returns:
        The path written, or None.

    Raises:
        MissingDependencyError: matplotlib is not installed (the ``plots`` extra).
    """
    rows = shown_runs(fitted, max_runs)
    if not rows:
        return None
    prep, models = fitted.prepared, fitted.bundle.models
    plt = _pyplot()
    mean, std = np.asarray(prep.norm.mean), np.asarray(prep.norm.std)
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 2.2 * len(rows) + 1.0), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, name in enumerate(CHANNELS):
        axes[0, c].set_title(CHANNEL_LABELS.get(name, name))
    for r, (i, fold) in enumerate(rows):
        data = prep.tensors(np.asarray([i]))
        g = data.grid_points
        tau_grid = np.linspace(0, 1, g)
        forecaster = Forecaster([models[fold]]) if fold is not None else Forecaster(models)
        actual = data.values[0].numpy() * std + mean
        mask = data.mask[0].numpy()
        for c in range(3):
            axes[r, c].plot(tau_grid[mask[:, c]], actual[mask[:, c], c], color="black", lw=1,
                            label="run")
        for j, tau in enumerate(taus):
            end = round(tau * (g - 1))
            pred = forecaster.forecast(data, torch.tensor([0]), torch.tensor([end]),
                                       torch.tensor([window]))[0].numpy() * std + mean
            for c in range(3):
                axes[r, c].plot(tau_grid[end:], pred[:, c], color=colours[j % len(colours)],
                                lw=1.2, ls="--", label=f"forecast from tau={tau:g}")
                axes[r, c].axvline(tau, color=colours[j % len(colours)], lw=0.5, alpha=0.5)
        label = _name(fitted, i) + (f"\n(fold {fold + 1})" if fold is not None else "")
        axes[r, 0].set_ylabel(label, fontsize=7)
    axes[0, 2].legend(fontsize=6, loc="lower right")
    for ax in axes[-1]:
        ax.set_xlabel("tau = step / total_steps")
    fig.suptitle(figure_title(fitted), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
